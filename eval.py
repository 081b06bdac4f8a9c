"""
Evaluate trained runs: exact perplexity over a held-out split, planner accuracy, comparison tables.

    python eval.py out/soft-joint                       # val perplexity and planner accuracy
    python eval.py out/*/ --split test                  # several runs: a markdown table
    python eval.py out/none out/soft-joint --json       # the numbers as JSON

Perplexity counts every target token of the split exactly once (the split is one stream, every
document opening with <|endoftext|>). Windows of block_size tokens advance by half a block; each
window scores only the targets no earlier window scored, so every target but those of the first
window sees at least half a block of context. Plans are computed as in training: sentence s of a
document is planned from that document's sentences < s (evaluation mode: gumbel becomes soft).
It runs in float32, so the figure does not depend on autocast.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import data
from mix import Plans
from model import GPT, GPTConfig
from planner import Planner, PlannerConfig
from train import PlannedLM, SplitData, TrainError, identity, planner_metrics, resolve_device


class EvalError(Exception):
    """A run that cannot be evaluated: shown as one line with the fix."""


def load_run(run, device="cpu"):
    """-> (the trained PlannedLM in eval mode, the checkpoint, the corpus it was trained on)."""
    path = Path(run) / "ckpt.pt" if Path(run).is_dir() else Path(run)
    if not path.exists():
        raise EvalError(f"no checkpoint at {path}: give a run folder made by train.py (e.g. out/soft-joint)")
    ck = torch.load(path, map_location=device, weights_only=False)
    if ck.get("stage") != "finetune":
        raise EvalError(f"{path} is a pretraining checkpoint ({ck.get('stage')}): evaluate a fine-tuned run")
    c = ck["config"]
    corpus = data.load(c["dataset"], c["n_labels"], c["embed_dim"], c["seed"], c["synthetic_docs"],
                       c["synthetic_types"], c["data_dir"], quiet=True)
    for what, want in ck["identity"].items():
        if identity(corpus)[what] != want:
            raise EvalError(f"{path} was trained with other {what} than --dataset {c['dataset']} gives now "
                            f"({want} vs {identity(corpus)[what]}): restore that data or retrain")
    lm = GPT(GPTConfig(**ck["model_args"]))
    lm.load_state_dict(ck["model"])
    planner = None
    if "planner" in ck:
        planner = Planner(PlannerConfig(**ck["planner_args"]))
        planner.load_state_dict(ck["planner"])
    plans = Plans(ck["mode"], corpus.codebook, c["temperature"])
    plans.load_state_dict(ck["plans"])
    return PlannedLM(lm, planner, plans).to(device).eval(), ck, corpus


def windows(n_targets, block_size):
    """-> [(start, first target scored)]: every target 1..n_targets scored by exactly one window."""
    block = min(block_size, n_targets)
    stride = max(1, block // 2)
    starts = list(range(0, n_targets - block + 1, stride))
    if starts[-1] + block < n_targets:
        starts.append(n_targets - block)
    out, scored = [], 0  # targets 1..scored are done
    for s in starts:
        out.append((s, scored + 1))
        scored = s + block
    return out, block


@torch.no_grad()
def perplexity(net, sd, block_size, batch_size=16):
    """-> (target tokens, mean NLL in nats) over the whole split."""
    n = len(sd.tokens) - 1
    wins, block = windows(n, block_size)
    total, count = 0.0, 0
    for i in range(0, len(wins), batch_size):
        chunk = wins[i:i + batch_size]
        b = sd.lm_batch(torch.tensor([s for s, _ in chunk], device=sd.device), block)
        target_index = torch.tensor([s for s, _ in chunk], device=sd.device)[:, None] + 1 + torch.arange(block, device=sd.device)
        fresh = target_index >= torch.tensor([f for _, f in chunk], device=sd.device)[:, None]
        b["targets"] = b["targets"].masked_fill(~fresh, -1)
        loss, _ = net(**b)
        total += loss.item() * fresh.sum().item()
        count += fresh.sum().item()
    assert count == n, (count, n)
    return count, total / count


def evaluate(run, split="val", device="cpu"):
    net, ck, corpus = load_run(run, device)
    sd = SplitData(corpus.splits[split], device)
    tokens, nll = perplexity(net, sd, net.lm.config.block_size)
    acc = planner_metrics(net.planner, sd) if net.planner is not None else {}
    return {"run": str(run), "mode": ck["mode"], "planner": ck["config"]["planner"], "split": split,
            "tokens": tokens, "nll": nll, "perplexity": math.exp(nll), "step": ck["step"],
            "planner_top1": acc.get("planner_top1"), "planner_top5": acc.get("planner_top5")}


def table(results):
    """Markdown comparison, one row per (mode, planner); runs of several seeds give mean ± std.

    'vs none' is relative to the row of mode none, if there is one.
    """
    groups = {}
    for r in results:
        groups.setdefault((r["mode"], r["planner"]), []).append(r)
    stat = lambda rs, k: (np.mean([r[k] for r in rs]), np.std([r[k] for r in rs], ddof=1) if len(rs) > 1 else None)
    show = lambda m, s, fmt: "" if m is None or np.isnan(m) else f"{m:{fmt}}" + ("" if s is None else f" ± {s:{fmt}}")
    base = stat(groups[("none", None)], "perplexity")[0] if ("none", None) in groups else None
    rows = ["| run | mode | planner | perplexity | vs none | planner top-1 | planner top-5 |", "|---" * 7 + "|"]
    for (mode, planner), rs in groups.items():
        ppl = stat(rs, "perplexity")
        acc = [stat(rs, k) if rs[0][k] is not None else (None, None) for k in ("planner_top1", "planner_top5")]
        name = run_name(rs[0]["run"]) + (f" (×{len(rs)})" if len(rs) > 1 else "")
        rows.append(f"| {name} | {mode} | {planner or ''} | {show(*ppl, '.2f')} | "
                    f"{'' if base is None else f'{ppl[0] / base - 1:+.1%}'} | {show(*acc[0], '.3f')} | {show(*acc[1], '.3f')} |")
    return "\n".join(rows)


def run_name(run):
    p = Path(run)
    return p.parent.name if p.suffix == ".pt" else p.name


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or their ckpt.pt) made by train.py")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--json", action="store_true", help="print JSON (an object, or a list for several runs)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    args = p.parse_args(argv)
    try:
        results = [evaluate(r, args.split, resolve_device(args.device)) for r in args.runs]
    except (EvalError, TrainError, data.DataError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    else:
        print(f"{args.split} split, {results[0]['tokens']:,} target tokens")
        print(table(results))


if __name__ == "__main__":
    main()

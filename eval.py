"""
Evaluate trained runs: exact perplexity over a held-out split, planner accuracy, comparison tables.
(Writing text with a run, each sentence planned as it starts: sample.py.)

    python eval.py out/soft-joint                       # val perplexity and planner accuracy
    python eval.py out/none out/hard-frozen out/soft-joint --split test   # a markdown table
    python eval.py out/none out/soft-joint --json       # the numbers as JSON
    python eval.py out/soft-joint --window 16           # scored in 16-token windows: less of each
                                                        # document seen

Perplexity counts every target token of the split exactly once (the split is one stream, every
document opening with <|endoftext|>). Windows of block_size tokens advance by half a block; each
window scores only the targets no earlier window scored, so every target but those of the first
window sees at least half a block of context. Plans are computed as in training: sentence s of a
document is planned from that document's sentences < s (evaluation mode: gumbel becomes soft).
It runs in float32, so the figure does not depend on autocast; the head is computed for the
scored targets only (fastloss.py). A run is judged by its best.pt (lowest validation loss).
"""

import argparse
import json
import math
from pathlib import Path

import torch

import corpora
import data
import runtime
from data import SplitData
from mix import PlannedLM, Plans
from model import GPT, GPTConfig
from planner import (BigramConfig, BigramPlanner, Planner, PlannerConfig,
                     planner_metrics)


class EvalError(Exception):
    """A run that cannot be evaluated: shown as one line with the fix."""


def load_run(run, device="cpu"):
    """-> (the trained PlannedLM in eval mode, the checkpoint, the corpus it was trained on)."""
    path, ck = runtime.run_checkpoint(run, device)
    with runtime.readable(path):  # a config edited by hand: as train.py checks its flags
        c = ck["config"]
        runtime.check_ranges(argparse.Namespace(**c), runtime.FLAG_RANGES, paths=False)
        if not isinstance(c["dataset"], str):
            raise TypeError(f"dataset {c['dataset']!r} is not a corpus name or path")
    if c["dataset"] not in corpora.DATASETS and not Path(c["dataset"]).exists():
        raise EvalError(f"{run} was trained on --dataset {c['dataset']}, which is not there"
                        + (" (a path from the folder train.py ran in)"
                           if not Path(c["dataset"]).is_absolute() else "")
                        + ": run this from that folder, or put the corpus back")
    corpus = data.load(c["dataset"], c["n_labels"], c["embed_dim"], c["seed"],
                       c["synthetic_docs"], c["synthetic_types"], c["data_dir"], quiet=True,
                       synthetic_ambiguity=c.get("synthetic_ambiguity", 0.0))
    if c.get("init_from"):  # GPT-2 reads GPT-2 ids, not a closed vocabulary's rows
        corpus.vocab = None
    if c.get("embedder") == "lm":  # labels made by the run's pretrained LM, kept in the cache
        with runtime.readable(path):
            corpus = data.lm_labelled_from_cache(corpus, ck["identity"]["labels"], c["data_dir"])
    runtime.refuse_other_data(ck, c["dataset"], corpus, path, "retrain")
    with runtime.readable(path):
        lm = GPT(GPTConfig(**ck["model_args"]))
        lm.load_state_dict(ck["model"])
        planner = None
        if "planner" in ck:
            kind = ck["planner_args"].get("kind")
            planner = (BigramPlanner(BigramConfig(**ck["planner_args"])) if kind == "bigram"
                       else Planner(PlannerConfig(**ck["planner_args"])))
            planner.load_state_dict(ck["planner"])
        plans = Plans(ck["mode"], corpus.codebook, c["temperature"], c.get("truth_weight", 0.0))
        plans.load_state_dict(ck["plans"])
    return PlannedLM(lm, planner, plans).to(device).eval(), ck, corpus


def windows(n_targets, block_size):
    """-> ([(start, first target scored)], block): every target 1..n_targets scored by exactly one
    window of block tokens."""
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
def perplexity(net, sd, block_size, batch_size=32, plan_table=None):
    """-> (target tokens, mean NLL in nats) over the whole split.

    plan_table [sentences of the split, D], if given, replaces the plans the run would compute: the
    targets of sentence s are predicted with row s (see explore.substituted_plans)."""
    n = len(sd.tokens) - 1
    wins, block = windows(n, block_size)
    total, count = 0.0, 0
    for i in range(0, len(wins), batch_size):
        starts, firsts = torch.tensor(wins[i:i + batch_size]).T
        b = sd.lm_batch(starts, block)
        positions = (starts[:, None] + 1 + torch.arange(block)).to(sd.device)  # of the targets
        fresh = positions >= firsts.to(sd.device)[:, None]  # not scored before
        b["targets"] = b["targets"].masked_fill(~fresh, -1)
        if plan_table is None:
            loss, _ = net(**b)
        else:  # row 0: no plan, for the <|endoftext|> targets
            plan = torch.cat([plan_table.new_zeros(1, plan_table.shape[1]),
                              plan_table])[sd.tok_sent[positions] + 1]
            _, loss = net.lm(b["idx"], b["targets"], plan)
        total += loss.item() * fresh.sum().item()
        count += fresh.sum().item()
    assert count == n, (count, n)
    return count, total / count


def evaluate(run, split="val", device="auto", window=None, replace_plans=None):
    """-> the run's perplexity on the split and its planner's accuracy, as a dict. window: score
    with windows of this many tokens instead of the run's own block size: the same LM shown less
    of each document. replace_plans(net, sd) -> [sentences, D]: plans to score with instead of the
    run's own (explore.py's shuffled and mean plans)."""
    device = runtime.resolve_device(device)
    net, ck, corpus = load_run(run, device)
    block = net.lm.config.block_size
    if window is not None and window > block:
        raise EvalError(f"--window {window}: {run} was trained on windows of {block} tokens (its "
                        f"positions end there): give at most {block}")
    sd = SplitData(corpus, split, device)
    with runtime.exact_float32():  # not TF32, should a training in this process allow it
        table = replace_plans(net, sd).to(net.lm.wte.weight.dtype) if replace_plans else None
        tokens, nll = perplexity(net, sd, window or block, plan_table=table)
        acc = planner_metrics(net.planner, sd) if net.planner is not None else {}
    if not math.isfinite(nll):
        raise EvalError(f"{run}: the {split} NLL is {nll}, the run diverged: retrain it with a "
                        "lower learning rate")
    return {"run": str(run), "mode": ck["mode"], "planner": ck["config"]["planner"], "split": split,
            "tokens": tokens, "nll": nll, "perplexity": math.exp(nll), "step": ck["step"],
            "seed": ck["config"]["seed"], "text": ck["identity"].get("tokens"),
            "planner_top1": acc.get("planner_top1"),
            "planner_top5": acc.get("planner_top5"), "window": window or block}


def table(results):
    """Markdown, a row per run: its perplexity, the change against the run of mode none and of mode
    fixed on the same text (corpus and seed; the first such run given), where fixed is one learned
    plan vector for every sentence, the same parameters as any planned mode without the
    information; its planner's accuracy. Over several seeds, compare.py sums up."""
    # by the seed alone where a run's checkpoint predates the identity of its text
    by_text = all(r.get("text") for r in results)
    text = lambda r: r["text"] if by_text else r["seed"]
    refs = [m for m in ("none", "fixed") if any(r["mode"] == m for r in results)]
    base = {m: {} for m in refs}
    for r in results:
        if r["mode"] in base:
            base[r["mode"]].setdefault(text(r), r["perplexity"])
    names = [run_name(r["run"]) for r in results]
    if len(set(zip(names, (r["seed"] for r in results)))) < len(names):  # their paths, then
        names = [str(r["run"]) for r in results]
    tokens = len({r.get("tokens") for r in results}) > 1  # a column only where they differ
    rows = ["| run | mode | planner | seed | " + "tokens | " * tokens + "perplexity | "
            + "".join(f"vs {m} | " for m in refs) + "planner top-1 | planner top-5 |",
            "|---" * (7 + tokens + len(refs)) + "|"]
    for name, r in zip(names, results):
        cells = ([name, r["mode"], r["planner"] or "", r["seed"]]
                 + ([f"{r['tokens']:,}"] if tokens else []) + [f"{r['perplexity']:.2f}"])
        cells += [f"{r['perplexity'] / base[m][text(r)] - 1:+.1%}" if text(r) in base[m]
                  else "" for m in refs]
        cells += ["" if r[k] is None else f"{r[k]:.3f}" for k in ("planner_top1", "planner_top5")]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(rows)


def run_name(run):
    p = Path(run)
    return p.parent.name if p.suffix == ".pt" else p.name


# eval.py's numeric flag and its range, as runtime.FLAG_RANGES.
FLAG_RANGES = [(("window",), lambda v: v >= 1, "at least 1 token")]


def make_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders made by train.py (each scored by its best.pt), or a .pt "
                        "file of one to score that file")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--json", action="store_true",
                   help="print JSON (an object, or a list for several runs)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="as train.py: a GPU if there is one")
    p.add_argument("--window", type=int, metavar="TOKENS",
                   help="score with windows of TOKENS (at most the run's block size): the same LM "
                        "shown less of each document")
    return p


def main(argv=None):
    args = make_parser().parse_args(argv)
    with runtime.one_line_errors(EvalError, data.DataError):
        runtime.check_ranges(args, FLAG_RANGES)
        results = [evaluate(r, args.split, args.device, args.window) for r in args.runs]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    else:
        counts = {r["tokens"] for r in results}  # one corpus and seed, or several
        print(f"{args.split} split" + (f", {counts.pop():,} target tokens" if len(counts) == 1
                                       else "") +
              (f", scored in windows of {args.window} tokens" if args.window else ""))
        print(table(results))


if __name__ == "__main__":
    main()

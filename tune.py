"""
The defaults, chosen by measurement: train.py's default run (soft, planner joint, on wiki) at the
same compute with other LM windows, learning rates and splits of the steps between LM pretraining
and fine-tuning, judged by exact val perplexity (never test).

    python tune.py  # the search on seed 0, then the best two settings on seeds 1 and 2
    python tune.py --dataset synthetic <train.py flags>   # the same search in another setting

The search takes one decision at a time, each from the best setting so far (a full grid of 3 x 3 x 3
would be 27 runs):
  1. the window, with the batch that keeps the tokens per step of the defaults (64 x 32 = 2,048);
  2. the peak learning rate of pretraining (fine-tuning peaks at half of it, as in the defaults);
  3. how the LM's steps (550 with the defaults) are shared between pretraining and fine-tuning.
Every run is train.py's, in out/tune/<setting>/seed<N>/; finished runs and their evaluations are
skipped, so the search can be stopped and continued (a finished run made with other flags, or on
other text than the corpus gives now when a setting trains beside it, is refused). The table so far
goes to out/tune/results.md after every run.
"""

import argparse
import json
import time
from pathlib import Path

import compare
import data
import eval as evaluation
import runtime
import train

WINDOWS = (32, 64, 128)
LRS = (1e-3, 2e-3, 4e-3)
# of the LM's steps spent pretraining; the defaults spend 400 of 550
LM_SHARES = (0.5, 400 / 550, 0.85)
CONFIRM_SEEDS = (1, 2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default="wiki")
    p.add_argument("--out-dir", default="out/tune")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    args, train_flags = p.parse_known_args(argv)
    compare.text_identity.cache_clear()  # a corpus file may have changed since the last call
    with runtime.one_line_errors(evaluation.EvalError, data.DataError,
                                 interrupted="interrupted; what is finished is kept: run the same "
                                             "tune.py command to go on"):
        search(args, train_flags)


def search(args, train_flags):
    given = train.make_parser().parse_known_args(train_flags)[0]
    pick = lambda key: (getattr(given, key) if getattr(given, key) is not None
                        else train.CPU_DEFAULTS[key])
    tokens, steps = (pick("batch_size") * pick("block_size"),
                     pick("lm_iters") + pick("finetune_iters"))
    best = dict(block=pick("block_size"), lr=given.lr, lm_iters=pick("lm_iters"))
    if not any(tokens % b == 0 for b in WINDOWS):
        raise runtime.TrainError(f"{tokens} tokens a step (--batch-size x --block-size) divide by "
                                 f"none of the windows searched ({', '.join(map(str, WINDOWS))}): "
                                 "give a batch of a multiple of 32 tokens")
    if min(round(share * steps) for share in LM_SHARES) < 1 or steps - round(
            max(LM_SHARES) * steps) < 1:
        raise runtime.TrainError(f"{steps} LM steps (--lm-iters + --finetune-iters) leave a stage "
                                 "of the search with none: give more")
    runtime.check_paths(args)
    # rows: (decision, setting, seed) in the order met; results: by (name, seed); met: see run
    rows, results, met = [], {}, []

    def measure(decision, candidates, seed=0):
        for setting in candidates:
            if (name(setting), seed) not in results:
                results[name(setting), seed] = run(args, train_flags, setting, tokens, steps, seed,
                                                   met)
            rows.append((decision, setting, seed))
            # a search stopped here leaves its table so far
            write(table(rows, results, [], tokens, steps))
        return min(candidates, key=lambda s: results[name(s), seed]["perplexity"])

    def write(md):
        with runtime.atomic_write(Path(args.out_dir) / "results.md") as tmp:
            Path(tmp).write_text(md + "\n")

    best = measure("1. window", [{**best, "block": b} for b in WINDOWS if tokens % b == 0])
    best = measure("2. learning rate", [{**best, "lr": lr} for lr in LRS])
    best = measure("3. pretraining share",
                   [{**best, "lm_iters": round(share * steps)} for share in LM_SHARES])
    settings = {name(s): s for _, s, _ in rows}
    finalists = sorted(settings, key=lambda n: results[n, 0]["perplexity"])[:2]
    for seed in CONFIRM_SEEDS:
        measure("confirm", [settings[n] for n in finalists], seed)
    md = table(rows, results, finalists, tokens, steps)
    print("\n" + md)
    write(md)


def name(setting):
    return f"block{setting['block']}-lr{setting['lr']:g}-lm{setting['lm_iters']}"


def run(args, train_flags, setting, tokens, steps, seed, met):
    """Train one setting (unless done) and evaluate it on val: -> {"perplexity", "seconds"} (of
    training). met: the settings met so far, (run, argv) when finished, None when trained."""
    run_dir = Path(args.out_dir) / name(setting) / f"seed{seed}"
    timing = run_dir / "seconds.json"
    argv = train_flags + [
        "--dataset", args.dataset, "--device", args.device, "--seed", str(seed),
        "--out-dir", str(run_dir), "--block-size", str(setting["block"]),
        "--batch-size", str(tokens // setting["block"]), "--lr", str(setting["lr"]),
        "--finetune-lr", str(setting["lr"] / 2), "--lm-iters", str(setting["lm_iters"]),
        "--finetune-iters", str(steps - setting["lm_iters"])]
    finished = compare.done(run_dir / "soft-joint", argv)  # one made with other flags is refused
    met.append((run_dir / "soft-joint", argv) if finished else None)
    if None in met:  # finished settings beside one trained now: they read the text it will read
        for run_and_argv in filter(None, met):
            compare.refuse_other_text(*run_and_argv)
        met[:] = [None]
    if not finished:
        start = time.perf_counter()
        resume = ["--resume"] if (run_dir / "soft-joint" / "ckpt.pt").exists() else []
        compare.training(argv + resume, "tune.py")
        with runtime.atomic_write(timing) as tmp:
            Path(tmp).write_text(json.dumps(time.perf_counter() - start))
    result = compare.cached(run_dir / "soft-joint", "eval-val.json",
                            lambda: evaluation.evaluate(run_dir / "soft-joint", "val", args.device))
    return {"perplexity": result["perplexity"],
            "seconds": json.loads(timing.read_text()) if timing.exists() else None}


def table(rows, results, finalists, tokens, steps):
    lines = [f"Val perplexity of train.py's default run (soft, planner joint) at {tokens:,} tokens "
             f"a step and {steps} LM steps in all; one decision at a time, each from the best "
             "setting before it.", "",
             "| decision | window x batch | peak lr (fine-tune: half) | pretrain / fine-tune steps "
             "| seed | val perplexity | training time |",
             "|---|---|---|---|---|---|---|"]
    for decision, s, seed in rows:
        r = results[name(s), seed]
        seconds = f"{r['seconds'] / 60:.1f} min" if r["seconds"] else "(not timed)"
        lines.append(f"| {decision} | {s['block']} x {tokens // s['block']} | {s['lr']:g} | "
                     f"{s['lm_iters']} / {steps - s['lm_iters']} | {seed} | "
                     f"{r['perplexity']:.2f} | {seconds} |")
    lines.append("")
    seeds = sorted({seed for _, seed in results})
    for rank, finalist in zip(("best", "runner-up"), finalists):
        ppl = [results[finalist, seed]["perplexity"] for seed in seeds
               if (finalist, seed) in results]
        lines.append(f"- {rank} on seed 0: {finalist}; over seeds {', '.join(map(str, seeds))}: "
                     f"{compare.mean_std(ppl, '.2f')} (mean ± std)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

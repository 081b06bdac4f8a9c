"""
The paper's comparison at small scale: every estimator and control, over several seeds, as one table.

    python compare.py --dataset synthetic <flags>   # the README's synthetic table (flags there)
    python compare.py --dataset wiki <flags>        # the README's wiki table

Each seed pretrains its LM and planner once (train.py caches them under <out-dir>/pretrain) and
fine-tunes every mode from those same weights on the same batches. Flags this script does not know
go to train.py unchanged. Finished runs are skipped, so an interrupted comparison picks up where
it stopped. The tables (val and test) are printed and written to <out-dir>/results.md and .json.
"""

import argparse
import json
from pathlib import Path

import torch

import eval as evaluation
import train

RUNS = [("none", None), ("fixed", None), ("uniform", None), ("oracle", None), ("hard", "frozen"),
        ("st", "joint"), ("soft", "frozen"), ("soft", "joint"), ("gumbel", "joint")]


def done(run_dir):
    ck = run_dir / "ckpt.pt"
    return ck.exists() and torch.load(ck, map_location="cpu", weights_only=False)["done"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="wiki")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated")
    p.add_argument("--out-dir", help="default: out/compare-<dataset>")
    args, train_flags = p.parse_known_args(argv)
    out = Path(args.out_dir or f"out/compare-{args.dataset}")
    runs = []
    for seed in map(int, args.seeds.split(",")):
        for mode, planner in RUNS:
            name = mode + (f"-{planner}" if planner else "")
            run_dir = out / f"seed{seed}"
            if not done(run_dir / name):
                train.main(train_flags + ["--dataset", args.dataset, "--seed", str(seed), "--out-dir", str(run_dir),
                                          "--mode", mode] + (["--planner", planner] if planner else []))
            runs.append(run_dir / name)
    report = {}
    for split in ("val", "test"):
        report[split] = [evaluation.evaluate(r, split) for r in runs]
        print(f"\n{args.dataset}, {split} split ({report[split][0]['tokens']:,} target tokens):\n")
        print(evaluation.table(report[split]))
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "results.md").write_text("\n\n".join(f"{args.dataset}, {s} split\n\n{evaluation.table(r)}" for s, r in report.items()) + "\n")


if __name__ == "__main__":
    main()

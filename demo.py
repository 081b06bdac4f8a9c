"""
A first result in minutes: the paper's claims where they hold, on the ambiguity testbed.

The testbed is the synthetic corpus with --synthetic-ambiguity 0.5: every sentence type has two
likely successors, so even a perfect planner's single best guess is wrong half the time. Per
seed, one LM and one planner are pretrained, and five runs are fine-tuned from them on the same
batches: none (no plan), fixed (one learned vector: parameters, no information), hard (the
planner's argmax, planner frozen), soft (its whole distribution, planner joint) and oracle (the
true label of the sentence: an upper bound). Then the table, and what it means.

    python demo.py                        # 3 seeds: measured in RESULTS.md (A first result)
    python demo.py --seeds 0,1,2,3,4      # narrower intervals

It is compare.py with a fixed setting (RESULTS.md's synthetic sweep at a = 0.5, fewer runs);
finished runs are kept in --out-dir and skipped when it runs again.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import compare
import train

SETTING = ["--dataset", "synthetic", "--synthetic-ambiguity", "0.5", "--synthetic-docs", "4000",
           "--n-labels", "16", "--embed-dim", "32", "--n-layer", "2", "--n-embd", "64",
           "--n-head", "2", "--block-size", "64", "--batch-size", "16", "--lm-iters", "400",
           "--planner-iters", "400", "--finetune-iters", "300", "--eval-interval", "100",
           "--eval-iters", "8", "--lr", "3e-3", "--planner-lr", "3e-3", "--finetune-lr", "3e-3",
           "--warmup-iters", "20", "--runs", "none,fixed,hard-frozen,soft-joint,oracle",
           "--sample-docs", "0"]
# compare.py's flags that would make another comparison (train.py's --dataset and
# --synthetic-ambiguity too; sizes and schedules may be given, e.g. to try it faster)
SETTING_FLAGS = ("--runs", "--ambiguities", "--block-sizes", "--label-counts", "--eval-windows",
                 "--truth-weights", "--holds")
# What each finding means, in the words of the method: (A, B, the claim, why it can hold here).
READINGS = [
    ("soft-joint", "hard-frozen", "soft beats hard",
     "the LM sees both likely successors, not the one guess that is wrong half the time"),
    ("soft-joint", "fixed", "plans beat one learned constant vector",
     "the gain is what the plans say, not the parameters the adapters add"),
    ("oracle", "soft-joint", "the oracle bounds them",
     "the true label of the sentence being written is more than any planner can know"),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,  # --seed is train.py's, not --seeds
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated")
    p.add_argument("--out-dir", default="out/demo")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    args, train_flags = p.parse_known_args(argv)
    given = train.make_parser().parse_known_args(  # in any spelling train.py reads
        train_flags, argparse.Namespace(dataset=None, synthetic_ambiguity=None))[0]
    if setting := ([f for f in train_flags if f.split("=")[0] in SETTING_FLAGS]
                   + [f"--{k.replace('_', '-')}" for k in ("dataset", "synthetic_ambiguity")
                      if getattr(given, k) is not None]):
        sys.exit(f"error: {setting[0]}: demo.py is one fixed comparison, the ambiguity testbed "
                 "(other runs, corpora or sweeps: compare.py)")
    t0 = time.time()
    compare.main(SETTING + train_flags + ["--seeds", args.seeds, "--out-dir", args.out_dir,
                                          "--device", args.device], script="demo.py")
    results = json.loads((Path(args.out_dir) / "results.json").read_text())["val"]
    print(f"\nWhat it means (val perplexity of A against B of the same seed, 95% interval over "
          f"{len(args.seeds.split(','))} seeds; {time.time() - t0:.0f} s):")
    for a, b, claim, why in READINGS:
        changes = compare.paired_changes(results, a, b)
        verdict = compare.verdict(changes, "beats")
        print(f"- {claim}: {a} vs {b} {compare.claim_cell(changes, 'beats')}"
              + (f": {why}" if verdict == "holds" else ""))
    return results


if __name__ == "__main__":
    main()

"""
The paper's comparison at small scale: every estimator and control, over several seeds, as one table.

    python compare.py --dataset synthetic <flags>   # the README's synthetic table (flags there)
    python compare.py --dataset wiki <flags>        # the README's wiki table

Each seed pretrains its LM and planner once (train.py caches them under <out-dir>/pretrain) and
fine-tunes every mode from those same weights on the same batches. Flags this script does not know
go to train.py unchanged. Finished runs, their evaluations and their samples (cached next to each
checkpoint) are skipped, so an interrupted comparison picks up where it stopped. The tables are
printed and written to <out-dir>/results.md and .json.

Then every run of the first seed that takes labels writes --sample-docs new documents of 8
sentences, once with the planner's labels and once with random ones: how often does the LM write
a sentence of the label it was given? Last, the figures of eval.py --figures are written next to
the tables (if matplotlib is installed).
"""

import argparse
import json
import sys
from pathlib import Path

import data
import eval as evaluation
import train

RUNS = [("none", None), ("fixed", None), ("uniform", None), ("oracle", None), ("hard", "frozen"),
        ("st", "joint"), ("soft", "frozen"), ("soft", "joint"), ("gumbel", "joint")]
# The paper's findings, each as two runs to set against each other seed by seed.
CLAIMS = [("soft (joint) beats hard", "soft-joint", "hard-frozen"),
          ("ST is not better than hard", "st-joint", "hard-frozen"),
          ("plans beat one learned constant vector", "soft-joint", "fixed"),
          ("plans beat the mean label", "soft-joint", "uniform"),
          ("joint training beats a frozen planner", "soft-joint", "soft-frozen"),
          ("how far soft is from the oracle", "soft-joint", "oracle")]


def done(run_dir):
    ck = run_dir / "ckpt.pt"
    return ck.exists() and train.load_checkpoint(ck)["done"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="wiki")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated")
    p.add_argument("--out-dir", help="default: out/compare-<dataset>")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="for training and evaluation")
    p.add_argument("--sample-docs", type=int, default=25, help="documents sampled per run to measure plan following; 0: none")
    args, train_flags = p.parse_known_args(argv)
    try:
        compare(args, train_flags)
    except (train.TrainError, evaluation.EvalError, data.DataError) as e:
        sys.exit(f"error: {e}")


def compare(args, train_flags):
    out = Path(args.out_dir or f"out/compare-{args.dataset}")
    runs = []
    for seed in map(int, args.seeds.split(",")):
        for mode, planner in RUNS:
            name = mode + (f"-{planner}" if planner else "")
            run_dir = out / f"seed{seed}"
            if not done(run_dir / name):
                train.main(train_flags + ["--dataset", args.dataset, "--seed", str(seed), "--out-dir", str(run_dir), "--device", args.device,
                                          "--mode", mode] + (["--planner", planner] if planner else []))
            runs.append(run_dir / name)
    report, tables = {}, []
    for split in ("val", "test"):
        report[split] = [cached(r, f"eval-{split}.json", lambda: evaluation.evaluate(r, split, args.device)) for r in runs]
        tokens = ", ".join(f"{n:,}" for n in {r["seed"]: r["tokens"] for r in report[split]}.values())
        tables.append(f"{args.dataset}, {split} split (target tokens per seed: {tokens})\n\n{evaluation.table(report[split])}"
                      f"\n\n{evaluation.baselines_line(report[split])}")
        print("\n" + tables[-1])
    tables.append(f"{args.dataset}, the findings: perplexity of A against B of the same seed\n\n{claims_table(report)}")
    print("\n" + tables[-1])
    report["reliance"] = [{"run": str(r), how: cached(r, f"eval-val-{how}.json",
                                                      lambda: evaluation.evaluate(r, "val", args.device, how))["perplexity"]}
                          for r in runs if r.name != "none" for how in ("shuffled", "mean")]
    tables.append(f"{args.dataset}, plan reliance: val perplexity with every plan replaced, against the run's own plans "
                  f"(same seed)\n\n{reliance_table(report)}")
    print("\n" + tables[-1])
    if args.sample_docs:
        report["following"] = [cached(r, f"following-{args.sample_docs}.json", lambda: following(r, args.sample_docs))
                               for r, (mode, _) in zip(runs, RUNS) if mode not in ("none", "fixed", "uniform")]
        tables.append(f"{args.dataset}, sampled sentences whose label is the one planned (seed {args.seeds.split(',')[0]})"
                      f"\n\n{following_table(report['following'])}")
        print("\n" + tables[-1])
    with data.atomic_write(out / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1))
    with data.atomic_write(out / "results.md") as tmp:
        Path(tmp).write_text("\n\n".join(tables) + "\n")
    try:
        print(*evaluation.figures(out, out), sep="\n")
    except evaluation.EvalError as e:
        print(f"no figures: {e}")


def cached(run_dir, name, compute):
    """compute(), kept as JSON in the run's folder until the run's checkpoint changes."""
    cache = run_dir / name
    if cache.exists() and cache.stat().st_mtime > evaluation.checkpoint_path(run_dir).stat().st_mtime:
        return json.loads(cache.read_text())
    result = compute()
    with data.atomic_write(cache) as tmp:
        Path(tmp).write_text(json.dumps(result))
    return result


def claims_table(report):
    rows = ["| finding | A vs B | val, per seed | val | test |", "|---|---|---|---|---|"]
    for claim, a, b in CLAIMS:
        change = {}
        for split in ("val", "test"):
            ppl = {(evaluation.run_name(r["run"]), r["seed"]): r["perplexity"] for r in report[split]}
            change[split] = [ppl[a, seed] / ppl[b, seed] - 1 for name, seed in ppl if name == a and (b, seed) in ppl]
        rows.append(f"| {claim} | {a} vs {b} | {' '.join(f'{c:+.2%}' for c in change['val'])} | "
                    f"{evaluation.summary(change['val'], '+.2%')} | {evaluation.summary(change['test'], '+.2%')} |")
    return "\n".join(rows)


def reliance_table(report):
    """How much perplexity rises when the LM gets other plans than its own: what it draws from their content."""
    own = {r["run"]: r["perplexity"] for r in report["val"]}
    rises = {}
    for row in report["reliance"]:
        (how, ppl), = ((k, v) for k, v in row.items() if k != "run")
        rises.setdefault(evaluation.run_name(row["run"]), {}).setdefault(how, []).append(ppl / own[row["run"]] - 1)
    return "\n".join(["| run | shuffled: another sentence's plan | mean: the split's mean plan |", "|---|---|---|"] +
                      [f"| {name} | {evaluation.summary(r['shuffled'], '+.2%')} | {evaluation.summary(r['mean'], '+.2%')} |"
                       for name, r in rises.items()])


def following(run_dir, n_docs):
    """Plan following of one run, with random labels and (if it has a planner) the planner's."""
    net, _, corpus = evaluation.load_run(run_dir)
    row = {"run": str(run_dir), "forced": evaluation.plan_following(net, corpus, n_docs, forced=True)}
    if net.planner is not None:
        row["planned"] = evaluation.plan_following(net, corpus, n_docs)
    return row


def following_table(rows):
    cell = lambda f: f"{f['rate']:.1%} of {f['sentences']} (chance {f['chance']:.1%})" if f else "n/a: no planner"
    return "\n".join(["| run | planner's labels | random labels |", "|---|---|---|"] +
                      [f"| {evaluation.run_name(r['run'])} | {cell(r.get('planned'))} | {cell(r['forced'])} |" for r in rows])


if __name__ == "__main__":
    main()

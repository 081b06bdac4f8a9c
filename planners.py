r"""
What limits the planner? How well it predicts the next sentence's label under other labels (K, what
they are made from) and other planners (wider, deeper, trained longer), against a label bigram
and chance, over seeds. Only the planner stage trains (seconds to minutes on 2 CPU cores); an
option with --embedder lm also needs the LM stage, which reads no label and is shared with every
run that uses the same --pretrain-dir.

    python planners.py --dataset wiki --seeds 0,1,2 --options "" "--n-labels 16" \
        "--n-labels 256" "--embedder lm" "--planner-iters 2000" \
        "--planner-layers 4 --planner-embd 256 --planner-iters 2000"

Each option is train.py flags added to the others given here (flags this script does not know go
to train.py; "" is the default setting). Trained stages are kept under --pretrain-dir
(default <out-dir>/pretrain), so the same command skips what is done. The table, a row an option,
is printed and written to <out-dir>/planners.md and .json: the planner's top-1, top-5 and
cross-entropy on the true labels of val, mean ± std over seeds; a label bigram's fitted on train;
chance; and how many nats the planner is better than the bigram, with its 95% t-interval.
Whether labels that are easier to predict also tell the LM more is compare.py's question (the
oracle against fixed: --label-counts, or --embedder lm).
"""

import argparse
import json
import math
import shlex
from pathlib import Path

import data
import explore
import runtime
import train
from compare import interval, mean_std, seed_list
from planner import planner_metrics


def measure(flags):
    """Train (or load) the planner of one setting; -> its val metrics beside the bigram's."""
    args = train.get_args(flags)
    corpus, splits = train.load_data(args)
    if args.embedder == "lm":
        lm, _ = train.pretrain_lm(args, corpus, splits)
        corpus = train.lm_labels(args, corpus, splits, lm)
        splits = {k: train.SplitData(corpus, k, args.device) for k in ("train", "val")}
    planner, _ = train.pretrain_planner(args, corpus, splits)
    found = planner_metrics(planner, splits["val"])
    return {"top1": found["planner_top1"], "top5": found["planner_top5"],
            "ce": found["planner_val_loss"], "k": len(corpus.codebook),
            **explore.label_baselines(corpus, "val")}


def option_flags(option):
    """One --options setting as train.py flags, checked before anything trains."""
    try:
        flags = shlex.split(option)
    except ValueError as e:  # an unclosed quote
        raise runtime.TrainError(f"--options {option!r}: {e}: quote each setting whole") from None
    if own := [f for f in flags if f.split("=")[0] in ("--seed", "--dataset", "--device",
                                                       "--out-dir")]:
        raise runtime.TrainError(f"--options {option!r}: {own[0]} is planners.py's own flag "
                                 "(--seeds for seeds): give it outside --options")
    return flags


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default="wiki")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated")
    p.add_argument("--options", nargs="+", default=[""],
                   help='train.py flags of each setting, quoted one a setting ("": the default)')
    p.add_argument("--out-dir", default="out/planners")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    args, common = p.parse_known_args(argv)
    out = Path(args.out_dir)
    if not any("--pretrain-dir" in f for f in common):
        common += ["--pretrain-dir", str(out / "pretrain")]
    with runtime.one_line_errors(data.DataError, interrupted="interrupted; what is finished is "
                                 "kept: run the same planners.py command to go on"):
        seeds = seed_list(args.seeds)
        runtime.check_paths(args)
        if len(set(args.options)) != len(args.options):
            raise runtime.TrainError("--options: give each setting once")
        settings = {option: option_flags(option) for option in args.options}
        rows = []
        for option in args.options:
            found = [measure(common + settings[option] +
                             ["--dataset", args.dataset, "--seed", s, "--device", args.device,
                              "--out-dir", str(out)]) for s in seeds]
            rows.append({"option": option, "seeds": seeds, "runs": found})
            print(f"{option or 'default'}: planner top-1 "
                  f"{mean_std([f['top1'] for f in found], '.3f')}, cross-entropy "
                  f"{mean_std([f['ce'] for f in found], '.3f')}; bigram's "
                  f"{mean_std([f['bigram_ce'] for f in found], '.3f')}", flush=True)
        md = table(args, common, rows)
        print("\n" + md)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("planners.md", md + "\n"), ("planners.json", json.dumps(rows))):
            with runtime.atomic_write(out / name) as tmp:
                Path(tmp).write_text(text)


def table(args, common, rows):
    lines = ["| option (train.py flags) | K | planner: top-1 / top-5 / cross-entropy "
             "| label bigram: top-1 / top-5 / cross-entropy | chance: 1/K / ln K "
             "| planner's gain on the bigram, nats [95% interval] |", "|---" * 6 + "|"]
    for row in rows:
        runs = row["runs"]
        cell = lambda who: " / ".join(mean_std([r[who + k] for r in runs], ".3f")
                                      for k in ("top1", "top5", "ce"))
        gain = [r["bigram_ce"] - r["ce"] for r in runs]
        ci = interval(gain)
        k = runs[0]["k"]
        lines.append(f"| {row['option'] or '(default)'} | {k} | {cell('')} | {cell('bigram_')} | "
                     f"{1 / k:.3f} / {math.log(k):.3f} | {mean_std(gain, '+.3f')}"
                     + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "") + " |")
    return (f"{args.dataset}, the next sentence's label predicted on val, mean ± std over seeds "
            f"{args.seeds} (flags given to every option: {' '.join(common) or 'none'})\n\n"
            + "\n".join(lines))


if __name__ == "__main__":
    main()

r"""
The paper's comparison at small scale: every estimator and control, over several seeds, as one
table.

    python compare.py --dataset wiki <flags>        # RESULTS.md's wiki table
    # RESULTS.md's synthetic sweep
    python compare.py --dataset synthetic --ambiguities 0,0.25,0.5 <flags>
    python compare.py --dataset wiki --block-sizes 32,64,128 \
        --runs none,fixed,oracle,hard-frozen,soft-joint
    # same LMs, less seen
    python compare.py --dataset wiki --block-size 128 --batch-size 16 --eval-windows 32,64,128

Each seed pretrains its LM and planner once (train.py caches them in <out-dir>/seed<N>/pretrain) and
fine-tunes every mode from those same weights on the same batches. Flags this script does not know
go to train.py unchanged. Finished runs, their evaluations and their samples (cached next to each
checkpoint) are skipped and a run cut short continues from its last checkpoint (train.py --resume),
so an interrupted comparison picks up where it stopped. The tables are
printed and written to <out-dir>/results.md and .json. Each finding gets the 95% t-interval of its
mean over seeds and the verdict that interval gives ("holds", "reversed", "not distinguishable").

A sweep (--ambiguities, --block-sizes or --label-counts) makes the whole comparison at each value,
in <out-dir>/a<value>/, block<value>/ or k<value>/, then sets the findings and the plan reliance
side by side in <out-dir>/sweep.md and draws both against the swept value. Over K the LM stage,
which reads no label, is pretrained once a seed for every K (train.py --pretrain-dir
<out-dir>/pretrain), and the table adds how well the planner and a label bigram predict the next
label at each K:

    python compare.py --dataset wiki --label-counts 16,64,256 \
        --runs fixed,oracle,soft-frozen,soft-bigram

Other labels are train.py flags like any other, e.g. labels made from the pretrained LM's own
hidden states (planners.py measures how predictable each kind is, in minutes):

    python compare.py --dataset wiki --embedder lm --runs fixed,oracle,hard-frozen,soft-joint \
        --out-dir out/compare-wiki-lm

A folder's finished runs are reused only by the flags they were made with: other flags need
another --out-dir.

--eval-windows trains nothing more: it scores the finished runs in shorter windows than they were
trained in (val split), so that only what the LM sees of each document changes, not how well it was
trained, and sums up the same way.

    python compare.py --holds out/compare-synthetic-ambiguity,out/compare-wiki-window \
        --out-dir out/holds

How good must a plan be to pay? --truth-weights adds soft-frozen runs whose plans mix the true
label in (train.py --truth-weight), and tables the curve from the planner (soft-frozen, w = 0) to
the truth (oracle, w = 1): each point's plans' accuracy and cross-entropy on the true labels against
its val perplexity relative to fixed (--runs must hold fixed, soft-frozen and oracle, and with them
the curve's two ends are tabled without --truth-weights too; soft-bigram, a label bigram in the
planner's place, adds the point a planner must beat):

    python compare.py --dataset wiki --runs fixed,oracle,soft-frozen,soft-bigram \
        --truth-weights 0.25,0.5,0.75

--holds trains nothing either: it sets the findings of finished comparisons and sweeps side by side,
one row a setting, each with its verdict (RESULTS.md's summary table). A folder gives its
sweep.json if it has one, else its results.json; name either file to choose.

Then every run of the first seed that takes labels writes --sample-docs new documents of 8
sentences, once with the planner's labels and once with random ones: how often does the LM write
a sentence of the label it was given? Last, the figures of figures.py are written next to
the tables (if matplotlib is installed), and it says what it made and the wall time each kind of
work took.
"""

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import data
import eval as evaluation
import explore
import figures
import runtime
import sample as sampling
import train
from planner import sentence_logits

RUNS = [("none", None), ("fixed", None), ("uniform", None), ("oracle", None), ("hard", "frozen"),
        ("st", "joint"), ("soft", "frozen"), ("soft", "joint"), ("gumbel", "joint")]
# named in --runs only: soft plans from a label bigram in the planner's place (a point of the curve)
OPTIONAL_RUNS = [("soft", "bigram")]
# The paper's findings, each as two runs to set against each other seed by seed, and what the
# claim says of A against B: lower perplexity ("beats"), not lower ("not better"), or only how
# far ("gap").
CLAIMS = [("soft (joint) beats hard", "soft-joint", "hard-frozen", "beats"),
          ("ST is not better than hard", "st-joint", "hard-frozen", "not better"),
          ("plans beat one learned constant vector", "soft-joint", "fixed", "beats"),
          ("a frozen planner's plans beat one learned constant vector", "soft-frozen", "fixed",
           "beats"),
          ("true labels beat one learned constant vector", "oracle", "fixed", "beats"),
          ("plans beat the mean label", "soft-joint", "uniform", "beats"),
          ("joint training beats a frozen planner", "soft-joint", "soft-frozen", "beats"),
          ("how far soft is from the oracle", "soft-joint", "oracle", "gap")]
# t_{0.975} with n - 1 degrees of freedom, for the 95% interval of a mean over n seeds (from tables;
# above 30 degrees of freedom the normal 1.96 is within 2% of it).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]


# no plan, or the same one for every sentence: nothing to swap or follow
CONSTANT_PLANS = ("none", "fixed", "uniform")
# A comparison runs for hours: what this invocation made (cached results cost nothing), and the
# wall time it took, per kind of work:
# {"training runs": (seconds, count), "evaluations": ..., "samplings": ...}
SPENT = {}


def paired_changes(results, a, b):
    """Perplexity of run a against run b of the same seed, -1, for each seed that has both."""
    ppl = {(evaluation.run_name(r["run"]), r["seed"]): r["perplexity"] for r in results}
    return [ppl[a, seed] / ppl[b, seed] - 1 for name, seed in ppl if name == a and (b, seed) in ppl]


def unseen_document(split, block_size):
    """What the planner reads and the LM does not, over the split's text targets scored as
    perplexity() scores them: -> (share of the targets whose document's text begins before their
    window, mean share of the document's text so far that lies before the window). The planner
    always reads it all."""
    n = len(split.tokens) - 1
    starts, firsts = np.array(evaluation.windows(n, block_size)[0]).T
    target = np.arange(1, n + 1)
    window = starts[np.searchsorted(firsts, target, side="right") - 1]
    opens = np.flatnonzero(split.tok_sent < 0)  # every document's <|endoftext|>, its text follows
    text = opens[np.searchsorted(opens, target - 1, side="right") - 1] + 1
    is_text = split.tok_sent[target] >= 0
    before, so_far = np.maximum(window - text, 0)[is_text], (target - text)[is_text]
    return float(np.mean(before > 0)), float(np.mean(before / np.maximum(so_far, 1)))


def plan_following(net, corpus, n_docs=25, sentences=8, forced=False, seed=0):
    """How often the LM writes a sentence of the label it was given, over n_docs new documents.

    Labels come from the planner, or with forced=True uniformly at random (this asks whether the
    LM follows any plan, however good the planner). chance: the rate if the realised label ignored
    the planned one, from the two labels' frequencies (1/K for random labels).
    """
    k, rng, rows = len(corpus.codebook), np.random.default_rng(seed), []
    for i in range(n_docs):
        force = rng.integers(k, size=sentences).tolist() if forced else ()
        rows += sampling.sample(net, corpus, sentences, force=force, seed=seed + i)
    planned, realised = (np.array([r[j] for r in rows]) for j in (0, 1))
    chance = (1 / k if forced
              else np.bincount(planned, minlength=k) @ np.bincount(realised, minlength=k)
              / len(rows) ** 2)
    return {"sentences": len(rows), "hits": int(np.sum(planned == realised)),
            "rate": float(np.mean(planned == realised)), "chance": float(chance)}


def run_names(runs=RUNS):
    return [mode + (f"-{planner}" if planner else "") for mode, planner in runs]


def done(run_dir, argv=None):
    """Whether run_dir holds a finished run; one made with other flags than argv is refused."""
    path = run_dir / "ckpt.pt"
    ck = runtime.load_checkpoint(path) if path.exists() else {}
    if not ck.get("done"):
        return False
    if argv is not None and (other := made_otherwise(ck["config"], argv)):
        raise runtime.TrainError(
            f"{run_dir} is a finished run made with "
            f"{', '.join(f'{k} {was}' for k, was, _ in other)}, not "
            f"{', '.join(f'{k} {now}' for k, _, now in other)}: give this comparison another "
            f"--out-dir")
    return True


def refuse_other_text(run_dir, argv):
    """A finished run set beside runs trained now must have read the text the corpus gives now."""
    ck = runtime.load_checkpoint(run_dir / "ckpt.pt")
    if "tokens" not in ck["identity"]:  # made before checkpoints kept it
        return
    args = train.get_args(argv)
    if ck["identity"]["tokens"] != text_identity(
            args.dataset, args.n_labels, args.embed_dim, args.seed, args.synthetic_docs,
            args.synthetic_types, args.data_dir, args.synthetic_ambiguity):
        raise runtime.TrainError(f"{run_dir} is a finished run trained on other text than "
                                 f"--dataset {args.dataset} gives now (a corpus file changed?): "
                                 f"restore it, or give this comparison another --out-dir")


@functools.lru_cache(maxsize=None)
def text_identity(*source):
    """The identity of the token streams the corpus gives now (read from the cache train.py
    builds; its labels are what the flags say), once an invocation for each source."""
    *source, ambiguity = source
    return data.load(*source, quiet=True, synthetic_ambiguity=ambiguity).identity(
        labels=False)["tokens"]


def made_otherwise(saved, argv):
    """The train.py flags of argv a run was not made with (what train.py fills in itself aside:
    the device's defaults, the planner's, the run's name; with --init-from, GPT-2's shape)."""
    parser = train.make_parser()
    asked, defaults = vars(parser.parse_known_args(argv)[0]), vars(parser.parse_args([]))
    device = runtime.resolve_device(asked["device"])
    if not any(str(d).startswith("cuda") for d in (device, saved.get("device"))):
        # the CPU's defaults, as train.py fills them (a GPU's follow from the corpus)
        asked = {k: train.CPU_DEFAULTS[k] if v is None and k in train.CPU_DEFAULTS else v
                 for k, v in asked.items()}
    filled = {k for k, v in asked.items()
              if v is None and (k in train.CPU_DEFAULTS or k in ("planner", "run"))}
    if asked["init_from"]:
        filled |= {"n_layer", "n_head", "n_embd", "bias"}
    return runtime.other_settings(saved, {k: v for k, v in asked.items() if k not in filled},
                                  defaults)


def main(argv=None, script="compare.py"):
    """script: the command an interruption says to run again (demo.py is compare.py in a fixed
    setting)."""
    # no abbreviations: train.py's --block-size must reach train.py, not become --block-sizes
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default="wiki")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated")
    p.add_argument("--runs", default=",".join(run_names()),
                   help="comma-separated, of these (the default) and soft-bigram")
    p.add_argument("--out-dir", help="default: out/compare-<dataset>")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="for training and evaluation")
    p.add_argument("--sample-docs", type=int, default=25,
                   help="documents sampled per run to measure plan following; 0: none")
    g = p.add_argument_group(
        "a sweep: the whole comparison at each value, then the findings against it")
    g.add_argument("--ambiguities",
                   help="comma-separated values of --synthetic-ambiguity (synthetic corpus)")
    g.add_argument("--block-sizes",
                   help="comma-separated LM windows; --batch-size follows so tokens per step "
                        "stay equal")
    g.add_argument("--label-counts",
                   help="comma-separated K (--n-labels): how predictable the labels are against "
                        "how much they tell; one LM a seed serves them all (the LM stage reads no "
                        "label: <out-dir>/pretrain)")
    g.add_argument("--eval-windows",
                   help="comma-separated windows (at most --block-size) to score the finished "
                        "runs in: the same LMs shown less of each document")
    p.add_argument("--truth-weights",
                   help="comma-separated weights w in (0, 1): also fine-tune soft-frozen with the "
                        "true label mixed into its plans (train.py --truth-weight w), and draw the "
                        "curve of plan quality from soft-frozen (w = 0) to the oracle (w = 1) "
                        "against fixed")
    p.add_argument("--holds",
                   help="comma-separated out-dirs of finished comparisons or sweeps: trains "
                        "nothing, sets every finding's verdict in each of their settings side by "
                        "side in <out-dir>/holds.md")
    args, train_flags = p.parse_known_args(argv)
    args.script = script
    SPENT.clear()
    text_identity.cache_clear()  # a corpus file may have changed since the last call
    with runtime.one_line_errors(evaluation.EvalError, data.DataError,
                                 interrupted=f"interrupted; what is finished is kept: run the "
                                             f"same {script} command to go on"):
        if args.holds is not None:
            return what_holds(args)
        seed_list(args.seeds)  # refused here, before hours of training
        truth_weights(args)
        refuse_flags(args, train_flags)
        out = Path(args.out_dir or f"out/compare-{args.dataset}")
        settings = sweep_settings(args, train_flags, out)
        reports = [(value, compare(args, train_flags + flags, out / name if name else out))
                   for name, value, flags in settings]
        if args.eval_windows:
            reports = [(int(w), rescored(args, reports[0][1], int(w)))
                       for w in args.eval_windows.split(",")]
        if len(reports) > 1 or args.eval_windows:  # one window is a table of its own too
            summarise_sweep(args, out, reports)
        print("\n" + spent())


def refuse_flags(args, train_flags):
    """Flags that compare.py sets for every run itself, or that would compare nothing."""
    if unknown := train.make_parser().parse_known_args(train_flags)[1]:
        raise runtime.TrainError(f"{unknown[0]}: neither compare.py's flag nor train.py's (see "
                                 "--help of each)")
    if own := [f for f in train_flags if f.split("=")[0] in ("--run", "--seed", "--resume",
                                                             "--overwrite")]:
        raise runtime.TrainError(f"{own[0]}: compare.py names, seeds and resumes every run itself "
                                 "(--seeds; a rerun goes on where it stopped): drop it")
    runtime.check_ranges(args, [(("sample_docs",), lambda v: v >= 0, "0 or more")])
    if args.ambiguities and args.dataset != "synthetic":
        raise runtime.TrainError("--ambiguities shapes the synthetic corpus only: add --dataset "
                                 "synthetic")


def seed_list(text):
    """--seeds as a list, each seed once."""
    seeds = text.split(",")
    if (not all(s.strip().isdigit() for s in seeds)
            or len({int(s) for s in seeds}) != len(seeds)):  # 0 and 00 are one seed
        raise runtime.TrainError(f"--seeds {text}: give each seed once, as numbers separated by "
                                 "commas (e.g. 0,1,2)")
    return seeds


def sweep_values(text, flag, kind, ok, what):
    """A swept flag's values, each checked before anything trains."""
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        values = None
    if not values or not all(ok(v) for v in values) or len(set(values)) != len(values):
        raise runtime.TrainError(f"{flag} {text}: give {what}, each once, comma-separated")
    return values


def what_holds(args):
    """Each finding's verdict in every setting of finished comparisons, one row a setting: the
    RESULTS.md's summary table; -> nothing, printed and written to <out-dir>/holds.md."""
    if args.ambiguities or args.block_sizes or args.label_counts or args.eval_windows:
        raise runtime.TrainError("--holds sums up finished comparisons and trains nothing: "
                                 "give it without a sweep")
    if not any(d.strip() for d in args.holds.split(",")):
        raise runtime.TrainError("--holds is empty: give the out-dirs of finished comparisons or "
                                 "sweeps, comma-separated")
    settings = []
    for d in map(Path, args.holds.split(",")):
        path = (d if d.suffix == ".json" else d / "sweep.json" if (d / "sweep.json").exists()
                else d / "results.json")
        try:
            found = json.loads(path.read_text())
            reports = ([(f"{d}: {found['swept']} = {v:g}", report)
                        for v, report in found["reports"]]
                       if "reports" in found else [(str(d), found)])
            if not all(report["val"] and "seed" in report["val"][0] for _, report in reports):
                raise ValueError("no val evaluations")
            for _, report in reports:  # what the table reads, read now: a hand edit is one line
                for _, a, b, _ in CLAIMS:
                    paired_changes(report["val"], a, b)
                reliance_rises(report)
            settings += reports
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise runtime.TrainError(f"--holds: {path} is no finished comparison ({e}): give the "
                                     f"--out-dir of a compare.py run, or its results.json or "
                                     f"sweep.json") from None
    claims = [c for c in CLAIMS
              if any(paired_changes(r["val"], c[1], c[2]) for _, r in settings)]
    rows = ["| setting | seeds | " +
            " | ".join(f"{claim} ({a} vs {b})" for claim, a, b, _ in claims) +
            f" | plan reliance of soft-joint: {RELIANCE['shuffled']} |",
            "|---" * (3 + len(claims)) + "|"]
    for name, report in settings:
        changes = [paired_changes(report["val"], a, b) for _, a, b, _ in claims]
        shuffled = reliance_rises(report).get("soft-joint", {}).get("shuffled", [])
        rows.append(f"| {name} | {len({r['seed'] for r in report['val']})} | " +
                    " | ".join(claim_cell(c, kind) if c else ""
                               for c, (*_, kind) in zip(changes, claims)) +
                    f" | {mean_std(shuffled, '+.2%')} |")
    md = ("What holds: val perplexity of A against B of the same seed, mean ± std over seeds [95% "
          "t-interval of the mean] and the verdict it gives, in every setting; plan reliance: how "
          "much soft-joint's val perplexity rises with another sentence's plan than its own\n\n"
          + "\n".join(rows))
    print(md)
    out = Path(args.out_dir or "out/holds")
    out.mkdir(parents=True, exist_ok=True)
    with runtime.atomic_write(out / "holds.md") as tmp:
        Path(tmp).write_text(md + "\n")


def sweep_settings(args, train_flags, out):
    """-> [(sub-folder, value, train.py flags)]: one setting, or one per value of the swept flag."""
    known = run_names(RUNS + OPTIONAL_RUNS)
    if unknown := set(args.runs.split(",")) - set(known):
        raise runtime.TrainError(f"--runs: unknown run {', '.join(sorted(unknown))}: "
                                 f"use some of {', '.join(known)}")
    if sum(map(bool, (args.ambiguities, args.block_sizes, args.label_counts,
                      args.eval_windows))) > 1:
        raise runtime.TrainError("--ambiguities, --block-sizes, --label-counts, --eval-windows: "
                                 "sweep one at a time (an invocation each)")
    given = train.make_parser().parse_known_args(train_flags)[0]
    if args.eval_windows:  # scores the runs only once they are trained: checked now
        windows = sweep_values(args.eval_windows, "--eval-windows", int, lambda w: w >= 1,
                               "windows of at least 1 token (e.g. 32,64,128)")
        block = given.block_size or (train.CPU_DEFAULTS["block_size"]  # a GPU's: the corpus'
                                     if runtime.resolve_device(args.device) != "cuda" else None)
        if block and max(windows) > block:
            raise runtime.TrainError(f"--eval-windows {args.eval_windows}: the runs train on "
                                     f"windows of {block} tokens (--block-size): score in windows "
                                     f"of at most {block}")
    if args.label_counts:
        counts = sweep_values(args.label_counts, "--label-counts", int, lambda k: k >= 2,
                              "label counts of at least 2 (e.g. 16,64,256)")
        return [(f"k{k}", k, ["--n-labels", str(k), "--pretrain-dir", str(out / "pretrain")])
                for k in counts]
    if args.ambiguities:
        return [(f"a{a:g}", a, ["--synthetic-ambiguity", repr(a)])
                for a in sweep_values(args.ambiguities, "--ambiguities", float,
                                      lambda a: 0 <= a <= 1, "ambiguities from 0 to 1 "
                                      "(e.g. 0,0.25,0.5)")]
    if args.block_sizes:
        tokens = ((given.batch_size or train.CPU_DEFAULTS["batch_size"])
                  * (given.block_size or train.CPU_DEFAULTS["block_size"]))
        blocks = sweep_values(args.block_sizes, "--block-sizes", int, lambda b: b >= 1,
                              "windows of at least 1 token (e.g. 32,64,128)")
        if any(tokens % b for b in blocks):
            raise runtime.TrainError(f"--block-sizes: {tokens} tokens a step (--batch-size x "
                                     f"--block-size) must divide by every window: choose windows "
                                     f"that divide {tokens}")
        return [(f"block{b}", b, ["--block-size", str(b), "--batch-size", str(tokens // b)])
                for b in blocks]
    return [("", None, [])]


def evaluated(run, split, device):
    """eval.py's figures of a run, with the label baselines its planner is read against."""
    result = evaluation.evaluate(run, split, device)
    return {**result, **explore.label_baselines(evaluation.load_run(run)[2], split)}


def training(argv, script):
    """train.main(argv) for a lab script: an interruption says to run the script again (it skips
    what is finished and continues a run cut short), not train.py's own command."""
    try:
        train.main(argv)
    except SystemExit as e:
        if str(e.code).startswith("error: interrupted"):
            sys.exit(f"{e.code.split(';')[0].split(': saved')[0]}; every checkpoint written so "
                     f"far is whole: run the same {script} command to go on")
        raise


def train_runs(args, train_flags, out):
    """Every run of every seed, trained into out/seed<seed>/<run> unless it is finished: -> their
    folders."""
    wanted = args.runs.split(",")
    everything = RUNS + OPTIONAL_RUNS
    picked = [(mode, planner, name, []) for (mode, planner), name
              in zip(everything, run_names(everything)) if name in wanted]
    picked += [("soft", "frozen", f"soft-frozen-truth{w:g}", ["--truth-weight", f"{w:g}"])
               for w in truth_weights(args)]
    runs = []  # (folder, train.py's flags, finished)
    for seed in map(int, args.seeds.split(",")):
        for mode, planner, name, flags in picked:
            run_dir = out / f"seed{seed}"
            argv = (train_flags + flags + ["--dataset", args.dataset, "--seed", str(seed),
                                           "--out-dir", str(run_dir), "--device", args.device,
                                           "--mode", mode] +
                    (["--planner", planner] if planner else []))
            runs.append((run_dir / name, argv, done(run_dir / name, argv)))
    if not all(finished for *_, finished in runs):  # new runs will be set beside the finished
        for run, argv, finished in runs:
            if finished:
                refuse_other_text(run, argv)
    for run, argv, finished in runs:
        if not finished:  # a run cut short continues from its last checkpoint
            argv = argv + (["--resume"] if (run / "ckpt.pt").exists() else [])
            timed("training runs", lambda: training(argv, args.script))
    return [run for run, *_ in runs]


def compare(args, train_flags, out):
    """Train, evaluate and sample every run of every seed into out; write its tables;
    -> the report."""
    runs = train_runs(args, train_flags, out)
    report, tables, title = {}, [], f"{args.dataset}{setting_title(out, args)}"
    for split in ("val", "test"):
        report[split] = [cached(r, f"eval-{split}.json", lambda: evaluated(r, split, args.device))
                         for r in runs]
        tokens = ", ".join(f"{n:,}"
                           for n in {r["seed"]: r["tokens"] for r in report[split]}.values())
        tables.append(f"{title}, {split} split (target tokens per seed: {tokens})\n\n"
                      f"{table(report[split])}"
                      f"\n\n{baselines_line(report[split])}")
        print("\n" + tables[-1])
    tables.append(f"{title}, the findings: perplexity of A against B of the same seed\n\n"
                  f"{claims_table(report)}")
    print("\n" + tables[-1])
    if truth_weights(args) or CURVE_ENDS <= {r.name for r in runs}:
        report["curve"] = curve(args, runs, report)
        tables.append(f"{title}, how good must a plan be: soft plans from w onehot(true label) + "
                      f"(1-w) the frozen planner's distribution, fine-tuned, against fixed (same "
                      f"seed), val\n\n{curve_table(report)}")
        print("\n" + tables[-1])
    report["reliance"] = reliance_rows(args, runs)
    tables.append(f"{title}, plan reliance: val perplexity with every plan replaced, against the "
                  f"run's own plans (same seed)\n\n{reliance_table(report)}")
    print("\n" + tables[-1])
    if args.sample_docs:
        first = f"seed{args.seeds.split(',')[0]}"
        report["following"] = [cached(r, f"following-{args.sample_docs}.json",
                                      lambda: following(r, args.sample_docs, args.device),
                                      "samplings")
                               for r in runs
                               if r.parent.name == first and r.name not in CONSTANT_PLANS]
        tables.append(f"{title}, sampled sentences whose label is the one planned "
                      f"(seed {args.seeds.split(',')[0]})"
                      f"\n\n{following_table(report['following'])}")
        print("\n" + tables[-1])
    with runtime.atomic_write(out / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(relative_runs(report, out), indent=1))
    with runtime.atomic_write(out / "results.md") as tmp:
        Path(tmp).write_text("\n\n".join(tables) + "\n")
    try:
        print(*figures.figures(out, out), sep="\n")
    except evaluation.EvalError as e:
        print(f"no figures: {e}")
    return report


def mean_std(values, fmt):
    """'mean ± std' over seeds; the mean alone for one run; '' when there is nothing to show."""
    if not values or values[0] is None:
        return ""
    std = f" ± {np.std(values, ddof=1):{fmt.lstrip('+')}}" if len(values) > 1 else ""
    return f"{np.mean(values):{fmt}}{std}"


def table(results):
    """Markdown comparison, one row per run name (its mode and planner), mean ± std over the seeds
    given (what eval.py's table shows of one seed).

    'vs none' is the change in perplexity against the run of mode none with the same seed;
    'vs fixed' (when there are fixed runs) against fixed, one learned plan vector for every
    sentence: the same parameters as any planned mode without the information, so what the plans'
    content adds.
    """
    groups = {}
    for r in results:
        groups.setdefault(evaluation.run_name(r["run"]), []).append(r)
    refs = ["none"] + (["fixed"] if "fixed" in groups else [])
    base = {ref: {r["seed"]: r["perplexity"] for r in groups.get(ref, [])} for ref in refs}
    rows = ["| run | mode | planner | perplexity | " + " | ".join(f"vs {ref}" for ref in refs)
            + " | planner top-1 | planner top-5 |",
            "|---" * (6 + len(refs)) + "|"]
    for name, rs in groups.items():
        change = [mean_std([r["perplexity"] / base[ref][r["seed"]] - 1
                           for r in rs if r["seed"] in base[ref]], "+.1%")
                  for ref in refs]
        name += f" (×{len(rs)})" if len(rs) > 1 else ""
        rows.append(f"| {name} | {rs[0]['mode']} | {rs[0]['planner'] or ''} | "
                    f"{mean_std([r['perplexity'] for r in rs], '.2f')} | "
                    f"{' | '.join(change)} | {mean_std([r['planner_top1'] for r in rs], '.3f')} | "
                    f"{mean_std([r['planner_top5'] for r in rs], '.3f')} |")
    return "\n".join(rows)


def baselines_line(results):
    """The label baselines of the results' splits (one per seed), mean ± std over seeds."""
    per_seed = list({r["seed"]: r for r in results}.values())
    cell = lambda k: mean_std([r.get(k) for r in per_seed], ".3f")
    return (f"Label baselines (top-1 / top-5): the most frequent label {cell('majority_top1')} / "
            f"{cell('majority_top5')}; a label bigram fitted on train {cell('bigram_top1')} / "
            f"{cell('bigram_top5')}.")


# what the curve of plan quality is drawn between, and set against
CURVE_ENDS = {"fixed", "soft-frozen", "oracle"}


def truth_weights(args):
    if not args.truth_weights:
        return []
    try:
        weights = [float(w) for w in args.truth_weights.split(",")]
    except ValueError:
        weights = []
    if (not weights or not all(0 < w < 1 for w in weights)
            or len({f"{w:g}" for w in weights}) != len(weights)):  # each a run named by it
        raise runtime.TrainError(f"--truth-weights {args.truth_weights}: give weights between 0 "
                                 "and 1, each once, comma-separated (0 is soft-frozen, 1 the "
                                 "oracle)")
    if missing := CURVE_ENDS - set(args.runs.split(",")):
        raise runtime.TrainError(f"--truth-weights: the curve needs {', '.join(sorted(missing))} "
                                 "in --runs too (fixed is what it is set against; soft-frozen and "
                                 "oracle are its ends)")
    return weights


@torch.no_grad()
def plan_quality(run, device, split="val"):
    """How good a run's plans are as a distribution over the true labels of the split: top-1 and
    top-5 accuracy, and cross-entropy (nats). The oracle's: 1, 1, 0."""
    device = runtime.resolve_device(device)
    net, _, corpus = evaluation.load_run(run, device)
    sd = data.SplitData(corpus, split, device)
    if net.plans.mode == "oracle":
        return {"plan_top1": 1.0, "plan_top5": 1.0, "plan_ce": 0.0}
    with runtime.exact_float32():  # as eval.py: not TF32, should a training here allow it
        q = net.plans.distribution(sentence_logits(net.planner, sd), sd.labels)
    top = q.topk(min(5, q.shape[1]), -1).indices
    return {"plan_top1": (top[:, 0] == sd.labels).float().mean().item(),
            "plan_top5": (top == sd.labels[:, None]).any(-1).float().mean().item(),
            "plan_ce": -q.gather(1, sd.labels[:, None]).clamp_min(1e-12).log().mean().item()}


def curve(args, runs, report):
    """Each point of the curve, per seed: its truth weight, its plans' quality, its val perplexity
    against fixed."""
    weight = {"soft-bigram": -1.0, "soft-frozen": 0.0, "oracle": 1.0,  # -1: the label bigram
              **{f"soft-frozen-truth{w:g}": w for w in truth_weights(args)}}
    points = []
    for r in runs:
        if r.name in weight:
            change = paired_changes([x for x in report["val"] if x["seed"] == seed_of(r)],
                                    r.name, "fixed")
            points.append({"run": str(r), "name": r.name, "weight": weight[r.name],
                           "seed": seed_of(r), "vs_fixed": change[0] if change else None,
                           **cached(r, "plans-val.json", lambda: plan_quality(r, args.device))})
    return sorted(points, key=lambda p: (p["weight"], p["seed"]))


def seed_of(run):
    return int(Path(run).parent.name.removeprefix("seed"))


def curve_table(report):
    """The curve as a table: a row per truth weight, mean ± std over seeds and the verdict against
    fixed; below it, where the planner (w = 0) and a label bigram stand on its x-axis."""
    rows = ["| truth weight w | run | plans' top-1 | plans' top-5 | plans' cross-entropy (nats) "
            "| val perplexity vs fixed [95% interval], verdict |", "|---" * 6 + "|"]
    for w in sorted({p["weight"] for p in report["curve"]}):
        ps = [p for p in report["curve"] if p["weight"] == w]
        cell = lambda k: mean_std([p[k] for p in ps], ".3f")
        changes = [p["vs_fixed"] for p in ps if p["vs_fixed"] is not None]
        rows.append(f"| {'- (a label bigram)' if w < 0 else f'{w:g}'} | {ps[0]['name']} | "
                    f"{cell('plan_top1')} | {cell('plan_top5')} | "
                    f"{cell('plan_ce')} | {claim_cell(changes, 'beats')} |")
    per_seed = list({r["seed"]: r for r in report["val"]}.values())
    rows.append(f"\nOn the same axis, a label bigram fitted on train (not fine-tuned): top-1 "
                f"{mean_std([r.get('bigram_top1') for r in per_seed], '.3f')}, top-5 "
                f"{mean_std([r.get('bigram_top5') for r in per_seed], '.3f')}, cross-entropy "
                f"{mean_std([r.get('bigram_ce') for r in per_seed], '.3f')}.")
    return "\n".join(rows)


def reliance_rows(args, runs, window=None):
    """Each planned run's val perplexity with every plan replaced (shuffled, mean), scored in its
    own windows or in windows of `window` tokens, cached next to its checkpoint."""
    tag = f"-window{window}" if window else ""

    def replaced(run, how):
        plans = lambda net, sd: explore.substituted_plans(net, sd, how)
        return cached(run, f"eval-val{tag}-{how}.json",
                      lambda: evaluation.evaluate(run, "val", args.device, window, plans))

    return [{"run": str(r), how: replaced(r, how)["perplexity"]}
            for r in runs if r.name not in CONSTANT_PLANS for how in explore.PLANS]


def rescored(args, report, window):
    """The report's finished runs scored in windows of `window` tokens: their val evaluations and
    plan reliance, as compare() reports them at their own window."""
    # their own window: compare() scored them in it
    if all(r.get("window") == window for r in report["val"]):
        return report
    runs = [Path(r["run"]) for r in report["val"]]
    return {"val": [cached(r, f"eval-val-window{window}.json",
                           lambda: evaluation.evaluate(r, "val", args.device, window=window))
                    for r in runs], "reliance": reliance_rows(args, runs, window)}


def setting_title(out, args):
    if args.ambiguities:
        return f", ambiguity a = {out.name[1:]}"
    if args.label_counts:
        return f", K = {out.name[1:]} labels"
    return f", {out.name[5:]}-token window" if args.block_sizes else ""


def cached(run_dir, name, compute, work="evaluations"):
    """compute(), kept as JSON in the run's folder until the run's checkpoint changes. Its "run" is
    where the run is now: a comparison folder can be moved or copied."""
    cache = run_dir / name
    if (cache.exists()
            and cache.stat().st_mtime > runtime.checkpoint_path(run_dir).stat().st_mtime):
        try:
            found = json.loads(cache.read_text())
            if isinstance(found, dict) and "run" in found:
                found["run"] = str(run_dir)
            return found
        except (ValueError, UnicodeDecodeError):  # cut short or damaged: computed again
            pass
    result = timed(work, compute)
    with runtime.atomic_write(cache) as tmp:
        Path(tmp).write_text(json.dumps(result))
    return result


def relative_runs(report, folder):
    """The report with every run's path relative to folder, where its JSON is written: read back
    under the folder wherever it was moved or copied to (figures.runs_under)."""
    return {k: [dict(r, run=os.path.relpath(r["run"], folder)) for r in v] if k in RUN_LISTS
            else v for k, v in report.items()}


RUN_LISTS = ("val", "test", "reliance", "following", "curve")  # a report's lists of runs


def timed(work, compute):
    t0 = time.perf_counter()
    result = compute()
    seconds, count = SPENT.get(work, (0.0, 0))
    SPENT[work] = (seconds + time.perf_counter() - t0, count + 1)
    return result


def spent():
    if not SPENT:
        return "nothing to make: every run, evaluation and sample was there already"
    parts = ", ".join(f"{count} {work} {seconds / 60:.1f} min"
                      for work, (seconds, count) in SPENT.items())
    total = sum(seconds for seconds, _ in SPENT.values()) / 60
    return (f"made by this invocation, in wall time: {parts}; {total:.1f} min in all (a seed's "
            f"first training run includes its pretraining)")


def interval(changes):
    """The 95% t-interval of the mean over seeds; None for fewer than two."""
    n = len(changes)
    if n < 2:
        return None
    half = (T975[n - 2] if n - 1 <= len(T975) else 1.96) * np.std(changes, ddof=1) / np.sqrt(n)
    return np.mean(changes) - half, np.mean(changes) + half


def verdict(changes, kind):
    """What the 95% interval says of a claim: A beats B when the whole interval is below zero."""
    ci = interval(changes)
    if kind == "gap" or ci is None:
        return "" if kind == "gap" else "one seed: no verdict"
    below, above = ci[1] < 0, ci[0] > 0
    if kind == "beats":
        return "holds" if below else "reversed" if above else "not distinguishable"
    return ("does not hold: A is better" if below
            else "holds" + (": A is worse" if above else ": not distinguishable"))


def claim_cell(changes, kind):
    ci = interval(changes)
    bounds = f" [{ci[0]:+.2%}, {ci[1]:+.2%}]" if ci else ""
    return f"{mean_std(changes, '+.2%')}{bounds} {verdict(changes, kind)}".strip()


def claims_table(report):
    """One row per claim whose two runs were made: val per seed, mean ± std [95% interval] and
    verdict; test."""
    rows = ["| finding | A vs B | val, per seed | val: mean ± std [95% interval], verdict "
            "| test: mean ± std |",
            "|---|---|---|---|---|"]
    for claim, a, b, kind in CLAIMS:
        change = {split: paired_changes(report[split], a, b)
                  for split in ("val", "test")}
        if change["val"]:
            rows.append(f"| {claim} | {a} vs {b} | "
                        f"{' '.join(f'{c:+.2%}' for c in change['val'])} | "
                        f"{claim_cell(change['val'], kind)} | "
                        f"{mean_std(change['test'], '+.2%')} |")
    return "\n".join(rows)


def summarise_sweep(args, out, reports):
    """The findings and the plan reliance at every value of the swept setting, as one table and one
    figure; -> nothing, written to <out>/sweep.md, sweep.json and <out>/<name>-sweep.png."""
    what = ("ambiguity a" if args.ambiguities else "LM window (tokens)" if args.block_sizes
            else "labels K" if args.label_counts else "scoring window (tokens)")
    findings = [{"claim": claim, "a": a, "b": b, "kind": kind,
                 "changes": [paired_changes(r["val"], a, b) for _, r in reports]}
                for claim, a, b, kind in CLAIMS]
    findings = [f for f in findings if all(f["changes"])]
    rises = [reliance_rises(r) for _, r in reports]
    reliance = [{"run": name, "how": how, "rises": [r[name][how] for r in rises]}
                for name in sorted(set.intersection(*map(set, rises)) if rises else (),
                                   key=lambda n: (run_names(RUNS + OPTIONAL_RUNS) + [n]).index(n))
                for how in ("shuffled", "mean")]
    head = "| finding | A vs B | " + " | ".join(f"{what} = {v:g}" for v, _ in reports) + " |"
    rows = [head, "|---" * (2 + len(reports)) + "|"]
    sweep = {"swept": what, "values": [v for v, _ in reports], "seeds": args.seeds}
    # the premise of a window sweep, measured: how much of the document the LM misses
    if args.block_sizes or args.eval_windows:
        # the same split at every window
        val = evaluation.load_run(reports[0][1]["val"][0]["run"])[2].splits["val"]
        sweep["unseen"] = [unseen_document(val, v) for v, _ in reports]
        rows.append(f"| the document before the LM's window: the planner reads it, the LM does not "
                    f"| val text targets it cuts / share of their document so far "
                    f"(seed {reports[0][1]['val'][0]['seed']}) | " +
                    " | ".join(f"{cut:.0%} / {share:.0%}" for cut, share in sweep["unseen"]) + " |")
    if all("curve" in r for _, r in reports):
        rows += quality_rows([r for _, r in reports])
    rows += [f"| {f['claim']} | {f['a']} vs {f['b']} | "
             + " | ".join(claim_cell(c, f["kind"]) for c in f["changes"]) + " |"
             for f in findings]
    rows += [f"| plan reliance: {RELIANCE[x['how']]} | {x['run']} | "
             + " | ".join(mean_std(c, "+.2%") for c in x["rises"]) + " |"
             for x in reliance]
    md = (f"{args.dataset}, the findings at each {what}: val perplexity of A against B of the same "
          f"seed, mean ± std over seeds {args.seeds} [95% t-interval of the mean] and the verdict "
          f"it gives; plan reliance: how much the run's val perplexity rises with other plans than "
          f"its own\n\n" + "\n".join(rows))
    print("\n" + md)
    with runtime.atomic_write(out / "sweep.md") as tmp:
        Path(tmp).write_text(md + "\n")
    sweep.update(findings=findings, reliance=reliance,
                 reports=[[v, relative_runs(r, out)] for v, r in reports])
    with runtime.atomic_write(out / "sweep.json") as tmp:
        Path(tmp).write_text(json.dumps(sweep, indent=1))
    try:
        print(figures.sweep_figure(out / "sweep.json", out / f"{out.name}-sweep.png"))
    except evaluation.EvalError as e:
        print(f"no figure: {e}")


def quality_rows(reports):
    """How well the next sentence's label is predicted at each setting, on val, mean ± std over
    seeds: the frozen planner's plans (soft-frozen) against a label bigram fitted on train."""
    def cell(values):
        return " / ".join(mean_std([v[k] for v in values], ".3f") for k in ("top1", "ce"))

    planner = [[{"top1": p["plan_top1"], "ce": p["plan_ce"]} for p in r["curve"]
                if p["name"] == "soft-frozen"] for r in reports]
    bigram = [[{"top1": x.get("bigram_top1"), "ce": x.get("bigram_ce")}
               for x in {x["seed"]: x for x in r["val"]}.values()] for r in reports]
    k = [runtime.load_checkpoint(runtime.checkpoint_path(r["val"][0]["run"]))["config"]["n_labels"]
         for r in reports]
    chance = [[{"top1": 1 / n, "ce": math.log(n)}] for n in k]
    return [f"| the next sentence's label: {who} | top-1 / cross-entropy (nats), val | "
            + " | ".join(map(cell, values)) + " |"
            for who, values in (("the planner's plans", planner), ("a label bigram", bigram),
                                ("chance (1/K, ln K)", chance))]


RELIANCE = {"shuffled": "another sentence's plan", "mean": "the split's mean plan"}


def reliance_rises(report):
    """{run name: {"shuffled": [...], "mean": [...]}}: val perplexity with substituted plans
    / own, -1, per seed."""
    own = {r["run"]: r["perplexity"] for r in report["val"]}
    rises = {}
    for row in report["reliance"]:
        (how, ppl), = ((k, v) for k, v in row.items() if k != "run")
        rises.setdefault(evaluation.run_name(row["run"]), {}).setdefault(how, []).append(
            ppl / own[row["run"]] - 1)
    return rises


def reliance_table(report):
    """How much perplexity rises when the LM gets other plans than its own: what it draws from their
    content."""
    return "\n".join([f"| run | shuffled: {RELIANCE['shuffled']} | mean: {RELIANCE['mean']} |",
                      "|---|---|---|"] +
                      [f"| {name} | {mean_std(r['shuffled'], '+.2%')} | "
                       f"{mean_std(r['mean'], '+.2%')} |"
                       for name, r in reliance_rises(report).items()])


def following(run_dir, n_docs, device):
    """Plan following of one run, with random labels and (if it has a planner) the planner's."""
    net, _, corpus = evaluation.load_run(run_dir, runtime.resolve_device(device))
    with runtime.exact_float32():  # as eval.py: not TF32, should a training here allow it
        row = {"run": str(run_dir),
               "forced": plan_following(net, corpus, n_docs, forced=True)}
        # a truth weight needs the true label of sentences not yet written: no planned labels
        if net.planner is not None and not net.plans.truth_weight:
            row["planned"] = plan_following(net, corpus, n_docs)
    return row


def following_table(rows):
    cell = lambda f: (f"{f['rate']:.1%} of {f['sentences']} (chance {f['chance']:.1%})" if f
                      else "n/a: no planner")
    return "\n".join(["| run | planner's labels | random labels |", "|---|---|---|"] +
                      [f"| {evaluation.run_name(r['run'])} | {cell(r.get('planned'))} | "
                       f"{cell(r['forced'])} |" for r in rows])


if __name__ == "__main__":
    main()

"""
Figures of comparisons and sweeps made by compare.py (PNG, needs matplotlib, an optional
dependency).

    python figures.py out/compare-wiki assets     # <name>-val-loss.png and <name>-perplexity.png
    python figures.py out/compare-sweep assets    # a sweep folder (sweep.json): <name>-sweep.png

A comparison scored again with compare.py --eval-windows holds both: it gets the sweep's
figure too.

A comparison with --truth-weights also gets <name>-curve.png: how good a plan must be to pay.
"""

import argparse
import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from eval import EvalError, run_name
from model import GPTConfig
from runtime import checkpoint_path, load_checkpoint, one_line_errors, read_log


def sd(xs):
    """The standard deviation over seeds; 0 for one seed (no error bar)."""
    return np.std(xs, ddof=1) if len(xs) > 1 else 0


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvalError("figures need matplotlib, an optional dependency: pip install "
                        "matplotlib") from None
    return plt


def figures(comparison, out_dir):
    """Write <name>-val-loss.png and <name>-perplexity.png for a folder made by compare.py; -> their
    paths."""
    plt = pyplot()
    comparison, out_dir = Path(comparison), Path(out_dir)
    if not (comparison / "results.json").exists():
        raise EvalError(f"no results.json in {comparison}: give a folder made by compare.py")
    try:
        results = runs_under(json.loads((comparison / "results.json").read_text()), comparison)
        assert results["val"] and results["test"]
    except (ValueError, KeyError, TypeError, AssertionError):
        raise EvalError(f"{comparison / 'results.json'} holds no comparison (not JSON, or no val "
                        "and test results): run compare.py again to write it") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{comparison.name}-val-loss.png",
               out_dir / f"{comparison.name}-perplexity.png"]
    if results.get("curve"):
        written.append(out_dir / f"{comparison.name}-curve.png")
    for draw, path in zip((loss_curves, perplexity_bars, curve_figure), written):
        fig = draw(plt, results, comparison.name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return written


def curve_figure(plt, results, title):
    """The curve of plan quality: each point's plans' cross-entropy on the true labels (how much of
    the truth they carry; their top-1 saturates at once) against its val perplexity relative to
    fixed (mean ± std over seeds); below zero, plans pay."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = {}
    for p in results["curve"]:
        points.setdefault((p["weight"], p["name"]), []).append(p)
    for i, ((w, name), ps) in enumerate(sorted(points.items())):
        x = [p["plan_ce"] for p in ps]
        y = [100 * p["vs_fixed"] for p in ps if p["vs_fixed"] is not None]
        label = ("a label bigram (soft)" if w < 0 else "the planner (soft, frozen)" if w == 0
                 else "the oracle" if w == 1 else f"truth weight {w:g}")
        ax.errorbar(np.mean(x), np.mean(y), sd(y), xerr=sd(x), marker="os^vD<>"[i % 7], ms=7,
                    capsize=3, ls="none", label=label)
    ax.axhline(0, color="grey", lw=0.8)
    ax.invert_xaxis()  # better plans to the right
    ax.set(xlabel="plans' cross-entropy on the true labels, nats (val)",
           ylabel="val perplexity against fixed, same seed (%)",
           title=f"{title}: how good must a plan be? below 0, plans pay")
    ax.legend(fontsize=8)
    return fig


def runs_under(results, comparison):
    """compare.py's results with each run's path under the comparison folder, wherever it is now
    (compare.py writes them relative to it; an absolute path stays as it is)."""
    return {k: [dict(r, run=str(comparison / r["run"])) for r in v] if k in ("val", "test", "curve")
            else v for k, v in results.items()}


def sweep_figure(sweep_json, path):
    """For a sweep made by compare.py, against the swept setting: left, each finding (A against B
    of the same seed); right, each planned run's plan reliance; mean ± std over seeds. -> the path
    written."""
    plt = pyplot()
    try:
        sweep = json.loads(Path(sweep_json).read_text())
        whole = sweep_is_whole(sweep)
    except (ValueError, KeyError, TypeError):
        whole = False
    if not whole:  # not written whole by compare.py, or edited by hand
        raise EvalError(f"{sweep_json} holds no sweep's findings: run compare.py with the sweep "
                        "again to write it")
    return draw_sweep(plt, sweep, path)


def sweep_is_whole(sweep):
    """Whether a sweep.json holds all the drawing reads: per value, each seed's numbers."""
    values = np.array(sweep["values"], float)
    per_value = lambda rows: (len(rows) == len(values)
                              and all(np.array(r, float).ndim == 1 for r in rows))
    return (values.ndim == 1 and len(values) > 0 and isinstance(sweep["seeds"], str)
            and isinstance(sweep["swept"], str)
            and all(per_value(f["changes"]) and isinstance(f["a"] + f["b"], str)
                    for f in sweep["findings"])
            and all(per_value(x["rises"]) and isinstance(x["run"] + x["how"], str)
                    for x in sweep["reliance"]))


def draw_sweep(plt, sweep, path):
    values, findings, reliance = (np.array(sweep["values"], float), sweep["findings"],
                                  sweep["reliance"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    # side by side, so the error bars do not hide each other
    nudge = 0.006 * (values.max() - values.min() or 1)
    runs = list(dict.fromkeys(x["run"] for x in reliance))
    # one colour, one meaning: the findings (left) take the colours after the runs' (right)
    colour = {key: f"C{i}" for i, key in enumerate(runs + list(range(len(findings))))}
    for i, f in enumerate(findings):
        pct = [[100 * c for c in per_seed] for per_seed in f["changes"]]
        left.errorbar(values + nudge * (i - len(findings) / 2), [np.mean(c) for c in pct],
                      [sd(c) for c in pct], color=colour[i],
                      marker="o", ms=4, capsize=3, label=f"{f['a']} vs {f['b']}")
    # a ratio on a log axis: the oracle's plans can matter ten times more than a planner's, and
    # both must show
    for i, x in enumerate(reliance):
        ratio = [[1 + c for c in per_seed] for per_seed in x["rises"]]
        right.errorbar(values + nudge * (i - len(reliance) / 2), [np.mean(r) for r in ratio],
                       [sd(r) for r in ratio], marker="o", ms=4, capsize=3,
                       color=colour[x["run"]], ls="-" if x["how"] == "shuffled" else "--",
                       label=x["run"] if x["how"] == "shuffled" else None)
    left.set(ylabel="val perplexity of A against B, same seed (%)", title="the findings")
    left.axhline(0, color="grey", lw=0.8)
    right.set(yscale="log", ylabel="val perplexity with other plans / with its own",
              title="plan reliance: shuffled plans (solid), the mean plan (dashed)")
    right.axhline(1, color="grey", lw=0.8)
    plain_log_ticks(plt, right)
    ticks = [f"{v:g}" for v in values]
    # a window sweep: how much of the document so far each window leaves to the planner alone
    if "unseen" in sweep:
        ticks = [f"{t}\n{share:.0%} unseen" for t, (_, share) in zip(ticks, sweep["unseen"])]
    for ax in (left, right):
        if "unseen" in sweep:  # windows double: evenly spaced on a log axis
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
        ax.set(xticks=values, xticklabels=ticks, xlabel=sweep["swept"])
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"mean ± std over seeds {sweep['seeds']}" if "," in sweep["seeds"]
                 else f"seed {sweep['seeds']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plain_log_ticks(plt, ax):
    """Ticks a reader can read on a narrow log axis: 1.05, not 1.05 x 10^0."""
    ticker = plt.matplotlib.ticker
    # too narrow for a log axis' own ticks (1, 2, 3, ...)
    if np.divide(*ax.get_ylim()[::-1]) < 2:
        ax.yaxis.set_major_locator(ticker.MaxNLocator(6))
        ax.yaxis.set_minor_locator(ticker.NullLocator())  # labelled too, they would overlap
    plain = ticker.FuncFormatter(lambda y, _: f"{y:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


def loss_curves(plt, results, title):
    """Fine-tuning val loss of every run, mean over seeds, each from its seed's pretrained LM.

    Step 0 is the last record of the log of the LM the run started from (pretraining_log): with
    zero-initialised adapters every mode starts from exactly that loss.
    """
    fig, (pre, fine) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 2]})
    names, curves = list(dict.fromkeys(run_name(r["run"]) for r in results["val"])), {}
    for r in results["val"]:
        start = val_losses(pretraining_log(r["run"]))
        first = {0: list(start.values())[-1]} if start else {}
        curves.setdefault(run_name(r["run"]), []).append({**first,
                                                          **val_losses(read_log(r["run"]))})
        if start and run_name(r["run"]) == names[0]:
            pre.plot(list(start), list(start.values()), color="grey", lw=1)
    for name in names:
        # the steps every seed logged: a record lost in one seed's log leaves out that step only
        steps = sorted(set.intersection(*(set(log) for log in curves[name])))
        control = name in ("none", "fixed", "uniform", "oracle")
        fine.plot(steps, [np.mean([log[s] for log in curves[name]]) for s in steps], marker="o",
                  ms=3, label=name, ls="--" if control else "-")
    pre.set(title="pretraining the LM (each seed)", xlabel="step", ylabel="val loss (nats/token)")
    fine.set(title=f"{title}: fine-tuning, mean of {len(curves[names[0]])} seed(s)", xlabel="step")
    fine.legend(fontsize=8, ncol=2)
    return fig


def val_losses(log):
    """{step: val loss} of a log's records that have one (a hand-edited record may not)."""
    return {x["step"]: x["val_loss"] for x in log
            if isinstance(x.get("val_loss"), (int, float)) and isinstance(x["step"], int)}


def pretraining_log(run):
    """The log of the LM stage a run was fine-tuned from, [] if it is not found: the stage of the
    run's seed and model in its out-dir's pretrain/ or, in a label-count sweep, the sweep's."""
    run = Path(run)
    ck = load_checkpoint(checkpoint_path(run))
    for stage in [*(run.parent / "pretrain").glob("lm-*"),
                  *(run.parent.parent.parent / "pretrain").glob("lm-*")]:
        if stage_of(stage) == (ck["config"]["seed"], model_key(ck["model_args"])):
            return read_log(stage)
    return []


@lru_cache(maxsize=None)
def stage_of(stage):
    """(seed, model) of a pretrained LM stage."""
    ck = load_checkpoint(stage / "ckpt.pt")
    return ck["config"]["seed"], model_key(ck["model_args"])


def model_key(model_args):
    """The model's settings with every option, those saved before an option existed too (where the
    adapters start is set after pretraining)."""
    return json.dumps(dict(dataclasses.asdict(GPTConfig(**model_args)), adapter_from=0),
                      sort_keys=True)


def perplexity_bars(plt, results, title):
    """Val and test perplexity of every run, and its change against none of the same seed:
    mean ± std."""
    names = list(dict.fromkeys(run_name(r["run"]) for r in results["val"]))
    fig, (absolute, paired) = plt.subplots(1, 2, figsize=(11, 0.35 * len(names) + 1.4), sharey=True)
    for i, split in enumerate(("val", "test")):
        none = {r["seed"]: r["perplexity"] for r in results[split] if run_name(r["run"]) == "none"}
        runs = [[r for r in results[split] if run_name(r["run"]) == name] for name in names]
        change = [[100 * (r["perplexity"] / none[r["seed"]] - 1) for r in rs if r["seed"] in none]
                  for rs in runs]
        for ax, values in ((absolute, [[r["perplexity"] for r in rs] for rs in runs]),
                           (paired, change)):
            std = [sd(v) for v in values]
            ax.barh(np.arange(len(names)) + 0.2 * (2 * i - 1),
                    [np.mean(v) if v else 0 for v in values], 0.4,
                    xerr=std, capsize=2, label=split, color=f"C{i}")
    absolute.set_yticks(np.arange(len(names)), names)
    absolute.invert_yaxis()
    low = min(r["perplexity"] for split in ("val", "test") for r in results[split])
    # the differences are a few percent: start the axis near them
    absolute.set_xlim(left=0.95 * low)
    seeds = len(runs[0])
    absolute.set(title=title, xlabel=f"perplexity (mean ± std over {seeds} seed(s))")
    paired.set(title="paired by seed", xlabel="change against none of the same seed (%)")
    paired.axvline(0, color="black", lw=0.8)
    absolute.legend(fontsize=8)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("comparison",
                   help="a folder made by compare.py (results.json, or sweep.json for a sweep)")
    p.add_argument("out_dir", help="where the PNG files go")
    args = p.parse_args(argv)
    with one_line_errors(EvalError):
        comparison = Path(args.comparison)
        sweep = comparison / "sweep.json"
        written = ([] if sweep.exists() and not (comparison / "results.json").exists()
                   else figures(comparison, args.out_dir))
        if sweep.exists():  # with results.json too: finished runs scored in other windows
            written.append(sweep_figure(sweep, Path(args.out_dir) / f"{comparison.name}-sweep.png"))
        print(*written, sep="\n")


if __name__ == "__main__":
    main()

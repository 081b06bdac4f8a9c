"""Tests for compare.py: one tiny seed of the whole comparison, then a rerun that must redo nothing;
a sweep."""
import argparse
import json
import types

import numpy as np
import pytest

import compare
import data
import eval as evaluation
import figures
import runtime
import train

FAST = ["--dataset", "synthetic", "--seeds", "0", "--sample-docs", "1", "--synthetic-docs", "200",
        "--n-labels", "8", "--embed-dim", "16", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
        "--block-size", "32", "--batch-size", "4", "--lm-iters", "10", "--planner-iters", "10",
        "--finetune-iters", "6", "--eval-interval", "3", "--eval-iters", "1", "--warmup-iters", "2",
        "--device", "cpu"]


def test_compare_runs_every_mode_then_reuses_everything(tmp_path, monkeypatch, capsys):
    argv = FAST + ["--out-dir", str(tmp_path / "cmp"), "--data-dir", str(tmp_path / "data")]
    compare.main(argv)
    # 9 runs; each evaluated on val and test, the 6 that take labels twice more with other plans,
    # and sampled
    assert "made by this invocation, in wall time: 9 training runs" in capsys.readouterr().out
    assert compare.SPENT.keys() == {"training runs", "evaluations", "samplings"}
    # ... and the plans' quality of the curve's ends, soft-frozen and the oracle
    assert [count for _, count in compare.SPENT.values()] == [9, 9 + 9 + 6 * 2 + 2, 6]
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    names = [evaluation.run_name(r["run"]) for r in results["val"]]
    assert names == ["none", "fixed", "uniform", "oracle", "hard-frozen", "st-joint", "soft-frozen",
                     "soft-joint", "gumbel-joint"]
    assert all(r["split"] == split for split in ("val", "test") for r in results[split])
    following = {evaluation.run_name(r["run"]): r for r in results["following"]}
    assert list(following) == names[3:]  # the runs that take a label
    assert ("planned" not in following["oracle"]
            and following["soft-joint"]["planned"]["sentences"] == 8)
    assert all(r["forced"]["sentences"] == 8 and r["forced"]["chance"] == 1 / 8
               for r in following.values())
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert ("synthetic, val split" in md and "synthetic, test split" in md
            and "| oracle | n/a: no planner |" in md)
    ppl = {r["run"].rsplit("/", 1)[-1]: r["perplexity"] for r in results["val"]}
    assert ("| soft (joint) beats hard | soft-joint vs hard-frozen | "
            f"{ppl['soft-joint'] / ppl['hard-frozen'] - 1:+.2%} |" in md)
    assert "Label baselines (top-1 / top-5): the most frequent label" in md
    reliance = {evaluation.run_name(r["run"]) for r in results["reliance"]}
    # their plans are constant: nothing to swap
    assert reliance == set(names) - {"none", "fixed", "uniform"}
    assert "| oracle | +" in md  # the oracle's perplexity rises without its plans
    assert ((tmp_path / "cmp" / "cmp-val-loss.png").exists()
            and (tmp_path / "cmp" / "cmp-perplexity.png").exists())

    def redone(*a, **k):
        raise AssertionError("a finished run, evaluation or sampling was redone")
    assert figures.pretraining_log(tmp_path / "cmp" / "seed0" / "none") == runtime.read_log(
        next((tmp_path / "cmp" / "seed0" / "pretrain").glob("lm-*")))
    for module, name in ((train, "main"), (evaluation, "evaluate"), (compare, "plan_following")):
        monkeypatch.setattr(module, name, redone)
    compare.main(argv)
    assert (tmp_path / "cmp" / "results.md").read_text() == md
    # moved, it is the same comparison: nothing redone, every path under its new place
    (tmp_path / "cmp").rename(tmp_path / "moved")
    compare.main(argv[:argv.index("--out-dir")] + ["--out-dir", str(tmp_path / "moved"),
                                                   "--data-dir", str(tmp_path / "data")])
    assert (tmp_path / "moved" / "results.md").read_text() == md
    moved = json.loads((tmp_path / "moved" / "results.json").read_text())
    assert [r["run"] for r in moved["val"]] == [f"seed0/{name}" for name in names]
    assert figures.figures(tmp_path / "moved", tmp_path / "figs")
    assert ("nothing to make: every run, evaluation and sample was there already"
            in capsys.readouterr().out)
    # other flags in the same folder: its finished runs are not the comparison asked for
    moved = argv[:argv.index("--out-dir")] + ["--out-dir", str(tmp_path / "moved"),
                                              "--data-dir", str(tmp_path / "data")]
    for other, message in ((["--finetune-lr", "0.01"], "--finetune-lr 0.001, not --finetune-lr "
                                                        "0.01: give this comparison another "
                                                        "--out-dir"),
                           (["--embedder", "lm"], "made with --embedder tfidf, not --embedder "
                                                  "lm")):
        with pytest.raises(SystemExit, match=message):
            compare.main(moved + other)
    # the corpus changed under its name since: its finished runs are not set beside new ones
    monkeypatch.setattr(data, "load", lambda *a, **k: types.SimpleNamespace(
        identity=lambda labels: {"tokens": "0123456789abcdef"}))
    with pytest.raises(SystemExit, match="seed0/none is a finished run trained on other text than "
                                         "--dataset synthetic gives now"):
        compare.main(moved + ["--seeds", "0,1"])


@pytest.mark.parametrize("flags, message", [
    (["--run", "foo"], "--run: compare.py names, seeds and resumes every run itself"),
    (["--xyz", "3"], "--xyz: neither compare.py's flag nor train.py's"),
    (["--overwrite"], "--overwrite: compare.py names"),
    (["--seed", "5"], "--seed: compare.py names"),
    (["--sample-docs", "-1"], "--sample-docs must be 0 or more, got -1"),
    (["--out-dir", ""], "--out-dir is empty"),
    (["--dataset", "wiki", "--ambiguities", "0,0.5"], "--ambiguities shapes the synthetic corpus"),
    (["--runs", "fixed,oracle,soft-frozen", "--truth-weights", "0.5,0.50"],
     "--truth-weights 0.5,0.50: give weights between 0 and 1, each once"),
])
def test_flags_that_would_compare_nothing_are_refused_before_training(flags, message, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(train, "main", lambda argv: pytest.fail("trained"))
    with pytest.raises(SystemExit, match=message):
        compare.main(FAST + ["--out-dir", str(tmp_path)] + flags)


def test_a_default_left_out_is_compared_as_train_py_fills_it():
    """A folder trained with --dropout 0.1, its comparison run again without the flag: the runs
    were not made with the CPU's default dropout, so they are not reused."""
    saved = vars(train.get_args(["--device", "cpu", "--dropout", "0.1"]))
    assert compare.made_otherwise(saved, ["--device", "cpu"]) == [("--dropout", 0.1, 0.0)]
    assert compare.made_otherwise(saved, ["--device", "cpu", "--dropout", "0.1"]) == []
    # made on a GPU, whose defaults follow from the corpus: not compared with the CPU's
    assert compare.made_otherwise(dict(saved, device="cuda:0"), ["--device", "cpu"]) == []


def test_a_run_cut_short_continues_from_its_checkpoint(tmp_path, monkeypatch):
    calls = []

    class Evaluated(Exception):
        pass

    def evaluated(*a, **k):
        raise Evaluated
    out = tmp_path / "cmp"
    (out / "seed0" / "fixed").mkdir(parents=True)
    (out / "seed0" / "fixed" / "ckpt.pt").write_bytes(b"")  # cut short: a checkpoint, not done
    monkeypatch.setattr(compare, "done", lambda run_dir, argv: False)
    monkeypatch.setattr(train, "main", lambda argv: calls.append(argv))
    monkeypatch.setattr(evaluation, "evaluate", evaluated)
    with pytest.raises(Evaluated):
        compare.main(FAST + ["--out-dir", str(out), "--runs", "none,fixed"])
    assert ["--resume" in argv for argv in calls] == [False, True]


def test_a_sweep_compares_at_each_value_and_sums_up_the_findings(tmp_path):
    argv = FAST + ["--out-dir", str(tmp_path / "sw"), "--data-dir", str(tmp_path / "data"),
                   "--seeds", "0,1", "--sample-docs", "0", "--ambiguities", "0,0.5",
                   "--runs", "none,hard-frozen,soft-joint"]
    compare.main(argv)
    for a in ("a0", "a0.5"):
        results = json.loads((tmp_path / "sw" / a / "results.json").read_text())
        assert ([evaluation.run_name(r["run"]) for r in results["val"]]
                == ["none", "hard-frozen", "soft-joint"] * 2)
        ck = runtime.load_checkpoint(tmp_path / "sw" / a / "seed1" / "soft-joint" / "ckpt.pt")
        assert ck["config"]["synthetic_ambiguity"] == float(a[1:]) and ck["config"]["seed"] == 1
    sweep = (tmp_path / "sw" / "sweep.md").read_text()
    changes = compare.paired_changes(
        json.loads((tmp_path / "sw" / "a0.5" / "results.json").read_text())["val"],
        "soft-joint", "hard-frozen")
    assert "| finding | A vs B | ambiguity a = 0 | ambiguity a = 0.5 |" in sweep
    assert ("| soft (joint) beats hard | soft-joint vs hard-frozen | " in sweep
            and compare.claim_cell(changes, "beats") in sweep)
    assert "ST is not better" not in sweep  # no st-joint run: no row
    assert "| plan reliance: the split's mean plan | soft-joint |" in sweep
    assert "| plan reliance: another sentence's plan | hard-frozen |" in sweep
    figure_data = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert figure_data["values"] == [0, 0.5] and figure_data["findings"][0]["changes"][1] == changes
    assert [(x["run"], x["how"]) for x in figure_data["reliance"]] == [
        ("hard-frozen", "shuffled"), ("hard-frozen", "mean"), ("soft-joint", "shuffled"),
        ("soft-joint", "mean")]
    assert (tmp_path / "sw" / "sw-sweep.png").exists()
    with pytest.raises(evaluation.EvalError, match="holds no sweep"):
        figures.sweep_figure(tmp_path / "sw" / "a0" / "results.json", tmp_path / "x.png")
    for edit in ({"values": []}, {"seeds": 0},
                 {"findings": [{k: v for k, v in figure_data["findings"][0].items()
                                if k != "changes"}]}):
        (tmp_path / "edited.json").write_text(json.dumps({**figure_data, **edit}))
        with pytest.raises(evaluation.EvalError, match="holds no sweep"):
            figures.sweep_figure(tmp_path / "edited.json", tmp_path / "x.png")
    # RESULTS.md's summary: the sweep's settings and a comparison given on its own, one row each
    compare.main(["--holds", f"{tmp_path / 'sw'},{tmp_path / 'sw' / 'a0.5'}",
                  "--out-dir", str(tmp_path / "holds")])
    holds = (tmp_path / "holds" / "holds.md").read_text()
    cell = compare.claim_cell(changes, "beats")
    assert f"| {tmp_path / 'sw'}: ambiguity a = 0.5 | 2 | {cell} |" in holds
    assert (f"| {tmp_path / 'sw' / 'a0.5'} | 2 | {cell} |" in holds
            and "ST is not better" not in holds)
    with pytest.raises(SystemExit, match="nothing.results.json is no finished comparison"):
        compare.main(["--holds", str(tmp_path / "nothing")])


def test_a_window_sweep_says_how_much_of_the_document_each_window_hides(tmp_path):
    out = tmp_path / "win"
    compare.main(FAST + ["--out-dir", str(out), "--data-dir", str(tmp_path / "data"),
                         "--sample-docs", "0", "--block-sizes", "8,32", "--runs", "fixed,oracle"])
    sweep = json.loads((out / "sweep.json").read_text())
    _, _, corpus = evaluation.load_run(out / "block8" / "seed0" / "oracle")
    unseen = [list(compare.unseen_document(corpus.splits["val"], b)) for b in (8, 32)]
    # the smaller window hides more
    assert sweep["unseen"] == unseen and unseen[0][1] > unseen[1][1] > 0
    cells = " | ".join(f"{cut:.0%} / {share:.0%}" for cut, share in unseen)
    assert f"share of their document so far (seed 0) | {cells} |" in (out / "sweep.md").read_text()
    assert (out / "win-sweep.png").exists()
    # the 32-token runs scored again in 8- and 32-token windows: nothing trained, the same LMs
    # shown less
    compare.main(FAST + ["--out-dir", str(out / "block32"), "--data-dir", str(tmp_path / "data"),
                         "--sample-docs", "0", "--eval-windows", "8,32", "--runs", "fixed,oracle"])
    rescored = json.loads((out / "block32" / "sweep.json").read_text())
    assert rescored["swept"] == "scoring window (tokens)" and rescored["unseen"] == unseen
    own = json.loads((out / "block32" / "results.json").read_text())["val"]
    assert ([r["perplexity"] for r in rescored["reports"][1][1]["val"]]
            == [r["perplexity"] for r in own])
    assert [r["window"] for r in rescored["reports"][0][1]["val"]] == [8, 8]
    assert ("| plan reliance: another sentence's plan | oracle |"
            in (out / "block32" / "sweep.md").read_text())
    figures.main([str(out / "block32"), str(tmp_path / "figs")])  # the comparison's and the sweep's
    assert {f.name for f in (tmp_path / "figs").iterdir()} == {
        "block32-val-loss.png", "block32-perplexity.png", "block32-sweep.png"}
    # one window alone: its table too
    compare.main(FAST + ["--out-dir", str(out / "block32"), "--data-dir", str(tmp_path / "data"),
                         "--sample-docs", "0", "--eval-windows", "8", "--runs", "fixed,oracle"])
    assert json.loads((out / "block32" / "sweep.json").read_text())["values"] == [8]


def test_the_t_interval_and_the_verdicts():
    changes = [0.01, 0.02, 0.03]  # mean 0.02, std 0.01: half-width t_0.975(2) * 0.01 / sqrt 3
    lo, hi = compare.interval(changes)
    assert (np.isclose(lo, 0.02 - 4.303 * 0.01 / np.sqrt(3))
            and np.isclose(hi, 0.02 + 4.303 * 0.01 / np.sqrt(3)))
    assert compare.verdict(changes, "beats") == "not distinguishable"
    assert compare.verdict([-0.03, -0.02, -0.025], "beats") == "holds"
    assert compare.verdict([0.03, 0.02, 0.025], "beats") == "reversed"
    assert compare.verdict([-0.03, -0.02, -0.025], "not better") == "does not hold: A is better"
    assert compare.verdict([0.03, 0.02, 0.025], "not better") == "holds: A is worse"
    assert (compare.verdict([0.01], "beats") == "one seed: no verdict"
            and compare.interval([0.01]) is None)


def _settings(*argv):
    p = argparse.Namespace(runs="none", ambiguities=None, block_sizes=None, label_counts=None,
                           eval_windows=None, device="cpu")
    for flag, value in zip(argv[::2], argv[1::2]):
        setattr(p, flag, value)
    return p


def test_block_sizes_keep_the_tokens_per_step():
    settings = compare.sweep_settings(_settings("block_sizes", "32,64,128"),
                                      ["--batch-size", "8", "--block-size", "64"], "out")
    assert [(name, flags) for name, _, flags in settings] == [
        ("block32", ["--block-size", "32", "--batch-size", "16"]),
        ("block64", ["--block-size", "64", "--batch-size", "8"]),
        ("block128", ["--block-size", "128", "--batch-size", "4"])]
    assert (compare.sweep_settings(_settings("block_sizes", "64"), [], "out")[0][2]
            == ["--block-size", "64", "--batch-size", "32"])
    with pytest.raises(train.TrainError, match="must divide by every window"):
        compare.sweep_settings(_settings("block_sizes", "48"), [], "out")
    with pytest.raises(train.TrainError, match="unknown run soft"):
        compare.sweep_settings(_settings("runs", "none,soft"), [], "out")


def test_a_seed_given_twice_is_refused():
    with pytest.raises(SystemExit, match="--seeds 0,0: give each seed once"):
        compare.main(FAST[:2] + ["--seeds", "0,0"])
    with pytest.raises(SystemExit, match="--seeds 0,00: give each seed once"):
        compare.main(FAST[:2] + ["--seeds", "0,00"])


@pytest.mark.parametrize("flag, value, message", [
    ("ambiguities", "x", "--ambiguities x: give ambiguities from 0 to 1"),
    ("ambiguities", "0.5,1.5", "--ambiguities 0.5,1.5: give ambiguities from 0 to 1"),
    ("block_sizes", "0", "--block-sizes 0: give windows of at least 1 token"),
    ("block_sizes", "8,x", "--block-sizes 8,x: give windows"),
    ("eval_windows", "x", "--eval-windows x: give windows of at least 1 token"),
    ("eval_windows", "-3", "--eval-windows -3: give windows"),
    ("eval_windows", "0", "--eval-windows 0: give windows"),
    ("label_counts", "8,8", "--label-counts 8,8: give label counts of at least 2 .*, each once"),
])
def test_a_sweep_list_is_checked_before_anything_trains(flag, value, message):
    with pytest.raises(train.TrainError, match=message):
        compare.sweep_settings(_settings(flag, value), [], "out")


def test_eval_windows_above_the_block_are_refused_before_anything_trains():
    with pytest.raises(train.TrainError, match="train on windows of 32 tokens .*at most 32"):
        compare.sweep_settings(_settings("eval_windows", "8,64"), [], "out")  # the CPU's block
    assert compare.sweep_settings(_settings("eval_windows", "8,64"), ["--block-size", "64"],
                                  "out") == [("", None, [])]


def test_a_cut_evaluation_cache_is_computed_again(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"")
    (tmp_path / "eval-val.json").write_text('{"perplexity": 1')  # newer than the checkpoint, cut
    assert compare.cached(tmp_path, "eval-val.json", lambda: {"perplexity": 2.0}) == {
        "perplexity": 2.0}
    assert json.loads((tmp_path / "eval-val.json").read_text()) == {"perplexity": 2.0}
    assert compare.cached(tmp_path, "eval-val.json", lambda: 1 / 0) == {"perplexity": 2.0}


def test_the_curve_from_the_planner_to_the_truth(tmp_path):
    """--truth-weights adds soft-frozen runs with the truth mixed in; the curve gives each weight
    its plans' quality (w = 0: the planner's own top-1; w = 0.5: the true label always on top;
    w = 1, the oracle: 1 and 0 nats) and its change against fixed."""
    out = tmp_path / "cmp"
    report = compare.main(FAST + ["--out-dir", str(out), "--data-dir", str(tmp_path / "data"),
                                  "--runs", "fixed,oracle,soft-frozen,soft-bigram",
                                  "--truth-weights", "0.5"])
    points = {p["name"]: p for p in json.loads((out / "results.json").read_text())["curve"]}
    assert list(points) == ["soft-bigram", "soft-frozen", "soft-frozen-truth0.5", "oracle"]
    val = {evaluation.run_name(r["run"]): r for r in json.loads(
        (out / "results.json").read_text())["val"]}
    assert points["soft-frozen"]["plan_top1"] == pytest.approx(val["soft-frozen"]["planner_top1"])
    assert points["soft-bigram"]["plan_top1"] == pytest.approx(val["fixed"]["bigram_top1"])
    assert points["soft-bigram"]["plan_ce"] == pytest.approx(val["fixed"]["bigram_ce"], rel=1e-4)
    assert points["soft-frozen-truth0.5"]["plan_top1"] == 1.0
    assert 0 < points["soft-frozen-truth0.5"]["plan_ce"] < np.log(2)
    assert (points["oracle"]["plan_top1"], points["oracle"]["plan_ce"]) == (1.0, 0.0)
    for name, p in points.items():
        assert p["vs_fixed"] == pytest.approx(val[name]["perplexity"]
                                              / val["fixed"]["perplexity"] - 1)
    md = (out / "results.md").read_text()
    assert "| 0.5 | soft-frozen-truth0.5 | 1.000 |" in md and "a label bigram fitted on train" in md
    assert "| - (a label bigram) | soft-bigram |" in md
    assert (out / "cmp-curve.png").exists()
    assert report is None or isinstance(report, dict)


def test_a_label_count_sweep_shares_one_lm_a_seed_and_tables_how_predictable_labels_are(tmp_path):
    argv = FAST + ["--out-dir", str(tmp_path / "k"), "--data-dir", str(tmp_path / "data"),
                   "--sample-docs", "0", "--label-counts", "4,8",
                   "--runs", "fixed,oracle,soft-frozen"]
    compare.main(argv)
    pretrained = sorted(p.name.split("-")[0] for p in (tmp_path / "k" / "pretrain").iterdir())
    assert pretrained == ["lm", "planner", "planner"]  # one LM, a planner per K
    lm_log = runtime.read_log(next((tmp_path / "k" / "pretrain").glob("lm-*")))
    assert figures.pretraining_log(tmp_path / "k" / "k4" / "seed0" / "fixed") == lm_log
    sweep = (tmp_path / "k" / "sweep.md").read_text()
    assert "| finding | A vs B | labels K = 4 | labels K = 8 |" in sweep
    cells = []
    for k in (4, 8):
        ck = runtime.load_checkpoint(tmp_path / "k" / f"k{k}" / "seed0" / "oracle" / "ckpt.pt")
        assert ck["config"]["n_labels"] == k and ck["plans"]["codebook"].shape[0] == k
        results = json.loads((tmp_path / "k" / f"k{k}" / "results.json").read_text())
        planner, = (p for p in results["curve"] if p["name"] == "soft-frozen")
        cells.append(f"{planner['plan_top1']:.3f} / {planner['plan_ce']:.3f}")
    assert ("| the next sentence's label: the planner's plans | top-1 / cross-entropy (nats), val "
            f"| {cells[0]} | {cells[1]} |") in sweep
    assert "| the next sentence's label: a label bigram |" in sweep
    with pytest.raises(SystemExit, match="--label-counts 4,x: give label counts of at least 2"):
        compare.main(argv[:-4] + ["--label-counts", "4,x"])

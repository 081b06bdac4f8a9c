"""Tests for compare.py: one tiny seed of the whole comparison, then a rerun that must redo nothing."""
import json

import compare
import eval as evaluation
import train

FAST = ["--dataset", "synthetic", "--seeds", "0", "--sample-docs", "1", "--synthetic-docs", "200",
        "--n-labels", "8", "--embed-dim", "16", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
        "--block-size", "32", "--batch-size", "4", "--lm-iters", "10", "--planner-iters", "10",
        "--finetune-iters", "6", "--eval-interval", "3", "--eval-iters", "1", "--warmup-iters", "2",
        "--device", "cpu"]


def test_compare_runs_every_mode_then_reuses_everything(tmp_path, monkeypatch):
    argv = FAST + ["--out-dir", str(tmp_path / "cmp"), "--data-dir", str(tmp_path / "data")]
    compare.main(argv)
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    names = [evaluation.run_name(r["run"]) for r in results["val"]]
    assert names == ["none", "fixed", "uniform", "oracle", "hard-frozen", "st-joint", "soft-frozen", "soft-joint",
                     "gumbel-joint"]
    assert all(r["split"] == split for split in ("val", "test") for r in results[split])
    following = {evaluation.run_name(r["run"]): r for r in results["following"]}
    assert list(following) == names[3:]  # the runs that take a label
    assert "planned" not in following["oracle"] and following["soft-joint"]["planned"]["sentences"] == 8
    assert all(r["forced"]["sentences"] == 8 and r["forced"]["chance"] == 1 / 8 for r in following.values())
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert "synthetic, val split" in md and "synthetic, test split" in md and "| oracle | n/a: no planner |" in md
    ppl = {r["run"].rsplit("/", 1)[-1]: r["perplexity"] for r in results["val"]}
    assert f"| soft (joint) beats hard | soft-joint vs hard-frozen | {ppl['soft-joint'] / ppl['hard-frozen'] - 1:+.2%} |" in md
    assert "Label baselines (top-1 / top-5): the most frequent label" in md
    reliance = {evaluation.run_name(r["run"]) for r in results["reliance"]}
    assert reliance == set(names) - {"none"} and "| oracle | +" in md  # the oracle's perplexity rises without its plans
    assert (tmp_path / "cmp" / "cmp-val-loss.png").exists() and (tmp_path / "cmp" / "cmp-perplexity.png").exists()

    def redone(*a, **k):
        raise AssertionError("a finished run, evaluation or sampling was redone")
    for module, name in ((train, "main"), (evaluation, "evaluate"), (evaluation, "plan_following")):
        monkeypatch.setattr(module, name, redone)
    compare.main(argv)
    assert (tmp_path / "cmp" / "results.md").read_text() == md

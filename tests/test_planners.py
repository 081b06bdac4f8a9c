"""Tests for planners.py: the planner alone under several settings, tabled against a label bigram;
a rerun trains nothing."""
import json

import pytest

import planners
import train

FAST = ["--dataset", "synthetic", "--seeds", "0", "--synthetic-docs", "200", "--n-labels", "8",
        "--embed-dim", "16", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
        "--block-size", "32", "--batch-size", "4", "--lm-iters", "10", "--planner-iters", "10",
        "--eval-interval", "5", "--eval-iters", "1", "--warmup-iters", "2", "--device", "cpu"]


def test_planner_options_are_tabled_against_the_bigram_then_reused(tmp_path, monkeypatch):
    argv = FAST + ["--out-dir", str(tmp_path / "p"), "--data-dir", str(tmp_path / "data"),
                   "--options", "", "--planner-embd 32 --planner-iters 20", "--n-labels 4"]
    planners.main(argv)
    rows = json.loads((tmp_path / "p" / "planners.json").read_text())
    assert [r["option"] for r in rows] == ["", "--planner-embd 32 --planner-iters 20",
                                           "--n-labels 4"]
    assert [r["runs"][0]["k"] for r in rows] == [8, 8, 4]
    pretrained = sorted(p.name.split("-")[0] for p in (tmp_path / "p" / "pretrain").iterdir())
    assert pretrained == ["planner"] * 3  # no LM: only --embedder lm needs one
    table = (tmp_path / "p" / "planners.md").read_text()
    for r in rows:
        m = r["runs"][0]
        assert 0 <= m["top1"] <= m["top5"] <= 1 and m["ce"] > 0
        assert (f"| {r['option'] or '(default)'} | {m['k']} | {m['top1']:.3f} / {m['top5']:.3f} "
                f"/ {m['ce']:.3f} | {m['bigram_top1']:.3f} / {m['bigram_top5']:.3f} / "
                f"{m['bigram_ce']:.3f} | {1 / m['k']:.3f} / ") in table
        assert f"| {m['bigram_ce'] - m['ce']:+.3f} |" in table  # one seed: no interval

    def trained_again(*a, **k):
        raise AssertionError("a finished planner was trained again")
    monkeypatch.setattr(train, "train", trained_again)
    planners.main(argv)
    assert json.loads((tmp_path / "p" / "planners.json").read_text()) == rows
    with pytest.raises(SystemExit, match="--seeds 0,0: give each seed once"):
        planners.main(argv[:2] + ["--seeds", "0,0"] + argv[4:])
    with pytest.raises(SystemExit, match="--options \"--n-labels 4 '\": No closing quotation"):
        planners.main(argv + ["--options", "--n-labels 4 '"])

"""Tests for tune.py: the one-decision-at-a-time search, on a tiny synthetic setting, then a rerun
that redoes nothing."""
import json
import shutil
import types

import pytest

import data
import eval as evaluation
import runtime
import train
import tune
from test_compare import FAST


def test_the_search_keeps_tokens_per_step_and_picks_by_val_perplexity(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "WINDOWS", (16, 32))
    monkeypatch.setattr(tune, "LRS", (1e-3, 3e-3))
    monkeypatch.setattr(tune, "LM_SHARES", (0.5, 0.625))
    monkeypatch.setattr(tune, "CONFIRM_SEEDS", (1,))
    pairs = [FAST[i:i + 2] for i in range(0, len(FAST), 2)]
    # tokens a step: 4 x 32
    flags = [f for pair in pairs if pair[0] not in ("--seeds", "--sample-docs") for f in pair]
    argv = flags + ["--out-dir", str(tmp_path / "tune"), "--data-dir", str(tmp_path / "data")]
    real_run, calls = tune.run, []

    def stopped_after_two(*a):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(a)
        return real_run(*a)
    monkeypatch.setattr(tune, "run", stopped_after_two)
    with pytest.raises(SystemExit, match="interrupted; what is finished is kept: run the same "
                                         "tune.py command to go on"):
        tune.main(argv)
    # what a stopped search leaves: its table so far
    partial = (tmp_path / "tune" / "results.md").read_text()
    assert partial.count("| 1. window |") == 2 and "best on seed 0" not in partial
    monkeypatch.setattr(tune, "run", real_run)
    real_train, trained = train.main, []
    monkeypatch.setattr(train, "main", lambda argv: trained.append(argv) or real_train(argv))
    # continues where it stopped: 7 runs in all, the 2 finished ones not trained again
    tune.main(argv)
    assert len(trained) == 5
    md = (tmp_path / "tune" / "results.md").read_text()
    runs = sorted((tmp_path / "tune").glob("*/seed*/soft-joint"))
    # window 16 and 32 (lr 2e-3, 10 of 16 steps pretraining); lr 1e-3 and 3e-3 at the better window;
    # 8 and 10 pretraining steps at the better of those; the best two again on seed 1
    assert (len({r.parent.parent.name for r in runs}) == 5
            and sum(r.parent.name == "seed1" for r in runs) == 2)
    ppl = {}
    for run in runs:
        ck = runtime.load_checkpoint(run / "ckpt.pt")["config"]
        assert (ck["batch_size"] * ck["block_size"] == 128
                and ck["lm_iters"] + ck["finetune_iters"] == 16)
        assert ck["finetune_lr"] == ck["lr"] / 2 and ck["mode"] == "soft"
        if run.parent.name == "seed0":
            ppl[run.parent.parent.name] = json.loads(
                (run / "eval-val.json").read_text())["perplexity"]
    assert md.count("| confirm |") == 2 and md.count("| 1. window |") == 2
    assert f"- best on seed 0: {min(ppl, key=ppl.get)};" in md

    def redone(*a, **k):
        raise AssertionError("a finished run or evaluation was redone")
    monkeypatch.setattr(train, "main", redone)
    monkeypatch.setattr(evaluation, "evaluate", redone)
    # the corpus changed under its name since: a rerun that trains nothing still prints its table
    monkeypatch.setattr(data, "load", lambda *a, **k: types.SimpleNamespace(
        identity=lambda labels: {"tokens": "0123456789abcdef"}))
    tune.main(argv)
    assert (tmp_path / "tune" / "results.md").read_text() == md
    # but no setting is trained beside finished ones that read other text
    shutil.rmtree(next(r for r in runs if r.parent.name == "seed1").parent)  # one met last
    with pytest.raises(SystemExit, match="seed0/soft-joint is a finished run trained on other "
                                         "text than --dataset synthetic gives now"):
        tune.main(argv)
    # other flags in the same folder: its finished runs are not reused
    with pytest.raises(SystemExit,
                       match="is a finished run made with --n-embd 16, not --n-embd 32"):
        tune.main([f if f != "16" or argv[i - 1] != "--n-embd" else "32"
                   for i, f in enumerate(argv)])

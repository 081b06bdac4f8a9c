"""demo.py: the ambiguity testbed's comparison, shrunk to seconds, with what it means."""
import pytest

import demo
import train

SMALL = ["--synthetic-docs", "200", "--n-labels", "8", "--embed-dim", "16", "--n-layer", "1",
         "--n-embd", "16", "--n-head", "2", "--block-size", "32", "--batch-size", "4",
         "--lm-iters", "10", "--planner-iters", "10", "--finetune-iters", "6",
         "--eval-interval", "3", "--eval-iters", "1", "--warmup-iters", "2", "--device", "cpu"]


def test_the_demo_says_what_each_finding_means(tmp_path, capsys):
    demo.main(SMALL + ["--seeds", "0,1", "--out-dir", str(tmp_path / "demo"),
                       "--data-dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    meaning = out[out.index("What it means"):].splitlines()
    assert "95% interval over 2 seeds" in meaning[0]
    for line, (a, b, claim, _) in zip(meaning[1:], demo.READINGS):
        assert line.startswith(f"- {claim}: {a} vs {b} ") and "%" in line


@pytest.mark.parametrize("flags, named", [(["--runs", "none"], "--runs"),
                                          (["--dataset", "wiki"], "--dataset"),
                                          (["--synthetic-ambiguity=0.25"], "--synthetic-ambiguity"),
                                          (["--synthetic-a", "0.25"], "--synthetic-ambiguity")])
def test_the_demo_setting_is_not_changed_by_a_flag(flags, named, tmp_path):
    with pytest.raises(SystemExit, match=f"error: {named}: demo.py is one fixed comparison"):
        demo.main(flags + ["--out-dir", str(tmp_path)])


def test_an_interrupted_demo_says_to_run_the_demo_again(tmp_path, monkeypatch):
    def interrupted(argv):
        raise SystemExit("error: interrupted after step 3 of lm: saved x; continue with the same "
                         "command")
    monkeypatch.setattr(train, "main", interrupted)
    with pytest.raises(SystemExit, match="run the same demo.py command to go on"):
        demo.main(SMALL + ["--seeds", "0", "--out-dir", str(tmp_path / "demo"),
                           "--data-dir", str(tmp_path / "data")])

"""Hostile but fair input and faults: one clear line, nothing lost, nothing half-done, no code
from a file."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import bench
import compare
import corpora
import data
import eval as evaluation
import explore
import figures
import mix
import planners
import runtime
import sample as sampling
import train
import tune
from conftest import TINY

def one_line_error(call):
    with pytest.raises(SystemExit) as e:
        call()
    message = str(e.value.code)
    assert (message.startswith("error: ") and "\n" not in message
            and "Traceback" not in message), message
    return message


# ------------------------------------------------------------------- every flag's range, as a table

def bad_values(parser, table):
    """(flag, value) for every numeric flag of the table and every candidate value its range
    refuses."""
    types = {a.dest: a.type for a in parser._actions}
    for names, ok, _ in table:
        for name in filter(types.__contains__, names):  # the command's own flags
            for raw in ("-1", "0", "0.5", "1.5", "nan", "inf", str(2**32)):
                try:
                    value = types[name](raw)
                except ValueError:
                    continue  # argparse refuses it before our check
                if not ok(value):
                    yield "--" + name.replace("_", "-"), raw


@pytest.mark.parametrize("flag, value", list(bad_values(train.make_parser(), runtime.FLAG_RANGES)))
def test_train_flag_out_of_range_is_one_line(flag, value):
    assert flag in one_line_error(lambda: train.main([flag, value, "--device", "cpu"]))


@pytest.mark.parametrize("flag, value",
                         list(bad_values(evaluation.make_parser(), evaluation.FLAG_RANGES)))
def test_eval_flag_out_of_range_is_one_line(flag, value):
    assert flag in one_line_error(lambda: evaluation.main(["out/none", flag, value]))


@pytest.mark.parametrize("flag, value",
                         list(bad_values(sampling.make_parser(), sampling.FLAG_RANGES)))
def test_sample_flag_out_of_range_is_one_line(flag, value):
    assert flag in one_line_error(lambda: sampling.main(["out/none", flag, value]))


@pytest.mark.parametrize("flag, value",
                         list(bad_values(explore.make_parser(), explore.FLAG_RANGES)))
def test_explore_flag_out_of_range_is_one_line(flag, value):
    assert flag in one_line_error(lambda: explore.main(["--dataset", "synthetic", flag, value]))


@pytest.mark.parametrize("flag", ["--dataset", "--out-dir", "--data-dir", "--run"])
def test_an_empty_path_flag_is_refused(flag, tmp_path):
    # a tiny run, its other paths in tmp_path: were the check gone, this would fail in seconds
    flags = {"--out-dir": str(tmp_path / "out"), "--data-dir": str(tmp_path / "data"), flag: ""}
    argv = TINY + [x for pair in flags.items() for x in pair]
    assert one_line_error(lambda: train.main(argv)) == (
        f"error: {flag} is empty: give a path or leave it out")


@pytest.mark.parametrize("error", [
    MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")])
def test_too_big_for_memory_is_one_line(tmp_path, monkeypatch, error):
    def fails(*a):
        raise error
    monkeypatch.setattr(train, "load_data", fails)
    message = one_line_error(lambda: train.main(["--device", "cpu", "--out-dir", str(tmp_path)]))
    assert message.startswith("error: not enough memory") and "--batch-size" in message
    error = RuntimeError("mat1 and mat2 shapes cannot be multiplied")  # a bug: its traceback
    with pytest.raises(RuntimeError, match="shapes"):
        train.main(["--device", "cpu", "--out-dir", str(tmp_path)])


def test_every_numeric_flag_has_a_range():
    for parser, table in ((train.make_parser(), runtime.FLAG_RANGES),
                          (evaluation.make_parser(), evaluation.FLAG_RANGES),
                          (explore.make_parser(), explore.FLAG_RANGES)):
        numeric = {a.dest for a in parser._actions if a.type in (int, float)}
        ranged = {name for names, _, _ in table for name in names}
        assert numeric == ranged & {a.dest for a in parser._actions}, parser.prog


@pytest.mark.parametrize("flags, message", [
    (["--n-embd", "33", "--n-head", "2"], "--n-embd 33 must be a multiple of --n-head 2"),
    (["--planner-embd", "30"], "--planner-embd 30 must be a multiple of the planner's 4 heads"),
    (["--lm-iters", "0"], "--lm-iters must be at least 1 (every stage must train"),
    (["--grad-accum", "0"], "--grad-accum must be at least 1"),
    (["--dataset", "synthetic", "--synthetic-types", "300"],
     "--synthetic-types 300: the generator has words for at most 201 types"),
])
def test_flags_that_used_to_crash_or_do_nothing(flags, message, tmp_path):
    assert message in one_line_error(lambda: train.main(flags + ["--device", "cpu", "--data-dir",
                                                                 str(tmp_path)]))


def test_a_real_process_prints_one_error_line():
    for script, argv in (("train.py", ["--dropout", "1.5"]),
                         ("sample.py", ["out/x", "--sentences", "0"])):
        r = subprocess.run([sys.executable, script, *argv], cwd=data.ROOT, capture_output=True,
                           text=True, timeout=120)
        assert (r.returncode != 0 and r.stderr.startswith("error: ")
                and r.stderr.count("\n") == 1), r.stderr


# -------------------------------------------------------------------------- checkpoints run no code

class Payload:
    """What a hostile checkpoint carries: unpickling it would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_carrying_code_is_refused_and_runs_nothing(tiny_out, tmp_path):
    flags, root = tiny_out
    marker = tmp_path / "ran"
    ck = torch.load(root / "out" / "soft-joint" / "ckpt.pt", weights_only=True)
    ck["config"]["evil"] = Payload(str(marker))
    for place in (tmp_path / "run", root / "out" / "evil"):
        place.mkdir()
        torch.save(ck, place / "ckpt.pt")
    assert "refused without running it" in one_line_error(
        lambda: evaluation.main([str(tmp_path / "run")]))
    assert "refused without running it" in one_line_error(
        lambda: train.main(flags + ["--mode", "soft", "--run", "evil", "--resume"]))
    assert not marker.exists()


def test_resuming_a_run_with_other_settings_is_refused(tiny_out):
    flags, root = tiny_out
    saved = torch.load(root / "out" / "soft-joint" / "ckpt.pt",
                       weights_only=True)["config"]["finetune_lr"]
    message = one_line_error(lambda: train.main(flags + ["--mode", "soft", "--resume",
                                                         "--finetune-lr", "0.123"]))
    assert f"made with --finetune-lr {saved}, not --finetune-lr 0.123" in message
    assert f"delete {root / 'out' / 'soft-joint'} to start the run over" in message
    # a flag the run predates: it was made with that flag's default
    older = root / "older" / "soft-joint"
    shutil.copytree(root / "out" / "soft-joint", older)
    ck = torch.load(older / "ckpt.pt", weights_only=True)
    del ck["config"]["embedder"]
    torch.save(ck, older / "ckpt.pt")
    message = one_line_error(lambda: train.main(
        flags + ["--mode", "soft", "--resume", "--embedder", "lm", "--out-dir", str(older.parent),
                 "--pretrain-dir", str(root / "out" / "pretrain")]))
    assert "made with --embedder tfidf, not --embedder lm" in message
    # where it runs is not the run: allowed
    train.main(flags + ["--mode", "soft", "--resume", "--device", "cpu"])


def test_a_run_is_never_replaced_silently(tiny_out):
    """Trying one new flag on a finished run's name is refused with one line, and nothing of the
    finished run changes; a run stopped midway says --resume, also renamed; --overwrite replaces
    (once the new run trains); --run NAME writes beside it."""
    flags, root = tiny_out
    finished = root / "out" / "soft-joint"
    files = {f: (finished / f).read_bytes() for f in ("ckpt.pt", "best.pt", "log.jsonl")}
    message = one_line_error(
        lambda: train.main(flags + ["--mode", "soft", "--finetune-lr", "5e-4"]))
    assert message == (f"error: {finished} already holds a finished run: name this one with --run "
                       "NAME, or add --overwrite to replace it")
    assert all((finished / f).read_bytes() == content for f, content in files.items())
    ck = torch.load(finished / "ckpt.pt", weights_only=True)
    ck["done"], ck["step"] = False, 4
    (root / "out" / "stopped").mkdir()
    torch.save(ck, root / "out" / "stopped" / "ckpt.pt")
    stopped = flags + ["--mode", "soft", "--run", "stopped"]
    assert "a run stopped at step 4 (continue it with --resume)" in one_line_error(
        lambda: train.main(stopped))
    # a replacement that fails before it trains (here: its data) loses nothing of the old run
    missing = str(root / "nowhere.txt")
    assert "does not exist" in one_line_error(
        lambda: train.main(stopped + ["--overwrite", "--dataset", missing]))
    assert torch.load(root / "out" / "stopped" / "ckpt.pt", weights_only=True)["step"] == 4
    train.main(stopped + ["--resume"])  # a run renamed (made as soft-joint) goes on under its name
    assert torch.load(root / "out" / "stopped" / "ckpt.pt", weights_only=True)["step"] == 6
    train.main(stopped + ["--overwrite"])
    assert torch.load(root / "out" / "stopped" / "ckpt.pt", weights_only=True)["step"] == 6
    # replaced by a run with nothing to train (the LM frozen, no plan): none of the old files stay
    train.main(flags + ["--mode", "none", "--train-lm", "adapters", "--run", "stopped",
                        "--overwrite"])
    for name in ("ckpt.pt", "best.pt"):
        assert torch.load(root / "out" / "stopped" / name, weights_only=True)["mode"] == "none"
    assert [r["step"] for r in runtime.read_log(root / "out" / "stopped")] == [0]
    train.main(flags + ["--mode", "soft", "--finetune-lr", "5e-4", "--run", "soft-slower"])
    assert (root / "out" / "soft-slower" / "ckpt.pt").exists()


@pytest.mark.parametrize("main, argv, message", [
    (compare.main, ["--holds", ""], "--holds is empty: give the out-dirs"),
    (bench.main, ["--kmeans", "0"], "--kmeans N samples N sentences for 64 labels: give at least"),
    (bench.main, ["--kmeans", "500", "--n-labels", "0"], "--n-labels and --embed-dim must be at"),
    (bench.main, ["--size", "1,200,32,2"], "a width of 200 does not split into 3 heads"),
    (bench.main, ["--steps", "0"], "--steps must be at least 1"),
    (bench.main, ["--size", "4,256"], "--size takes LAYERS,WIDTH,CONTEXT,BATCH"),
    (bench.main, ["--pipeline", "0"], "--pipeline takes a number of tokens, at least 1M"),
    (bench.main, ["--pipeline", "300000"], "--pipeline takes a number of tokens, at least 1M"),
    (bench.main, ["--pipeline", "103X"], "--pipeline takes a number of tokens, at least 1M"),
    (tune.main, ["--block-size", "16", "--batch-size", "1"], "divide by none of the windows"),
    (tune.main, ["--lm-iters", "1", "--finetune-iters", "1"], "leave a stage of the search"),
    (tune.main, ["--out-dir", ""], "--out-dir is empty"),
    (planners.main, ["--options", "--seed 5"], "--seed is planners.py's own flag"),
    (planners.main, ["--options", "", ""], "--options: give each setting once"),
    (planners.main, ["--out-dir", ""], "--out-dir is empty"),
])
def test_empty_or_zero_values_that_would_start_hours_of_work(main, argv, message):
    assert message in one_line_error(lambda: main(argv))


def test_pipeline_refuses_a_folder_of_real_data(tmp_path):
    """--pipeline writes a generated WikiText-103 and deletes the cache: not where train.py's data
    is."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "wiki-0.npz").write_bytes(b"a cache")
    (tmp_path / "bench-pipeline").mkdir()  # what data/ holds after a default --pipeline
    message = one_line_error(lambda: bench.main(["--pipeline", "1M", "--data-dir", str(tmp_path)]))
    assert f"{tmp_path} holds files it did not write: give a new folder" in message
    assert (tmp_path / "cache" / "wiki-0.npz").read_bytes() == b"a cache"


def test_file_system_errors_are_one_line(tiny_out, tmp_path, monkeypatch):
    """An --out-dir that is a file; a full disk while saving (torch's own RuntimeError): one line
    naming the path, and the checkpoints written before are whole."""
    flags, root = tiny_out
    (tmp_path / "a-file").write_text("")
    others = flags[:flags.index("--out-dir")] + flags[flags.index("--out-dir") + 2:]
    message = one_line_error(lambda: train.main(others + ["--out-dir", str(tmp_path / "a-file")]))
    assert f"{tmp_path / 'a-file'}" in message and "Not a directory" in message
    real = torch.save

    def full(obj, f, *a, **k):
        if obj.get("step") == 4:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full)
    message = one_line_error(lambda: train.main(flags + ["--mode", "oracle", "--run", "full"]))
    assert "full/ckpt.pt could not be written (" in message and "free space" in message
    assert torch.load(root / "out" / "full" / "ckpt.pt", weights_only=True)["step"] == 2
    assert not list((root / "out" / "full").glob("*.tmp"))


def test_a_file_that_is_no_checkpoint_given_to_eval_is_not_to_be_deleted(tmp_path):
    (tmp_path / "corpus.txt").write_text("A document. Another sentence.")
    message = one_line_error(lambda: evaluation.main([str(tmp_path / "corpus.txt")]))
    assert "corpus.txt is not a checkpoint: give a run folder" in message
    assert "delete" not in message


def test_file_system_errors_of_the_lab_scripts_are_one_line(tmp_path):
    """A --data-dir or an output folder that is a file, for the scripts beside train.py and eval.py:
    one line naming the path."""
    (tmp_path / "a-file").write_text("")
    for call in (lambda: explore.main(["--dataset", "synthetic", "--synthetic-docs", "30",
                                       "--data-dir", str(tmp_path / "a-file")]),
                 lambda: compare.main(["--dataset", "synthetic", "--seeds", "0", "--out-dir",
                                       str(tmp_path / "a-file" / "cmp")]),
                 lambda: figures.main([str(tmp_path / "a-file"), str(tmp_path / "a-file")])):
        message = one_line_error(call)
        assert str(tmp_path / "a-file") in message, message


def test_a_damaged_log_is_read_as_far_as_it_is_whole(tmp_path, capsys):
    """A step logged twice (a save that failed, then --resume) counts once, its last record; a
    stray byte is no crash; a torn last line is skipped with a warning."""
    (tmp_path / "log.jsonl").write_bytes(b'{"step": 2, "val_loss": 3.0}\n'
                                         b'{"step": 4, "val_loss": 2.5}\n'
                                         b'{"step": 4, "val_loss": 2.0, "note": "\xff"}\n'
                                         b'{"step": 6, "val_lo')
    log = runtime.read_log(tmp_path)
    assert [(r["step"], r["val_loss"]) for r in log] == [(2, 3.0), (4, 2.0)]
    assert "line 4 is not a whole record (cut short?): skipped" in capsys.readouterr().err


def test_fewer_labels_than_top_5_train_and_evaluate(tmp_path):
    flags = TINY + ["--n-labels", "3", "--out-dir", str(tmp_path), "--data-dir", str(tmp_path)]
    train.main(flags + ["--mode", "soft"])
    result = evaluation.evaluate(tmp_path / "soft-joint", device="cpu")
    assert result["planner_top5"] == 1.0 and 0 < result["planner_top1"] <= 1


def test_one_process_per_run_folder(tiny_out):
    """A run folder another live process is writing is refused with one line naming its pid; the
    lock of a process that is gone is taken over, and a finished run leaves no lock behind."""
    flags, root = tiny_out
    folder = root / "out" / "locked"
    folder.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    try:
        (folder / "lock").write_text(str(other.pid))
        message = one_line_error(
            lambda: train.main(flags + ["--mode", "oracle", "--run", "locked"]))
        assert message == (f"error: {folder} is being written by another process "
                           f"(pid {other.pid}): wait for it to end, or stop it; if none runs (the "
                           "lock outlived a crash and its pid was reused), delete "
                           f"{folder / 'lock'}")
    finally:
        other.kill()
        other.wait()
    train.main(flags + ["--mode", "oracle", "--run", "locked"])  # its process is gone: taken over
    assert torch.load(folder / "ckpt.pt", weights_only=True)["done"]
    assert not list(folder.glob("lock*")) and not list((root / "out" / "pretrain").glob("*/lock*"))


def test_resuming_on_other_data_is_refused_before_any_pretraining(tiny_out, tmp_path):
    """A checkpoint whose corpus or labels are not what --dataset gives now (a corpus file replaced
    under its name changes the labels' key) is refused with one line, before hours of pretraining:
    the fresh out-dir gets no pretrained stage."""
    flags, root = tiny_out
    ck = torch.load(root / "out" / "soft-joint" / "ckpt.pt", weights_only=True)
    ck["identity"]["labels"] = "0123456789abcdef"
    (tmp_path / "soft-joint").mkdir()
    torch.save(ck, tmp_path / "soft-joint" / "ckpt.pt")
    others = flags[:flags.index("--out-dir")] + flags[flags.index("--out-dir") + 2:]
    message = one_line_error(lambda: train.main(others + ["--out-dir", str(tmp_path),
                                                          "--mode", "soft",
                                                          "--resume"]))
    assert ("was trained on other data than --dataset synthetic gives now "
            "(its labels differ)") in message
    assert not (tmp_path / "pretrain").exists()


def _broken(ck, how):
    """A valid zip that is no checkpoint this code can read."""
    if how == "a list":
        return [ck]
    if how == "no config":
        del ck["config"]
    elif how == "no model_args":
        del ck["model_args"]
    elif how == "an unknown mode":
        ck["mode"] = "argmax"
    elif how == "a wrong shape":
        ck["model"]["wte.weight"] = torch.zeros(3, 3)
    elif how == "an extra weight":
        ck["model"]["extra.weight"] = torch.zeros(1)
    elif how == "a negative seed":
        ck["config"]["seed"] = -1
    elif how == "no dataset":
        ck["config"]["dataset"] = None
    elif how == "heads that do not divide":
        ck["model_args"]["n_head"] = 3
    return ck


@pytest.mark.parametrize("how, message", [
    ("a list", "is not a checkpoint written by train.py (it has no stage, step, done, config"),
    ("no config", "is not a checkpoint written by train.py (it has no config)"),
    ("no model_args", "does not hold a run this code can read (KeyError: 'model_args')"),
    ("an unknown mode", "does not hold a run this code can read (ValueError: unknown mode"),
    ("a wrong shape", "does not hold a run this code can read (RuntimeError: Error(s) in loading"),
    ("an extra weight",
     "does not hold a run this code can read (RuntimeError: Error(s) in loading"),
    ("a negative seed", "does not hold a run this code can read (TrainError: --seed must be"),
    ("no dataset", "does not hold a run this code can read (TypeError"),
    ("heads that do not divide", "does not hold a run this code can read (AssertionError"),
])
def test_a_malformed_checkpoint_is_one_line(tiny_out, tmp_path, how, message):
    flags, root = tiny_out
    ck = torch.load(root / "out" / "soft-joint" / "ckpt.pt", weights_only=True)
    (tmp_path / "soft-joint").mkdir()
    torch.save(_broken(ck, how), tmp_path / "soft-joint" / "ckpt.pt")
    assert message in one_line_error(lambda: evaluation.main([str(tmp_path / "soft-joint")]))
    if how == "a wrong shape":  # and --resume, once the shared stages are trained
        others = flags[:flags.index("--out-dir")] + flags[flags.index("--out-dir") + 2:]
        resumed = one_line_error(lambda: train.main(
            others + ["--out-dir", str(tmp_path), "--mode", "soft", "--resume"]))
        assert "does not fit this run's model (RuntimeError" in resumed


def test_a_truncated_checkpoint_is_one_line(tiny_out, tmp_path):
    flags, root = tiny_out
    raw = (root / "out" / "soft-joint" / "ckpt.pt").read_bytes()
    for name, content in (("half", raw[:len(raw) // 2]), ("empty", b"")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ckpt.pt").write_bytes(content)
        assert "is damaged" in one_line_error(lambda: evaluation.main([str(tmp_path / name)]))


def test_a_truncated_pretraining_checkpoint_names_the_folder_to_delete(tiny_out, tmp_path):
    flags, root = tiny_out
    out = tmp_path / "out"
    (out / "pretrain").mkdir(parents=True)
    for stage in (root / "out" / "pretrain").iterdir():
        (out / "pretrain" / stage.name).mkdir()
        raw = (stage / "ckpt.pt").read_bytes()
        (out / "pretrain" / stage.name / "ckpt.pt").write_bytes(
            raw[:len(raw) // 3] if stage.name.startswith("lm") else raw)
    flags = (flags[:flags.index("--out-dir")] + ["--out-dir", str(out)]
             + flags[flags.index("--out-dir") + 2:])
    message = one_line_error(lambda: train.main(flags + ["--mode", "none"]))
    lm_dir = next((out / "pretrain").glob("lm-*"))
    assert f"pretrained stage {lm_dir}" in message and f"rm -r {lm_dir}" in message


# ----------------------------------------------------------------------- Ctrl-C between whole steps

def sigint():
    signal.raise_signal(signal.SIGINT)


def whole_run(argv, root):
    """The run never stopped, that a stopped and resumed one must end at."""
    if not (root / "out" / "whole" / "ckpt.pt").exists():
        train.main(argv + ["--run", "whole"])


def resume_ends_at_the_whole_run(argv, root, run):
    """--resume the stopped run; -> both checkpoints, after asserting the same weights."""
    train.main(argv + ["--run", run, "--resume"])
    whole, cut = (torch.load(root / "out" / r / "ckpt.pt", weights_only=True)
                  for r in ("whole", run))
    for part in ("model", "planner", "plans"):
        assert all(torch.equal(whole[part][k], cut[part][k]) for k in whole[part]), part
    return whole, cut


POINTS = ["batch", "forward", "clip", "optimizer", "validation", "save"]


@pytest.mark.parametrize("point", POINTS)
def test_ctrl_c_anywhere_in_a_step_resumes_to_the_uninterrupted_result(tiny_out, monkeypatch,
                                                                       point):
    """A real SIGINT at each point of fine-tuning step 4 (of 6): the run stops after that whole
    step, and --resume then ends at exactly the weights of a run never interrupted."""
    flags, root = tiny_out
    argv = flags + ["--mode", "gumbel"]
    whole_run(argv, root)
    now, fired = {"step": None}, []

    def maybe_interrupt():
        if now["step"] == 3 and not fired:
            fired.append(point)
            sigint()

    HOOKED = {(train, "step_rng"): "batch", (mix.PlannedLM, "forward"): "forward",
              (torch.nn.utils, "clip_grad_norm_"): "clip", (torch.optim.AdamW, "step"): "optimizer",
              (train, "val_loss"): "validation", (runtime, "save"): "save"}

    def hook(target, name):
        real = getattr(target, name)

        def wrapped(*a, **k):
            if name == "step_rng":
                now["step"] = a[2] if a[1] == "finetune" else None
            if point == HOOKED[target, name]:
                maybe_interrupt()
            return real(*a, **k)
        monkeypatch.setattr(target, name, wrapped)
    for target, name in HOOKED:
        hook(target, name)
    run = f"cut-{point}"
    message = one_line_error(lambda: train.main(argv + ["--run", run]))
    assert (fired and "interrupted after step 4 of finetune: saved" in message
            and "--resume" in message)
    assert torch.load(root / "out" / run / "ckpt.pt", weights_only=True)["step"] == 4
    monkeypatch.undo()
    whole, cut = resume_ends_at_the_whole_run(argv, root, run)
    assert whole["step"] == cut["step"] == 6


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_what_schedulers_send_stops_like_ctrl_c(tiny_out, monkeypatch, capsys, name):
    """SIGTERM (SLURM, Kubernetes before they kill) and SIGHUP during fine-tuning step 3 (of 6): the
    run stops after that whole step, saves it, says how to go on, and --resume ends at exactly the
    weights of a run never stopped."""
    flags, root = tiny_out
    argv = flags + ["--mode", "gumbel"]
    whole_run(argv, root)
    real, calls = mix.PlannedLM.forward, []

    def signalled(self, *a, **k):
        calls.append(self.training)
        if self.training and sum(calls) == 3:  # the training forward of step 3
            signal.raise_signal(getattr(signal, name))
        return real(self, *a, **k)
    monkeypatch.setattr(mix.PlannedLM, "forward", signalled)
    run = f"stopped-{name}"
    message = one_line_error(lambda: train.main(argv + ["--run", run]))
    assert "interrupted after step 3 of finetune: saved" in message and "--resume" in message
    assert f"{name}: stopping after this step" in capsys.readouterr().err
    assert torch.load(root / "out" / run / "ckpt.pt", weights_only=True)["step"] == 3
    monkeypatch.undo()
    resume_ends_at_the_whole_run(argv, root, run)


def test_resume_does_not_pretrain_again(tiny_out, tmp_path, monkeypatch):
    """The pretrained stages deleted after a stop: --resume does not train them again (the run's
    checkpoint holds every weight) and still ends at the weights of a run never stopped."""
    flags, root = tiny_out
    whole_run(flags + ["--mode", "gumbel"], root)
    at = flags.index("--out-dir")
    argv = flags[:at] + ["--out-dir", str(tmp_path / "out")] + flags[at + 2:] + ["--mode", "gumbel"]
    real, calls = mix.PlannedLM.forward, []

    def stopped(self, *a, **k):
        calls.append(self.training and self.plans.mode == "gumbel")
        if sum(calls) == 3:
            sigint()
        return real(self, *a, **k)
    monkeypatch.setattr(mix.PlannedLM, "forward", stopped)
    assert "interrupted after step 3" in one_line_error(lambda: train.main(argv))
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "out" / "pretrain")
    train.main(argv + ["--resume"])
    assert not list((tmp_path / "out" / "pretrain").glob("*/ckpt.pt"))
    whole, cut = (torch.load(d / "ckpt.pt", weights_only=True)
                  for d in (root / "out" / "whole", tmp_path / "out" / "gumbel-joint"))
    for part in ("model", "planner", "plans"):
        assert all(torch.equal(whole[part][k], cut[part][k]) for k in whole[part]), part


def test_a_second_ctrl_c_quits_at_once_and_saves_nothing_of_that_step(tiny_out, monkeypatch):
    flags, root = tiny_out
    real, calls = mix.PlannedLM.forward, []

    def twice(self, *a, **k):
        calls.append(self.training)
        if sum(calls) == 5:  # the training forward of step 5: two presses in a row
            sigint()
            sigint()
        return real(self, *a, **k)
    monkeypatch.setattr(mix.PlannedLM, "forward", twice)
    message = one_line_error(lambda: train.main(flags + ["--mode", "soft", "--run", "twice"]))
    assert ("interrupted twice during step 5 of finetune: that step was not saved. "
            "The last good checkpoint (step 4)") in message
    assert message.endswith("; continue with the same command and --resume")
    assert torch.load(root / "out" / "twice" / "ckpt.pt", weights_only=True)["step"] == 4


def test_a_second_ctrl_c_while_saving_waits_for_the_log(tiny_out, monkeypatch):
    """Two presses between the checkpoint and best.pt: the checkpoint, best.pt and the log are
    written together first, and the message names that step."""
    flags, root = tiny_out
    real = runtime.keep_best

    def pressed(path):
        if torch.load(path, weights_only=True)["step"] == 4:
            sigint()
            sigint()
        return real(path)
    monkeypatch.setattr(runtime, "keep_best", pressed)
    message = one_line_error(lambda: train.main(flags + ["--mode", "soft", "--run", "saving"]))
    assert "The last good checkpoint (step 4)" in message
    folder = root / "out" / "saving"
    ck, best = (torch.load(folder / f, weights_only=True) for f in ("ckpt.pt", "best.pt"))
    assert ck["step"] == ck["best_step"] == best["step"] == 4
    assert runtime.read_log(folder)[-1]["step"] == 4


# ----------------------------------------------------------------------------- the NaN guard

def test_a_nan_validation_is_never_saved(tiny_out, monkeypatch):
    flags, root = tiny_out
    real = train.val_loss
    monkeypatch.setattr(train, "val_loss", lambda net, batches, args: {"val_loss": float("nan")})
    message = one_line_error(lambda: train.main(flags + ["--mode", "soft", "--run", "nanval"]))
    assert ("at step 2 val_loss nan; stopped without saving that step. "
            "No checkpoint was written") in message
    assert not (root / "out" / "nanval" / "ckpt.pt").exists()
    monkeypatch.setattr(train, "val_loss", real)


def test_a_nan_loss_names_only_a_checkpoint_that_exists(tiny_out, monkeypatch):
    flags, root = tiny_out
    real, calls = mix.PlannedLM.forward, []

    def poisoned(self, *a, **k):
        loss, aux = real(self, *a, **k)
        calls.append(self.training)
        return (loss * float("nan") if self.training and sum(calls) >= 3 else loss), aux
    monkeypatch.setattr(mix.PlannedLM, "forward", poisoned)
    message = one_line_error(lambda: train.main(flags + ["--mode", "oracle", "--run", "nanloss"]))
    assert ("the loss became nan at step 3; stopped. "
            "The last good checkpoint (step 2) is kept at") in message
    ck = torch.load(root / "out" / "nanloss" / "ckpt.pt", weights_only=True)
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values())
    calls.clear()
    calls.extend([True, True])  # the very first training step is poisoned: nothing was ever saved
    message = one_line_error(lambda: train.main(flags + ["--mode", "oracle", "--run", "nanfirst"]))
    assert "at step 1; stopped. No checkpoint was written" in message


def test_reading_the_loss_every_few_steps_saves_nothing_after_a_bad_one(tiny_out, monkeypatch):
    """As on a GPU (runtime.SYNC_EVERY): the loss is read every 4 steps and at each evaluation;
    a bad step between reads stops the run at the next one, with nothing saved after it."""
    flags, root = tiny_out
    real, calls, init = mix.PlannedLM.forward, [], runtime.Run.__init__

    def every_four(self, *a, **k):
        init(self, *a, **k)
        self.sync_every = 4

    def poisoned(self, *a, **k):
        loss, aux = real(self, *a, **k)
        calls.append(self.training)
        return (loss * float("nan") if self.training and sum(calls) == 6 else loss), aux
    monkeypatch.setattr(runtime.Run, "__init__", every_four)
    monkeypatch.setattr(mix.PlannedLM, "forward", poisoned)
    message = one_line_error(lambda: train.main(flags + ["--mode", "oracle", "--run", "nanlate",
                                                         "--finetune-iters", "10",
                                                         "--eval-interval", "5"]))
    # read after steps 4 and 5 (an evaluation, saved); step 6 is bad, read after step 8
    assert ("the loss became not finite at one of steps 6-8; stopped. "
            "The last good checkpoint (step 5) is kept at") in message
    assert torch.load(root / "out" / "nanlate" / "ckpt.pt", weights_only=True)["step"] == 5


def test_eval_refuses_a_non_finite_result(tiny_out, tmp_path):
    _, root = tiny_out
    ck = torch.load(root / "out" / "soft-joint" / "ckpt.pt", weights_only=True)
    ck["model"] = {k: torch.full_like(v, float("nan")) for k, v in ck["model"].items()}
    (tmp_path / "run").mkdir()
    torch.save(ck, tmp_path / "run" / "ckpt.pt")
    assert "the val NLL is nan, the run diverged" in one_line_error(
        lambda: evaluation.main([str(tmp_path / "run"), "--json"]))


# ----------------------------------------------------------------------------- more one-liners

def test_resume_without_a_checkpoint_is_refused_before_any_pretraining(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "pretrain_lm",
                        lambda *a: pytest.fail("pretrained before checking --resume"))
    message = one_line_error(lambda: train.main(TINY + ["--out-dir", str(tmp_path),
                                                        "--data-dir", str(tmp_path),
                                                        "--resume"]))
    assert "--resume: there is no checkpoint at" in message


def test_more_torchrun_processes_than_gpus(tmp_path, monkeypatch):
    """--nproc_per_node 2 on a one-GPU machine: the second process says so before any process group
    exists (NCCL would otherwise fail on an invalid device, or two ranks on one GPU)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(runtime, "resolve_device", lambda device: "cuda")
    message = one_line_error(lambda: train.main(TINY + ["--out-dir", str(tmp_path),
                                                        "--data-dir", str(tmp_path)]))
    assert message == ("error: torchrun started 2 processes on this machine, which has 1 GPU(s), "
                       "one a process: use --nproc_per_node 1")
    assert not torch.distributed.is_initialized()


def test_the_shape_a_gpu_defaults_to_is_checked_too(tmp_path, monkeypatch):
    """On a GPU the LM's shape follows from the corpus: an --adapter-from past its layers is refused
    then, as on the CPU (else no plan reaches the LM and soft equals none)."""
    monkeypatch.setattr(runtime, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(train, "SplitData", lambda corpus, split, device: None)  # no CUDA here
    shapeless = [f for flag, value in zip(TINY[::2], TINY[1::2])
                 if flag not in ("--n-layer", "--n-embd", "--n-head", "--device")
                 for f in (flag, value)]
    args = train.get_args(shapeless + ["--data-dir", str(tmp_path), "--adapter-from", "6"])
    with pytest.raises(runtime.TrainError, match="--adapter-from 6: the LM has 6 layers"):
        train.load_data(args)
    # a shape given in part waits for the rest too (its width was compared with None)
    assert train.get_args(shapeless + ["--n-layer", "4", "--embedder", "lm"]).n_embd is None


def test_a_path_that_is_not_utf8_is_printed_escaped(monkeypatch):
    """A run in a folder whose name is not valid UTF-8, printed by a command under a strict
    locale."""
    raw = io.BytesIO()
    strict = io.TextIOWrapper(raw, encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", strict)
    with runtime.one_line_errors():
        print("run", os.fsdecode(b"/tmp/out-\xff"))
    strict.flush()
    assert raw.getvalue() == b"run /tmp/out-\\udcff\n"


def test_a_run_is_found_from_another_folder_or_says_where_its_corpus_was(tiny_out, tmp_path,
                                                                          monkeypatch):
    """The data folder is kept whole in the checkpoint; a corpus path given relative to where
    train.py ran is named as such."""
    flags, root = tiny_out
    monkeypatch.chdir(tmp_path)
    train.main([f if f != str(root / "data") else os.path.relpath(root / "data")
                for f in flags] + ["--mode", "none", "--run", "relative"])
    ck = runtime.load_checkpoint(root / "out" / "relative" / "ckpt.pt")
    assert ck["config"]["data_dir"] == str(root / "data")
    ck["config"]["dataset"] = "corpora/mine.txt"  # as a run trained on that path would hold
    runtime.save(ck, tmp_path / "moved.pt")
    message = one_line_error(lambda: evaluation.main([str(tmp_path / "moved.pt")]))
    assert message == (f"error: {tmp_path / 'moved.pt'} was trained on --dataset corpora/mine.txt, "
                       "which is not there (a path from the folder train.py ran in): run this from "
                       "that folder, or put the corpus back")


def test_a_missing_checkpoint_is_not_called_damaged(tmp_path):
    with pytest.raises(runtime.TrainError) as e:
        runtime.load_checkpoint(tmp_path / "moved" / "ckpt.pt")
    assert str(e.value) == (f"{tmp_path / 'moved' / 'ckpt.pt'} does not exist: give a run folder "
                            "made by train.py")


def test_loss_curves_of_logs_that_lost_a_record(tiny_out, tmp_path):
    """A seed's log without one step (a torn last line, a hand edit) or with a record that has no
    val loss: the curve is drawn at the steps every seed has."""
    _, root = tiny_out
    runs = [tmp_path / f"seed{i}" / "soft-joint" for i in (0, 1)]
    for run in runs:
        shutil.copytree(root / "out" / "soft-joint", run)
    lines = (runs[1] / "log.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    broken = json.loads(lines[0])
    del broken["val_loss"]
    (runs[1] / "log.jsonl").write_text("\n".join([json.dumps(broken)] + lines[1:-2]
                                                 + lines[-1:]) + "\n")
    plt = figures.pyplot()
    fig = figures.loss_curves(plt, {"val": [{"run": str(r)} for r in runs]}, "t")
    drawn = fig.axes[1].lines[0].get_xdata()
    assert list(drawn) == steps[1:-2] + steps[-1:]
    plt.close(fig)


@pytest.mark.parametrize("content", ['{"val": [{"seed": 0}]}',
                                     '{"val": [{"seed": 0, "run": "s/none", "perplexity": 2}], '
                                     '"reliance": 3}'])
def test_holds_of_a_hand_edited_results_json(tmp_path, content):
    (tmp_path / "results.json").write_text(content)
    assert "is no finished comparison" in one_line_error(
        lambda: compare.main(["--holds", str(tmp_path), "--out-dir", str(tmp_path / "holds")]))


@pytest.mark.parametrize("content", ["{}", "not json", '{"val": [], "test": []}'])
def test_figures_of_a_bad_results_json(tmp_path, content):
    (tmp_path / "results.json").write_text(content)
    assert "holds no comparison" in one_line_error(
        lambda: figures.main([str(tmp_path), str(tmp_path)]))


def test_small_corpus_says_what_to_change(tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(f"Document {i} is short. It has two sentences."
                                                for i in range(20)))
    message = one_line_error(lambda: train.main(["--dataset", str(tmp_path / "c.txt"),
                                                 "--n-labels", "4",
                                                 "--embed-dim", "4", "--data-dir", str(tmp_path),
                                                 "--device", "cpu"]))
    assert "the val split has" in message and "lower --block-size to at most" in message
    assert "use a corpus of about" in message
    (tmp_path / "d.txt").write_text("One\n\nTwo\n\nThree")  # one token each
    message = one_line_error(lambda: train.main(["--dataset", str(tmp_path / "d.txt"),
                                                 "--n-labels", "1",
                                                 "--embed-dim", "1", "--data-dir", str(tmp_path),
                                                 "--device", "cpu"]))
    assert "split has 2 tokens" in message and "lower --block-size" not in message


def test_a_corpus_folder_with_odd_entries_reads_its_regular_files(tmp_path, capsys):
    """Entries named *.txt that are not regular files are left out with one warning; a file name
    in another encoding than the locale's is read; nothing hangs."""
    folder = tmp_path / "docs"
    (folder / "a-folder.txt").mkdir(parents=True)
    (folder / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    os.mkfifo(folder / "fifo.txt")
    for i in range(12):
        (folder / f"{i}.txt").write_text(f"Document {i} has words. It ends here.")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb") as f:  # a latin-1 name
        f.write(b"A latin-1 name. Its text is plain.")
    corpus = data.load(str(folder), 2, 2, data_dir=tmp_path)
    assert sum(len(sp.doc_sent) - 1 for sp in corpus.splits.values()) == 13
    err = capsys.readouterr().err
    assert "warning: 3 entries of" in err and "are not regular files and are left out" in err


@pytest.mark.parametrize("what", ["fifo", "device"])
def test_a_corpus_that_is_no_regular_file_is_one_line(tmp_path, what):
    path = tmp_path / "c.txt"
    if what == "fifo":
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    message = one_line_error(lambda: explore.main(["--dataset", str(path),
                                                   "--data-dir", str(tmp_path)]))
    assert f"dataset path {path} is neither a regular file nor a folder" in message


@pytest.fixture
def ctrl_c_interrupts():
    """Ctrl-C as in a terminal: a job a shell starts in the background inherits SIGINT ignored,
    and Python then leaves it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_while_the_cache_is_built(tmp_path, monkeypatch, ctrl_c_interrupts, name):
    def interrupted(*a):
        signal.raise_signal(getattr(signal, name))
    monkeypatch.setattr(data, "kmeans", interrupted)
    message = one_line_error(lambda: train.main(TINY + ["--data-dir", str(tmp_path),
                                                        "--out-dir", str(tmp_path)]))
    assert "interrupted while building the data cache; nothing was written" in message
    assert not list(tmp_path.glob("cache/*"))


# ----------------------------------------------------------------- files: caches, temp files, modes

def test_a_damaged_cache_is_rebuilt(tmp_path, capsys):
    first = data.load("synthetic", 4, 8, 0, 60, 4, data_dir=tmp_path)
    path = next((tmp_path / "cache").glob("*.npz"))
    path.write_bytes(path.read_bytes()[:1000])
    again = data.load("synthetic", 4, 8, 0, 60, 4, data_dir=tmp_path)
    assert f"warning: the data cache {path} is damaged" in capsys.readouterr().err
    assert np.array_equal(first.splits["val"].labels, again.splits["val"].labels)
    # whole again
    assert data.load("synthetic", 4, 8, 0, 60, 4, data_dir=tmp_path).meta["load_seconds"] >= 0


def test_temp_files_of_dead_writers_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    stale = tmp_path / f"ckpt.pt.{int(dead.stdout)}.abc.tmp"
    live = tmp_path / f"ckpt.pt.{os.getpid()}.def.tmp"  # a running process's write in progress
    other = tmp_path / f"other.pt.{int(dead.stdout)}.ghi.tmp"
    for f in (stale, live, other):
        f.write_bytes(b"half")
    runtime.save({"step": 1}, tmp_path / "ckpt.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt.pt", live.name, other.name])


def test_files_written_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        runtime.save({"step": 1}, tmp_path / "ckpt.pt")
        data.load("synthetic", 4, 8, 0, 60, 4, data_dir=tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / "ckpt.pt").stat().st_mode & 0o777 == 0o644
    assert next((tmp_path / "cache").glob("*.npz")).stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------- inputs that are not text

@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_text_with_a_byte_order_mark_is_decoded(tmp_path, encoding):
    text = "Café one. Ok.\n\nSecond naïve doc."
    (tmp_path / "c.txt").write_bytes(text.encode(encoding))
    assert corpora.path_documents(tmp_path / "c.txt") == ["Café one. Ok.", "Second naïve doc."]


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(5000),
                                     # UTF-16 without its mark
                                     ("Some text. " * 50).encode("utf-16-le")])
def test_a_file_that_is_not_text_is_refused(tmp_path, content):
    (tmp_path / "c.txt").write_bytes(content)
    with pytest.raises(data.DataError, match=r"c.txt is not text: \d+% of its characters are "
                                             r"NUL, control or undecodable"):
        data.load(str(tmp_path / "c.txt"), data_dir=tmp_path)


@pytest.mark.parametrize("said", [
    "error: interrupted after step 3 of finetune: saved x/ckpt.pt; continue with the same command "
    "and --resume",
    "error: interrupted; every checkpoint written so far is whole: run the same command to go on"])
def test_an_interrupted_comparison_says_to_run_the_comparison_again(monkeypatch, tmp_path, said):
    def interrupted(argv):
        sys.exit(said)
    monkeypatch.setattr(train, "main", interrupted)
    message = one_line_error(lambda: compare.main(["--dataset", "synthetic", "--seeds", "0",
                                                   "--out-dir", str(tmp_path)]))
    assert message.startswith("error: interrupted") and "--resume" not in message
    assert message.endswith("run the same compare.py command to go on")

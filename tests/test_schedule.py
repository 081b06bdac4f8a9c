"""Schedules that fit the corpus: what a schedule implies is printed, the best checkpoint is what
counts, and the GPU defaults follow from the corpus by arithmetic."""
import argparse
import json
import time

import pytest
import torch

import eval as evaluation
import runtime
import train


def test_each_stage_prints_tokens_per_step_and_passes(tiny_out, capsys):
    flags, root = tiny_out
    train.main(flags + ["--mode", "none", "--run", "schedule"])
    out = capsys.readouterr().out
    corpus_tokens = len(evaluation.load_run(root / "out" / "schedule")[2].splits["train"].tokens)
    line = (f"finetune: 128 tokens a step x 6 steps = 768 tokens, {768 / corpus_tokens:.2f} passes "
            f"over the {corpus_tokens:,} training tokens")
    assert line in out


def test_the_logged_speed_is_the_steps_alone(tiny_out, monkeypatch):
    """per_s leaves out the first step (it warms up: on a GPU, kernels and compiling) and each
    validation with its save: here each of those takes 100 s of a clock made late."""
    flags, root = tiny_out
    real_time, late = time.time, [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + late[0])

    def late_by_100_s(f, when):
        def slowed(*a, **k):
            if when(*a):
                late[0] += 100
            return f(*a, **k)
        return slowed
    monkeypatch.setattr(runtime, "save", late_by_100_s(runtime.save, lambda *a: True))
    monkeypatch.setattr(train, "step_rng", late_by_100_s(train.step_rng,  # the first step's batch
                                                         lambda seed, stage, step: step == 0))
    train.main(flags + ["--mode", "none", "--run", "speed"])
    log = runtime.read_log(root / "out" / "speed")
    assert log[-1]["seconds"] > 250  # the first step and two saves before it; 6 steps of 128 tokens
    assert all(r["per_s"] > 100 for r in log)  # else at most 6 x 128 tokens in 100 s


def test_many_passes_warn_with_the_fix(tiny_out, capsys, monkeypatch, tmp_path):
    flags, _ = tiny_out
    flags = (flags[:flags.index("--out-dir")] + ["--out-dir", str(tmp_path)]
             + flags[flags.index("--out-dir") + 2:])
    # LM pretraining makes 0.12 passes, fine-tuning 0.04
    monkeypatch.setattr(runtime, "WARN_PASSES", 0.1)
    train.main(flags + ["--mode", "none"])
    err = capsys.readouterr().err
    assert ("passes over the corpus: the LM will overfit long before the end" in err
            and "fewer --lm-iters" in err)
    assert "fewer --finetune-iters" not in err


def test_the_best_checkpoint_by_val_loss_is_what_counts(tiny_out, monkeypatch, capsys):
    """Validation losses 3, 1, 2 at steps 2, 4, 6: best.pt is step 4's, eval.py reads it, the log
    says so, and the run ends holding step 4's weights (what the report and later stages use)."""
    flags, root = tiny_out
    losses = iter([3.0, 1.0, 2.0, 2.0])  # the last: the report's own evaluation after training
    monkeypatch.setattr(train, "val_loss", lambda *a: {"val_loss": next(losses)})
    seen = []
    real_finetune = train.finetune

    def keep_net(*a):
        net, out, final = real_finetune(*a)
        seen.append(net)
        return net, out, final
    monkeypatch.setattr(train, "finetune", keep_net)
    train.main(flags + ["--mode", "oracle", "--run", "best"])
    out = capsys.readouterr().out
    assert ("finetune: the best val loss (1) was at step 4 of 6: going on with that checkpoint"
            in out)
    run = root / "out" / "best"
    best, last = (torch.load(run / f, weights_only=True) for f in ("best.pt", "ckpt.pt"))
    assert best["step"] == 4 and last["step"] == 6 and last["best_step"] == 4
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert all(torch.equal(v, best["model"][k]) for k, v in seen[0].lm.state_dict().items())
    assert [r["best_step"] for r in runtime.read_log(run)] == [2, 4, 4]
    assert runtime.checkpoint_path(run) == run / "best.pt"
    monkeypatch.undo()
    evaluation.main([str(run), "--json"])
    assert json.loads(capsys.readouterr().out)["step"] == 4


@pytest.mark.parametrize("tokens, docs, model, lm_iters", [
    (930_000, 9_030, "small", round(8 * 930_000 / (32 * 256))),  # wiki: capped at 8 passes
    (98_000_000, 25_700, "large", round(200e6 / (32 * 2 * 512))),  # WikiText-103: the token budget
])
def test_gpu_defaults_follow_from_the_corpus(tokens, docs, model, lm_iters):
    d = runtime.cuda_defaults(tokens, docs)
    assert {k: d[k] for k in runtime.CUDA_MODELS[model]} == runtime.CUDA_MODELS[model]
    per_step = d["batch_size"] * d["grad_accum"] * d["block_size"]
    assert (d["lm_iters"] == lm_iters
            and d["lm_iters"] * per_step <= runtime.MAX_PASSES * tokens * 1.001)
    assert (d["finetune_iters"] == round(d["lm_iters"] / 3)
            and d["eval_interval"] == d["finetune_iters"] // 8)
    assert d["planner_iters"] * 64 <= min(runtime.CUDA_PLANNER_DOCS,
                                          runtime.PLANNER_PASSES * docs) * 1.001
    assert d["n_embd"] % d["n_head"] == 0


def test_the_gpu_schedule_follows_the_batch_that_runs():
    """The token budget holds whatever the batch: a smaller --batch-size gets more steps; the
    planner's document budget counts its accumulated micro-batches; --finetune-iters moves the
    evaluations."""
    wiki = runtime.cuda_defaults(930_000, 9_030, given={"batch_size": 16})
    assert wiki["lm_iters"] == round(8 * 930_000 / (16 * 256))
    fewer = runtime.cuda_defaults(930_000, 9_030, given={"finetune_iters": 80})
    assert fewer["eval_interval"] == 10
    large = runtime.cuda_defaults(98_000_000, 25_700)
    assert large["planner_iters"] * 64 * 2 == pytest.approx(runtime.CUDA_PLANNER_DOCS, rel=1e-3)
    two = runtime.cuda_defaults(98_000_000, 25_700, world=2, given={"grad_accum": 1})
    assert two["lm_iters"] == round(200e6 / (32 * 1 * 512 * 2))


@pytest.mark.parametrize("capability, dtype", [((7, 0), torch.float32), ((8, 0), torch.bfloat16),
                                               ((9, 0), torch.bfloat16)])
def test_bf16_on_a_gpu_only_where_it_is_native(monkeypatch, capability, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    args = argparse.Namespace(device="cuda", dtype="auto")
    assert runtime.autocast_dtype(args) == dtype


def test_gpu_defaults_wait_for_the_corpus_and_a_flag_still_wins(monkeypatch):
    monkeypatch.setattr(runtime, "resolve_device", lambda name: "cuda")
    args = train.get_args(["--lm-iters", "7", "--n-layer", "3"])
    assert args.n_embd is None and args.dropout is None  # filled by main() once the corpus is known
    runtime.fill_defaults(args, runtime.cuda_defaults(1e6, 1000))
    assert args.lm_iters == 7 and args.n_layer == 3 and args.n_embd == 384 and args.dropout == 0.1

"""The method wired as it says: what each mode trains, what the labels are fitted on, the loop's
arithmetic, deterministic evaluation, and the adapter where the method puts it.

Each test goes through the stage or path a user's run goes through (train.finetune, eval.py's
evaluate), not a hand-built copy of it, so a bug planted in the wiring makes it fail.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import corpora
import data
import eval as evaluation
import runtime
import train
from conftest import TINY
from model import GPT, GPTConfig
from planner import planner_metrics

MODES = [("none", None), ("fixed", None), ("uniform", None), ("oracle", None), ("hard", "frozen"),
         ("soft", "frozen"), ("st", "joint"), ("soft", "joint"), ("gumbel", "joint")]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """fresh(*flags) -> (args, corpus, splits, lm, planner): the tiny setting's shared pretrained
    stages, loaded anew each call (fine-tuning changes the LM and planner it is given in place)."""
    root = tmp_path_factory.mktemp("method")
    base = TINY + ["--out-dir", str(root / "out"), "--data-dir", str(root / "data"),
                   "--weight-decay", "0", "--finetune-iters", "2", "--eval-interval", "2"]

    def fresh(*flags):
        args = train.get_args(base + list(flags))
        corpus = data.load_from_args(args)
        splits = {k: data.SplitData(corpus, k, args.device) for k in corpus.splits}
        lm, _ = train.pretrain_lm(args, corpus, splits)
        planner, _ = train.pretrain_planner(args, corpus, splits)
        return args, corpus, splits, lm, planner
    return fresh


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def moved(before, module, keep=lambda name: True):
    """Names of the tensors that changed."""
    return {k for k, v in module.state_dict().items() if keep(k) and not torch.equal(v, before[k])}


# -------------------------------------------------------------------------- what fine-tuning trains

@pytest.mark.parametrize("mode, planner", MODES)
def test_fine_tuning_trains_what_the_mode_says(stages, mode, planner):
    """With no weight decay every change is a gradient's: the LM always learns; the adapters unless
    there is no plan; the codebook wherever plans are read from it (not none, not fixed); the fixed
    vector in fixed; the planner exactly when it is joint, and a frozen one stays bit-identical."""
    args, corpus, splits, lm, pre_planner = stages("--mode", mode,
                                                   *(["--planner", planner] if planner else []))
    lm_before, planner_before = snapshot(lm), snapshot(pre_planner)
    net, _, _ = train.finetune(args, corpus, splits, lm, pre_planner)
    adapter = lambda k: ".adapter." in k
    assert (moved(lm_before, net.lm, lambda k: not adapter(k))
            == {k for k in lm_before if not adapter(k)})
    assert bool(moved(lm_before, net.lm, adapter)) == (mode != "none")
    codebook = torch.as_tensor(corpus.codebook)
    assert torch.equal(net.plans.codebook.detach(), codebook) == (mode in ("none", "fixed"))
    if mode == "fixed":
        start = train.Plans("fixed", corpus.codebook).fixed.detach()
        assert not torch.equal(net.plans.fixed.detach(), start)
    if planner is None:
        assert net.planner is None
    else:
        assert net.planner is pre_planner
        changed = moved(planner_before, net.planner)
        assert changed == (set(planner_before) if planner == "joint" else set()), changed


def test_the_planner_loss_weight_changes_the_joint_update(stages):
    """--planner-loss-weight adds the planner's own cross-entropy: the planner ends elsewhere, and
    the hard estimator, which sends the planner no gradient of the LM loss, trains it through that
    term alone."""
    ends = {}
    for mode, weight in (("soft", "0"), ("soft", "1"), ("hard", "1")):
        args, corpus, splits, lm, planner = stages("--mode", mode, "--planner", "joint",
                                                   "--planner-loss-weight", weight,
                                                   "--run", f"{mode}-w{weight}")
        before = snapshot(planner)
        net, _, _ = train.finetune(args, corpus, splits, lm, planner)
        ends[mode, weight] = snapshot(net.planner)
        assert moved(before, net.planner), (mode, weight)
    a, b = ends["soft", "0"], ends["soft", "1"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_each_part_learns_at_its_own_rate(stages):
    """AdamW's first update of a tensor is lr * g / (|g| + eps): its largest entry is the learning
    rate. Step 1 (no warmup in so short a stage) moves the LM by --finetune-lr; the planner gets no
    gradient yet (the adapters start at zero, so no plan reaches the loss); at step 2 its first
    update is --planner-finetune-lr x the cosine's 0.55 x Adam's (1 - b1) / (1 - b1^2) *
    sqrt((1 - b2^2) / (1 - b2))."""
    lr, planner_lr = 1e-3, 3e-5
    flags = ("--mode", "soft", "--finetune-lr", str(lr), "--planner-finetune-lr", str(planner_lr))
    largest = lambda before, module: max((v - before[k]).abs().max().item()
                                         for k, v in module.state_dict().items())
    ends = {}
    for iters in (1, 2):
        args, corpus, splits, lm, planner = stages(*flags, "--finetune-iters", str(iters),
                                                   "--eval-interval", str(iters),
                                                   "--run", f"rates{iters}")
        lm_before, planner_before = snapshot(lm), snapshot(planner)
        net, _, _ = train.finetune(args, corpus, splits, lm, planner)
        ends[iters] = largest(lm_before, net.lm), largest(planner_before, net.planner)
    b1, b2 = 0.9, 0.95
    adam = (1 - b1) / (1 - b1 ** 2) * math.sqrt((1 - b2 ** 2) / (1 - b2))
    assert math.isclose(ends[1][0], lr, rel_tol=1e-2) and ends[1][1] == 0
    assert math.isclose(ends[2][1], planner_lr * train.lr_at(1, 2, 1.0, 0) * adam, rel_tol=1e-2)


# ----------------------------------------------------------------------- no leakage into the labels

def test_the_lm_stage_reads_no_label_so_every_k_shares_it(stages, tmp_path):
    """LM pretraining is keyed by the tokens alone: other labels (K) reuse it as it is, in another
    out-dir too with --pretrain-dir, while the planner stage, which reads the labels, is trained
    anew."""
    args, corpus, splits, lm, _ = stages()
    lm_dir = train.pretrain_lm(args, corpus, splits)[1]
    planner_dir = train.pretrain_planner(args, corpus, splits)[1]
    other = ["--n-labels", "4", "--out-dir", str(tmp_path / "k4"),
             "--pretrain-dir", str(lm_dir.parent)]
    args4, corpus4, splits4, lm4, _ = stages(*other)
    assert corpus4.identity()["labels"] != corpus.identity()["labels"]
    assert corpus4.identity(labels=False) == corpus.identity(labels=False)
    assert train.pretrain_lm(args4, corpus4, splits4)[1] == lm_dir
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(),
                                                 lm4.state_dict().values()))
    assert train.pretrain_planner(args4, corpus4, splits4)[1] not in (planner_dir, None)


def test_the_embedder_and_codebook_see_the_training_documents_only():
    """Two corpora with the same training documents and other val/test documents: the same embedder,
    codebook, training embeddings and labels; the held-out splits do differ."""
    docs = corpora.synthetic_corpus(60, 4, seed=0)[0]
    other = corpora.synthetic_corpus(60, 4, seed=1)[0]
    parts = data.split_documents(len(docs), 0)
    mixed = list(docs)
    for i in np.concatenate([parts["val"], parts["test"]]):
        mixed[i] = other[i]
    a, b = (data.build(d, 6, 8, 0) for d in (docs, mixed))
    assert (np.array_equal(a.embedder.idf, b.embedder.idf)
            and np.array_equal(a.embedder.proj, b.embedder.proj))
    assert np.array_equal(a.codebook, b.codebook)
    for field in ("tokens", "emb", "labels"):
        assert np.array_equal(getattr(a.splits["train"], field),
                              getattr(b.splits["train"], field)), field
    assert not np.array_equal(a.splits["val"].tokens, b.splits["val"].tokens)


# ---------------------------------------------------------------------------- the loop's arithmetic

def test_gradient_accumulation_equals_one_larger_batch(tmp_path):
    """LM pretraining with 8 windows a step equals 2 micro-batches of 4 accumulated: the same
    windows, the same losses, the same weights (up to float32 summation order)."""
    flags = TINY + ["--data-dir", str(tmp_path / "data"), "--dtype", "float32", "--lm-iters", "4",
                    "--eval-interval", "2"]
    ends, logs = {}, {}
    for batch, accum in ((8, 1), (4, 2)):
        args = train.get_args(flags + ["--out-dir", str(tmp_path / f"b{batch}"),
                                       "--batch-size", str(batch), "--grad-accum", str(accum)])
        corpus = data.load_from_args(args)
        splits = {k: data.SplitData(corpus, k, "cpu") for k in corpus.splits}
        lm, out = train.pretrain_lm(args, corpus, splits)
        ends[batch], logs[batch] = snapshot(lm), runtime.read_log(out)
    assert [r["step"] for r in logs[8]] == [r["step"] for r in logs[4]] == [2, 4]
    for one, two in zip(logs[8], logs[4]):
        assert math.isclose(one["train_loss"], two["train_loss"], rel_tol=1e-5)
    for k in ends[8]:
        torch.testing.assert_close(ends[4][k], ends[8][k], rtol=1e-4, atol=1e-6)


def test_the_learning_rate_schedule():
    """Linear warmup from peak/warmup, the peak at the warmup's last step, cosine down to a tenth of
    the peak at the end; the warmup is capped at a fifth of the stage."""
    peak = 2e-3
    assert train.lr_at(0, 100, peak, 10) == pytest.approx(peak / 10)
    assert train.lr_at(4, 100, peak, 10) == pytest.approx(peak / 2)
    assert train.lr_at(9, 100, peak, 10) == pytest.approx(peak)
    assert train.lr_at(10, 100, peak, 10) == pytest.approx(peak)
    assert train.lr_at(55, 100, peak, 10) == pytest.approx(peak * 0.55)  # half way down the cosine
    assert train.lr_at(100, 100, peak, 10) == pytest.approx(peak / 10)
    # warmup capped at 20 // 5 = 4 steps
    assert train.lr_at(0, 20, peak, 10) == pytest.approx(peak / 4)
    assert train.lr_at(0, 4, peak, 10) == pytest.approx(peak)  # no warmup at all: 4 // 5 = 0


def test_the_log_holds_the_values_the_loop_used(stages):
    """Each record's lr is the schedule's at that step, and the last val_loss is the val loss of the
    run's own checkpoint recomputed on the same windows."""
    args, corpus, splits, lm, planner = stages("--mode", "gumbel", "--finetune-iters", "4",
                                               "--run", "logged")
    net, out, _ = train.finetune(args, corpus, splits, lm, planner)
    log = runtime.read_log(out)
    assert [r["step"] for r in log] == [2, 4]
    for r in log:
        assert r["lr"] == pytest.approx(train.lr_at(r["step"] - 1, 4, args.finetune_lr,
                                                    args.warmup_iters))
    loaded, _, _ = evaluation.load_run(out / "ckpt.pt")
    windows = train.fixed_windows(splits["val"], args, runtime.Context())
    assert (train.val_loss(loaded, windows, args)["val_loss"]
            == pytest.approx(log[-1]["val_loss"], rel=1e-6))
    assert log[-1]["planner_top1"] == pytest.approx(
        planner_metrics(loaded.planner, splits["val"])["planner_top1"])


# ---------------------------------------------------------------------- evaluation is deterministic

def test_a_gumbel_run_is_evaluated_with_soft_plans(stages, tmp_path):
    """eval.py's path: the same figure twice, and the figure of the same weights read as a soft
    run."""
    args, corpus, splits, lm, planner = stages("--mode", "gumbel", "--run", "gumbel-eval")
    _, out, _ = train.finetune(args, corpus, splits, lm, planner)
    first, second = (evaluation.evaluate(out, device="cpu") for _ in range(2))
    assert first["nll"] == second["nll"]
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    ck["mode"], ck["config"]["mode"] = "soft", "soft"
    (tmp_path / "as-soft").mkdir()
    torch.save(ck, tmp_path / "as-soft" / "ckpt.pt")
    assert evaluation.evaluate(tmp_path / "as-soft", device="cpu")["nll"] == first["nll"]


# ------------------------------------------------------------------------ the architecture, by hand

def hand_block(block, x, plan):
    """A pre-LayerNorm block written out: the plan's adapter output joins the attention output
    before the residual sum, so the MLP already reads the planned stream."""
    B, T, C = x.shape
    H = block.attn.n_head
    heads = lambda t: t.view(B, T, H, C // H).transpose(1, 2)
    h = F.layer_norm(x, (C,), block.ln_1.weight, block.ln_1.bias)
    q, k, v = map(heads, (h @ block.attn.qkv.weight.T).split(C, dim=-1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(C // H)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    y = (scores.masked_fill(future, -math.inf).softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    x = x + y @ block.attn.proj.weight.T + plan @ block.adapter.weight.T
    h = F.layer_norm(x, (C,), block.ln_2.weight, block.ln_2.bias)
    return x + F.gelu(h @ block.mlp.fc.weight.T) @ block.mlp.proj.weight.T


def test_the_adapter_adds_the_plan_to_the_attention_output():
    torch.manual_seed(0)
    lm = GPT(GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=16,
                       plan_dim=4)).double()
    with torch.no_grad():
        for b in lm.blocks:
            b.adapter.weight.normal_()
    idx = torch.randint(0, 50, (3, 12))
    plan = torch.randn(3, 12, 4, dtype=torch.float64)
    x = lm.wte(idx) + lm.wpe(torch.arange(12))
    for b in lm.blocks:
        x = hand_block(b, x, plan)
    logits = F.layer_norm(x, (16,), lm.ln_f.weight, lm.ln_f.bias) @ lm.wte.weight.T
    torch.testing.assert_close(lm(idx, plan=plan)[0], logits)


def test_sampling_past_the_window_takes_the_plans_of_its_last_positions():
    """Past block_size the LM sees the last block_size tokens, and with them the plans of exactly
    those positions (every position's plan is different here)."""
    torch.manual_seed(0)
    lm = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16, plan_dim=4))
    seen, real = [], lm.features

    def spy(ctx, plan):
        seen.append((ctx.clone(), plan.clone()))
        return real(ctx, plan)
    lm.features = spy
    position_plans = lambda idx: (torch.arange(idx.shape[1], dtype=torch.float32)[None, :, None]
                                  .expand(1, -1, 4))
    out = lm.generate(torch.randint(0, 50, (1, 5)), 10, plan_fn=position_plans,
                      generator=torch.Generator().manual_seed(0))
    for length, (ctx, plan) in zip(range(5, 15), seen):
        first = max(0, length - 8)
        assert torch.equal(ctx, out[:, first:length])
        assert plan[0, :, 0].tolist() == list(range(first, length))

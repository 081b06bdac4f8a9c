"""Tests for model.py: the GPT and its plan adapter."""
import pytest
import torch

import fastloss
from model import GPT, GPTConfig

TINY = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, plan_dim=8)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **kw}))


def _adapted(model, seed=1):
    """Give the adapters non-zero weights, as fine-tuning would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in model.blocks:
            b.adapter.weight.copy_(torch.randn(b.adapter.weight.shape, generator=g))
    return model


def test_default_config_is_constructible():
    model = GPT(GPTConfig())
    logits, loss = model(torch.zeros(1, 5, dtype=torch.long))
    assert logits.shape == (1, 5, 50257) and loss is None


def test_without_plan_it_is_the_unconditioned_gpt():
    cond, plain = _model(), _model(plan_dim=0)
    plain.load_state_dict({k: v for k, v in cond.state_dict().items() if ".adapter." not in k})
    _adapted(cond)
    idx = torch.randint(0, 64, (3, 20))
    torch.testing.assert_close(cond(idx)[0], plain(idx)[0], rtol=0, atol=0)


def test_at_initialisation_any_plan_changes_nothing():
    model = _model()
    idx, plan = torch.randint(0, 64, (3, 20)), torch.randn(3, 20, 8)
    torch.testing.assert_close(model(idx, plan=plan)[0], model(idx)[0], rtol=0, atol=0)
    assert not torch.allclose(_adapted(model)(idx, plan=plan)[0], model(idx)[0])


def test_loss_ignores_unscored_targets():
    model = _model()
    idx = torch.randint(0, 64, (2, 10))
    targets = torch.randint(0, 64, (2, 10))
    partial = targets.clone()
    partial[:, :4] = -1
    logits, _ = model(idx)
    no_logits, loss = model(idx, partial)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 64),
                                                 targets[:, 4:].reshape(-1))
    assert no_logits is None  # with targets, the loss comes without the [B, T, vocab] logits
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_head_loss_equals_the_plain_loss_and_every_gradient(dtype, tol, chunk, monkeypatch):
    """ChunkedHeadLoss against head_loss (F.cross_entropy): the loss and the gradient of every
    parameter, with unscored targets, in float32 and under bf16 autocast, for chunks smaller and
    larger than the batch."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=2, n_head=2, n_embd=32,
                          plan_dim=8))
    for b in model.blocks:
        torch.nn.init.normal_(b.adapter.weight, std=0.1)
    idx, targets, plan = (torch.randint(0, 300, (3, 16)), torch.randint(0, 300, (3, 16)),
                          torch.randn(3, 16, 8))
    targets[0, :5] = -1
    targets[2, 9] = -1
    monkeypatch.setattr(fastloss, "LOSS_CHUNK", chunk)
    out = {}
    for chunked in (False, True):
        model.chunked_loss = chunked
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            _, loss = model(idx, targets, plan)
        (3 * loss).backward()  # an incoming gradient other than 1
        out[chunked] = loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(out[True][0], out[False][0], rtol=tol / 10, atol=0)
    for name, grad in out[False][1].items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(out[True][1][name], grad, rtol=0, atol=tol * scale, msg=name)


def test_chunked_head_loss_with_a_frozen_head():
    """The LM frozen but its adapters (train.py --train-lm adapters): the tied head gets no
    gradient and every adapter the plain loss's."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=2, n_head=2, n_embd=32,
                          plan_dim=8))
    for name, p in model.named_parameters():
        p.requires_grad_(".adapter." in name)
        if ".adapter." in name:
            torch.nn.init.normal_(p, std=0.1)
    idx, targets, plan = (torch.randint(0, 300, (3, 16)), torch.randint(0, 300, (3, 16)),
                          torch.randn(3, 16, 8))
    grads = {}
    for chunked in (False, True):
        model.chunked_loss = chunked
        model.zero_grad()
        model(idx, targets, plan)[1].backward()
        assert model.wte.weight.grad is None
        grads[chunked] = [b.adapter.weight.grad.clone() for b in model.blocks]
    for fast, plain in zip(grads[True], grads[False]):
        torch.testing.assert_close(fast, plain)


def test_chunked_head_loss_without_gradients_and_with_nothing_scored():
    torch.manual_seed(0)
    model, idx = _model(), torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        _, fast = model(idx, idx)
        model.chunked_loss = False
        _, plain = model(idx, idx)
        model.chunked_loss = True
        # as F.cross_entropy: a mean of nothing
        assert torch.isnan(model(idx, torch.full_like(idx, -1))[1])
    torch.testing.assert_close(fast, plain)


def test_bad_shapes_are_clear():
    model = _model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"plan must be \[B, T, plan_dim\]"):
        model(torch.zeros(1, 4, dtype=torch.long), plan=torch.zeros(1, 4, 7))


def test_gpt_overfits_a_short_text():
    model = _model()
    seq = torch.randint(0, 64, (1, 33), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_conditioned_gpt_uses_an_informative_plan():
    """Next token = the plan's label, inputs are noise: only the plan can tell the answer."""
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(16, 8, generator=g)
    losses = {}
    for conditioned in (False, True):
        model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for step in range(120):
            idx = torch.randint(0, 64, (16, 24), generator=g)
            labels = torch.randint(0, 16, (16, 24), generator=g)
            _, loss = model(idx, labels, plan=codebook[labels] if conditioned else None)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[conditioned] = loss.item()
    assert losses[False] > 2.5  # ln 16 = 2.77: nothing to learn without the plan
    assert losses[True] < 0.3


def test_generate_with_plans():
    model = _adapted(_model())
    calls = []

    def plan_fn(idx):
        calls.append(idx.shape[1])  # a different plan at every position
        return torch.sin(torch.arange(idx.shape[1])[:, None] * torch.arange(1, 9)).expand(
            idx.shape[0], -1, -1)

    prompt = torch.zeros(2, 3, dtype=torch.long)
    out = model.generate(prompt, 40, plan_fn=plan_fn, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 43) and torch.equal(out[:, :3], prompt)
    # asked for plans before every new token, past block_size too
    assert calls == list(range(3, 43))
    again = model.generate(prompt, 40, plan_fn=plan_fn, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    greedy = model.generate(prompt, 5, top_k=1, plan_fn=plan_fn)
    for t in range(3, 8):  # each greedy token is the argmax of the full forward pass at that point
        logits = model(greedy[:, :t], plan=plan_fn(greedy[:, :t]))[0][:, -1]
        assert torch.equal(greedy[:, t], logits.argmax(-1))


def test_under_torch_compile_training_is_one_graph_and_validation_breaks_once():
    """train.py --compile: the training loss compiles whole (no value read back, no shape that
    depends on the data); without gradients the scored rows' loss is kept out of the graph on
    purpose (fastloss.scored_rows_loss), one break instead of five."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=32,
                          plan_dim=8))
    idx, targets = torch.randint(0, 300, (2, 16)), torch.randint(0, 300, (2, 16))
    loss = lambda: model(idx, targets)[1]
    training = torch._dynamo.explain(loss)()
    with torch.no_grad():
        validation = torch._dynamo.explain(loss)()
    assert (training.graph_count, training.graph_break_count) == (1, 0)
    assert (validation.graph_count, validation.graph_break_count) == (2, 1)

"""Tests for mix.py: the estimators and the controls."""
import pytest
import torch

import mix

SHAPES = [(7,), (2, 5), (2, 3, 4)]


def _inputs(lead, k=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*lead, k, generator=g, requires_grad=True), torch.randn(k, d, generator=g)


@pytest.mark.parametrize("lead", SHAPES)
def test_shapes_for_any_leading_dims(lead):
    logits, codebook = _inputs(lead)
    for name, f in mix.ESTIMATORS.items():
        assert f(logits, codebook).shape == (*lead, 3), name


@pytest.mark.parametrize("lead", SHAPES)
def test_straight_through_forward_is_hard(lead):
    logits, codebook = _inputs(lead)
    assert torch.equal(mix.straight_through(logits, codebook, 0.7), mix.hard(logits, codebook))
    assert not torch.allclose(mix.soft(logits, codebook, 0.7), mix.hard(logits, codebook))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_straight_through_gradient_is_soft(temperature):
    logits, codebook = _inputs((4, 5))
    upstream = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1))
    grads = []
    for f in (mix.straight_through, mix.soft):
        (g,) = torch.autograd.grad((f(logits, codebook, temperature) * upstream).sum(), logits)
        grads.append(g)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-7)


def test_hard_sends_no_gradient_to_logits():
    logits, codebook = _inputs((4, 5))
    codebook.requires_grad_(True)
    mix.hard(logits, codebook).sum().backward()
    assert logits.grad is None
    assert codebook.grad.abs().sum() > 0  # the codebook rows it picked still learn


def test_soft_gradcheck():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    codebook = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, c: mix.soft(z, c, 0.8), (logits, codebook))


def test_gumbel_is_soft_in_eval_and_a_mixture_in_training():
    logits, codebook = _inputs((50,))
    assert torch.equal(mix.gumbel(logits, codebook, 0.7, training=False), mix.soft(logits, codebook, 0.7))
    weights = mix.gumbel(logits, torch.eye(6), 0.7, training=True, generator=torch.Generator().manual_seed(0))
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(50))
    assert not torch.allclose(weights, mix.soft(logits, torch.eye(6), 0.7))  # it is a sample, not the mean
    again = mix.gumbel(logits, torch.eye(6), 0.7, training=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(weights, again)


def test_plans_controls():
    codebook = torch.randn(6, 3)
    labels = torch.tensor([[0, 5, 2], [1, 1, 4]])
    assert mix.Plans("none", codebook)(labels=labels) is None
    torch.testing.assert_close(mix.Plans("oracle", codebook)(labels=labels), codebook[labels])
    uniform = mix.Plans("uniform", codebook)(labels=labels)
    torch.testing.assert_close(uniform, codebook.mean(0).expand(2, 3, 3))
    fixed = mix.Plans("fixed", codebook)(labels=labels)
    assert fixed.shape == (2, 3, 3) and torch.equal(fixed[0, 0], fixed[1, 2])
    assert not torch.allclose(fixed[0, 0], uniform[0, 0])


def test_plans_estimators_and_trainable_codebook():
    logits, centroids = _inputs((2, 3))
    plans = mix.Plans("soft", centroids, temperature=0.5)
    assert isinstance(plans.codebook, torch.nn.Parameter) and torch.equal(plans.codebook, centroids)
    assert plans.uses_planner and not mix.Plans("oracle", centroids).uses_planner
    out = plans(logits=logits)
    torch.testing.assert_close(out, mix.soft(logits, centroids, 0.5))
    out.sum().backward()
    assert plans.codebook.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown mode 'argmax': choose one of none, fixed, uniform, oracle, hard, st, soft, gumbel"):
        mix.Plans("argmax", torch.zeros(2, 2))

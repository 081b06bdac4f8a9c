"""Tests for mix.py: the estimators and the controls."""
import pytest
import torch

import mix

SHAPES = [(7,), (2, 5), (2, 3, 4)]


def _inputs(lead, k=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*lead, k, generator=g, requires_grad=True), torch.randn(k, d, generator=g)


def by_hand(name, logits, codebook, temperature):
    """Each estimator's value written out in float64, one row of logits at a time."""
    rows = []
    for z in logits.detach().double().reshape(-1, logits.shape[-1]):
        p = torch.exp(z / temperature) / torch.exp(z / temperature).sum()
        rows.append(codebook.double()[int(z.argmax())] if name in ("hard", "st")
                    else p @ codebook.double())
    return torch.stack(rows).reshape(*logits.shape[:-1], codebook.shape[1])


@pytest.mark.parametrize("lead", SHAPES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_every_estimator_by_hand_for_any_leading_dims(lead, temperature):
    """hard = C[argmax z], st = the same forward, soft = softmax(z / T) @ C, gumbel at evaluation =
    soft."""
    logits, codebook = _inputs(lead)
    for name, f in mix.ESTIMATORS.items():
        kwargs = {"training": False} if name == "gumbel" else {}
        expected = by_hand("soft" if name == "gumbel" else name, logits, codebook, temperature)
        torch.testing.assert_close(f(logits, codebook, temperature, **kwargs).double(), expected,
                                   rtol=1e-5, atol=1e-6)


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


def test_soft_gradient_is_the_softmax_jacobian():
    """d(softmax(z / T) @ C)/dz = (diag(p) - p p^T) C / T and d/dC = p, written out, against
    autograd."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    codebook = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    upstream = torch.randn(4, dtype=torch.float64, generator=g)
    T = 0.8
    (mix.soft(z, codebook, T) @ upstream).backward()
    p = torch.exp(z / T) / torch.exp(z / T).sum()
    jacobian = (torch.diag(p) - torch.outer(p, p)) @ codebook / T  # [K, D]: d e_d / d z_k
    torch.testing.assert_close(z.grad, (jacobian @ upstream).detach())
    torch.testing.assert_close(codebook.grad, torch.outer(p, upstream).detach())


def test_gumbel_is_soft_in_eval_and_a_mixture_in_training():
    logits, codebook = _inputs((50,))
    assert torch.equal(mix.gumbel(logits, codebook, 0.7, training=False),
                       mix.soft(logits, codebook, 0.7))
    weights = mix.gumbel(logits, torch.eye(6), 0.7, training=True,
                         generator=torch.Generator().manual_seed(0))
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(50))
    # it is a sample, not the mean
    assert not torch.allclose(weights, mix.soft(logits, torch.eye(6), 0.7))
    again = mix.gumbel(logits, torch.eye(6), 0.7, training=True,
                       generator=torch.Generator().manual_seed(0))
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


@pytest.mark.parametrize("mode", ["hard", "st", "soft", "gumbel"])
def test_plans_estimators_and_trainable_codebook(mode):
    """Plans in eval mode give each estimator's value by hand from its own codebook, which starts as
    the centroids and learns; in training, gumbel draws a sample that is not the soft mean."""
    logits, centroids = _inputs((2, 3))
    plans = mix.Plans(mode, centroids, temperature=0.5).eval()
    assert isinstance(plans.codebook, torch.nn.Parameter) and torch.equal(plans.codebook, centroids)
    assert (plans.codebook is not centroids and plans.uses_planner
            and not mix.Plans("oracle", centroids).uses_planner)
    out = plans(logits=logits)
    torch.testing.assert_close(
        out.double(), by_hand("soft" if mode == "gumbel" else mode, logits, centroids, 0.5))
    out.sum().backward()
    assert plans.codebook.grad.abs().sum() > 0
    assert (logits.grad is None) == (mode == "hard")
    if mode == "gumbel":
        sample = plans.train()(logits=logits, generator=torch.Generator().manual_seed(0))
        assert not torch.allclose(sample, out)


@pytest.mark.parametrize("truth", [0.0, 0.25, 0.5, 1.0])
def test_the_truth_mixed_into_soft_plans(truth):
    """w = 0 is soft exactly; w = 1 the oracle's C[true label]; between, each row by hand:
    (w onehot(true label) + (1 - w) softmax(z / T)) @ C. The gradient reaches the logits while
    w < 1."""
    logits, centroids = _inputs((2, 3))
    labels = torch.tensor([[0, 5, 2], [1, 1, 3]])
    plans = mix.Plans("soft", centroids, temperature=0.5, truth_weight=truth)
    out = plans(logits=logits, labels=labels)
    p = torch.softmax(logits.detach().double() / 0.5, -1)
    q = truth * torch.nn.functional.one_hot(labels, 6).double() + (1 - truth) * p
    torch.testing.assert_close(out.double(), q @ centroids.double())
    if truth == 0:
        torch.testing.assert_close(out, mix.Plans("soft", centroids, 0.5)(logits=logits))
    if truth == 1:
        torch.testing.assert_close(out, centroids[labels])
    out.sum().backward()
    assert (logits.grad.abs().sum() > 0) == (truth < 1)
    with pytest.raises(ValueError, match="the truth is mixed into soft plans only"):
        mix.Plans("hard", centroids, truth_weight=truth or 0.5)


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown mode 'argmax': choose one of none, fixed, "
                                         "uniform, oracle, hard, st, soft, gumbel"):
        mix.Plans("argmax", torch.zeros(2, 2))

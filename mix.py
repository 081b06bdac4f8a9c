"""
The idea of the paper on one screen: how the planner's logits z over K labels become the plan
vector e (D-dim) that conditions the LM, given the codebook C [K, D] of label embeddings.

    hard:     e = C[argmax z]                      the LM loss cannot reach the planner
    st:       forward as hard, backward as soft    the LM loss reaches the planner, on a biased path
    soft:     e = softmax(z / T) @ C               differentiable: planner and LM train jointly,
                                                   and the LM sees the whole distribution
    gumbel:   a Gumbel-softmax sample in training, soft at evaluation

T is the softmax temperature (--temperature, 1 by default). Each estimator is a function of the
logits [..., K] and the codebook [K, D] that returns [..., D], e.g. e = mix.soft(z, C).

Controls that use no planner: oracle (the true label of the sentence being predicted: an upper
bound), fixed (one learned vector for every sentence), uniform (soft with every label equally
likely: the codebook's mean, which trains as soft's codebook does), none (no plan at all).
Between soft and the oracle, soft plans with the truth mixed in (truth w:
e = (w onehot(true label) + (1 - w) softmax(z / T)) @ C) measure how good a plan must be to pay.
"""

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


def hard(logits, codebook, temperature=1.0):
    """The planner's single best guess; argmax has no gradient, so the planner must be trained
    alone. (temperature: unused, argmax does not depend on it.)"""
    return codebook[logits.argmax(-1)]


def soft(logits, codebook, temperature=1.0):
    """The expected label embedding under the planner's distribution: smooth in the logits."""
    return F.softmax(logits / temperature, dim=-1) @ codebook


def straight_through(logits, codebook, temperature=1.0):
    """Exactly hard's value, with soft's gradient: the soft term is zero forward but not
    backward."""
    p = F.softmax(logits / temperature, dim=-1)
    return hard(logits, codebook) + (p - p.detach()) @ codebook


def gumbel(logits, codebook, temperature=1.0, training=True, generator=None):
    """A relaxed sample from the planner's distribution while training; soft when evaluating."""
    if not training:
        return soft(logits, codebook, temperature)
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-10, 1 - 1e-7)
    return soft(logits - torch.log(-torch.log(u)), codebook, temperature)


ESTIMATORS = {"hard": hard, "st": straight_through, "soft": soft, "gumbel": gumbel}
CONTROLS = ("none", "fixed", "uniform", "oracle")
MODES = CONTROLS + tuple(ESTIMATORS)


class Plans(nn.Module):
    """The trainable codebook (it starts as the k-means centroids) and one mode's way to plan
    vectors; for soft, a truth weight w > 0 mixes the true label into the planner's distribution."""

    def __init__(self, mode, codebook, temperature=1.0, truth_weight=0.0):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        if truth_weight and mode != "soft":
            raise ValueError(f"the truth is mixed into soft plans only, not into mode {mode}")
        self.mode, self.temperature, self.truth_weight = mode, temperature, truth_weight
        self.codebook = nn.Parameter(torch.as_tensor(codebook, dtype=torch.float32).clone())
        # 'fixed' learns one vector that carries no information; it starts as a random direction
        # scaled to the centroids' mean norm.
        g = torch.Generator().manual_seed(0)
        self.fixed = nn.Parameter(
            F.normalize(torch.randn(self.codebook.shape[1], generator=g), dim=0)
            * self.codebook.norm(dim=1).mean()) if mode == "fixed" else None

    @property
    def uses_planner(self):
        return self.mode in ESTIMATORS

    def forward(self, logits=None, labels=None, generator=None):
        """logits [..., K] (the estimators) and labels [...] (needed by the oracle and a truth
        weight; the other modes read only their shape) -> [..., D], or None for mode none."""
        if self.mode == "none":
            return None
        shape = ((logits.shape[:-1] if logits is not None else labels.shape)
                 + self.codebook.shape[1:])
        if self.mode == "fixed":
            return self.fixed.expand(shape)
        if self.mode == "uniform":
            return self.codebook.mean(0).expand(shape)
        if self.mode == "oracle":
            return self.codebook[labels]
        if self.mode == "gumbel":
            return gumbel(logits, self.codebook, self.temperature, self.training, generator)
        if self.truth_weight:
            return self.distribution(logits, labels) @ self.codebook
        return ESTIMATORS[self.mode](logits, self.codebook, self.temperature)

    def distribution(self, logits, labels=None):
        """The distribution over labels that soft plans average the codebook with: the planner's,
        with the truth mixed in."""
        p = F.softmax(logits / self.temperature, dim=-1)
        w = self.truth_weight
        return p if not w else w * F.one_hot(labels, p.shape[-1]).to(p.dtype) + (1 - w) * p


# ---------------------------------------------------------------------------- the conditioned model

class PlannedLM(nn.Module):
    """The LM (model.GPT), the planner (planner.Planner) and the estimator (Plans), as one module:
    a batch of data.SplitData.lm_batch in, losses out. The batch holds the windows (idx, targets);
    the distinct sentences their targets belong to, each with its true label (labels) and its
    place in the planner's output over whole documents (emb -> logits[doc_row, sent_pos]); and
    for every target, which of those sentences it belongs to (plan_index; -1 for <|endoftext|>).
    The planner's logits become one plan vector per sentence, and every target gets its
    sentence's vector: the alignment is pictured in lm_batch's docstring."""

    def __init__(self, lm, planner, plans, planner_frozen=True):
        super().__init__()
        self.lm, self.planner, self.plans, self.planner_frozen = lm, planner, plans, planner_frozen
        # What this mode leaves unused is frozen, so that neither the optimizer nor DDP sees it.
        if planner is not None:
            planner.requires_grad_(not planner_frozen)
        plans.codebook.requires_grad_(plans.mode not in ("none", "fixed"))
        for b in lm.blocks:
            if b.adapter is not None:  # plan_dim 0 builds none
                b.adapter.requires_grad_(plans.mode != "none")

    def train(self, mode=True):
        super().train(mode)
        if self.planner is not None and self.planner_frozen:
            self.planner.eval()  # a frozen planner has no dropout noise either
        return self

    def planner_logits(self, emb, doc_row, sent_pos):
        if not self.plans.uses_planner:
            return None
        with torch.no_grad() if self.planner_frozen else contextlib.nullcontext():
            return self.planner(emb)[doc_row, sent_pos].float()

    def forward(self, idx, targets, plan_index, emb, doc_row, sent_pos, labels, generator=None):
        """idx, targets, plan_index: [B, T]; emb: [documents, S, D]; doc_row, sent_pos, labels:
        [n sentences]. -> (LM loss, the planner's cross-entropy on these sentences or None)."""
        logits = self.planner_logits(emb, doc_row, sent_pos)
        # [n_sentences, D] or None
        vectors = self.plans(logits=logits, labels=labels, generator=generator)
        plan = None
        if vectors is not None:
            # row 0, a zero vector, for <|endoftext|> targets: the adapters have no bias, so it
            # adds nothing
            vectors = torch.cat([vectors.new_zeros(1, vectors.shape[-1]), vectors])
            plan = vectors[plan_index + 1].to(self.lm.wte.weight.dtype)
        _, loss = self.lm(idx, targets, plan)
        return loss, (F.cross_entropy(logits, labels) if logits is not None else None)

"""
The planner: from a document's earlier sentences, a distribution over the K labels of the next one.

Input is the sentence embeddings of a batch of documents, [B, S, D], right-padded; row s of the
output logits [B, S, K] is computed from sentences 0..s-1 only: the inputs are shifted right by one
behind a learned start vector, and a small causal transformer (model.py's Block) runs over them.
Because padding sits at the end and attention is causal, padding never changes a real row; the mask
only decides which rows the loss and accuracy count.

Pretraining is self-supervised: cross-entropy against the k-means labels (see data.py).
BigramPlanner, with the same interface, is the reference it must beat: a label bigram, counted.

    from planner import Planner, PlannerConfig
    logits = Planner(PlannerConfig(n_labels=64, embed_dim=128))(emb)  # [B, S, K]
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Block, init_gpt2


@dataclass
class PlannerConfig:
    n_labels: int = 64  # K
    embed_dim: int = 128  # D of the sentence embeddings and the codebook
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    # sentences past this share the last position embedding: any length works
    max_sentences: int = 64


class Planner(nn.Module):
    def __init__(self, config, codebook=None):
        super().__init__()
        self.config = c = config
        self.start = nn.Parameter(torch.zeros(c.embed_dim))  # stands before sentence 0
        self.inp = nn.Linear(c.embed_dim, c.n_embd)
        self.pos = nn.Embedding(c.max_sentences, c.n_embd)
        self.blocks = nn.ModuleList(Block(c.n_embd, c.n_head, c.dropout) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.out = nn.Linear(c.n_embd, c.embed_dim)  # a guess at the next sentence's embedding ...
        self.head = nn.Linear(c.embed_dim, c.n_labels)  # ... scored against every label
        self.apply(init_gpt2)
        nn.init.normal_(self.start, std=0.02)
        if codebook is not None:
            self.init_head_from_codebook(codebook)

    @torch.no_grad()
    def init_head_from_codebook(self, codebook):
        """Start the head as similarity to each centroid, as the original work did."""
        self.head.weight.copy_(torch.as_tensor(codebook, dtype=self.head.weight.dtype))
        self.head.bias.zero_()

    def forward(self, emb):
        """emb: [B, S, D] sentence embeddings -> logits [B, S, K]; row s sees sentences < s only."""
        B, S, _ = emb.shape
        x = torch.cat([self.start.expand(B, 1, -1).to(emb.dtype), emb[:, :-1]], dim=1)
        pos = torch.arange(S, device=emb.device).clamp_max(self.config.max_sentences - 1)
        x = self.inp(x) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.out(self.ln_f(x)))


@dataclass
class BigramConfig:
    n_labels: int = 64
    embed_dim: int = 128
    kind: str = "bigram"


class BigramPlanner(nn.Module):
    """A label bigram as a planner, the reference a planner must beat: the next label's
    distribution from the previous sentence's label alone (a document's first sentence: from the
    first sentences' labels), counted on the training labels and smoothed by the labels' overall
    frequency. It reads what the planner reads: the previous label is the nearest centroid of the
    previous sentence's embedding, as the labels were made. Nothing in it trains."""

    def __init__(self, config, centroids=None, log_probs=None):
        super().__init__()
        self.config = c = config
        self.register_buffer("centroids", torch.zeros(c.n_labels, c.embed_dim) if centroids is None
                             else torch.as_tensor(centroids, dtype=torch.float32))
        self.register_buffer("log_probs", torch.zeros(c.n_labels + 1, c.n_labels)
                             if log_probs is None else log_probs.float())  # row K: no sentence

    @classmethod
    def fit(cls, centroids, labels, doc_sent):
        """From the train split's labels and its documents' first sentences (doc_sent)."""
        k = len(centroids)
        labels, doc_sent = torch.as_tensor(labels).long(), torch.as_tensor(doc_sent).long()
        previous = torch.cat([torch.tensor([k]), labels[:-1]])
        previous[doc_sent[:-1][doc_sent[1:] > doc_sent[:-1]]] = k  # each document's first
        prior = torch.bincount(labels, minlength=k) + 1e-3
        counts = torch.zeros(k + 1, k, dtype=torch.float64).index_put_(
            (previous, labels), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
        counts += prior / prior.sum()
        return cls(BigramConfig(k, centroids.shape[1]), centroids,
                   (counts / counts.sum(1, keepdim=True)).log())

    def forward(self, emb):
        """emb: [B, S, D] -> logits [B, S, K]; row s from the label of sentence s-1 only."""
        c = self.centroids
        with torch.autocast(emb.device.type, enabled=False):  # bf16 would pick other centroids
            nearest = ((c ** 2).sum(1) - 2 * emb[:, :-1].float() @ c.T).argmin(-1)
        previous = torch.cat([nearest.new_full((emb.shape[0], 1), len(c)), nearest], dim=1)
        return self.log_probs[previous]


def planner_loss(logits, labels, mask):
    """Mean cross-entropy against the k-means labels over real (mask=True) sentences."""
    return F.cross_entropy(logits[mask].float(), labels[mask])


@torch.no_grad()
def accuracy(logits, labels, mask, ks=(1, 5)):
    """-> {'top1': ..., 'top5': ...}: how often the true label is among the k best, over real
    sentences."""
    logits, labels = logits[mask], labels[mask]
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices  # K < 5: all of them
    return {f"top{k}": (top[:, :k] == labels[:, None]).any(-1).float().mean().item() for k in ks}


@torch.no_grad()
def sentence_logits(planner, sd, chunk=256):
    """The planner's logits for every sentence of a split, in split order (row s from
    sentences < s)."""
    was_training, n_docs, logits = planner.training, len(sd.doc_sent) - 1, []
    planner.eval()
    for lo in range(0, n_docs, chunk):
        b = sd.planner_batch(torch.arange(lo, min(lo + chunk, n_docs)))
        logits.append(planner(b["emb"]).float()[b["mask"]])
    planner.train(was_training)
    return torch.cat(logits)


@torch.no_grad()
def planner_metrics(planner, sd):
    """Planner loss and top-1/top-5 accuracy over every sentence of a split."""
    logits, every = sentence_logits(planner, sd), torch.ones_like(sd.labels, dtype=torch.bool)
    return {"planner_val_loss": planner_loss(logits, sd.labels, every).item(),
            **{f"planner_{k}": v for k, v in accuracy(logits, sd.labels, every).items()}}

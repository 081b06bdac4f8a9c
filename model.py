"""
The language model: a small GPT written from scratch, plus the plan adapter that conditions it.

Every block (from adapter_from on) has a linear map from the plan vector (plan_dim = D, the
codebook's width) to the model width, initialised to zero, whose output is added to the block's
attention output at every position. At initialisation, and whenever plan=None, the model is
exactly the unconditioned GPT, so a pretrained LM can be fine-tuned with plans from where it stands.

Plans are aligned with targets: plan[:, t] is the plan of the sentence that token t+1 belongs to,
so the first token of a sentence is already predicted with that sentence's plan.

    from model import GPT, GPTConfig
    logits, _ = GPT(GPTConfig())(idx, plan=None)        # [B, T, vocab]
    # the mean cross-entropy, without the logits
    _, loss = GPT(GPTConfig())(idx, targets, plan=None)

The loss is written here plainly (head_loss: logits, then F.cross_entropy); forward uses its
optimisation in fastloss.py, which gives the same value and gradients without the full logits.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastloss


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2 BPE; a corpus with a closed vocabulary gives its length
    block_size: int = 256  # context length in tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0  # the corpora are small, but the runs are short: no dropout by default
    plan_dim: int = 128  # width of a plan vector = the codebook's D; 0 builds no adapters
    # biases in the linear layers, as GPT-2; without them a constant plan is a bias (RESULTS.md)
    bias: bool = False
    gelu: str = "exact"  # "tanh": the approximation GPT-2 was trained with (pretrained weights)
    adapter_from: int = 0  # the first layer with a plan adapter (the original code: 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias=False):
        super().__init__()
        assert n_embd % n_head == 0, f"n_embd {n_embd} must be a multiple of n_head {n_head}"
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout, bias=False, gelu="exact"):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)
        self.approximate = {"exact": "none", "tanh": "tanh"}[gelu]

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block; with plan_dim > 0 it also has the plan adapter."""

    def __init__(self, n_embd, n_head, dropout, plan_dim=0, bias=False, gelu="exact"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout, bias, gelu)
        self.adapter = nn.Linear(plan_dim, n_embd, bias=False) if plan_dim else None

    def forward(self, x, plan=None):
        a = self.attn(self.ln_1(x))
        if plan is not None and self.adapter is not None:
            a = a + self.adapter(plan)
        x = x + a
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.n_embd, c.n_head, c.dropout, c.plan_dim if i >= c.adapter_from else 0, c.bias,
                  c.gelu) for i in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as GPT-2
        self.apply(init_gpt2)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections shrink with depth, as GPT-2
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))
            if ".adapter." in name:
                nn.init.zeros_(p)  # a new adapter changes nothing until fine-tuning moves it

    # The loss: fastloss.py's optimisation of head_loss below (the same value and gradients, without
    # the [B*T, vocab] logits); False: head_loss itself, the reference for tests and bench.py's
    # side-by-side line.
    chunked_loss = True

    def forward(self, idx, targets=None, plan=None):
        """idx, targets: [B, T] token ids (targets -1 = not scored); plan: [B, T, plan_dim] or None.

        -> (logits [B, T, vocab_size], None) without targets; (None, mean loss over scored targets)
        with them."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size "
                             f"{self.config.block_size}")
        if plan is not None and plan.shape != (B, T, self.config.plan_dim):
            raise ValueError(f"plan must be [B, T, plan_dim] = {[B, T, self.config.plan_dim]}, "
                             f"got {list(plan.shape)}")
        h = self.features(idx, plan)
        if targets is None:
            return self.lm_head(h), None
        loss = fastloss.chunked_head_loss if self.chunked_loss else head_loss
        return None, loss(h, self.lm_head.weight, targets)

    def features(self, idx, plan=None):
        """The final hidden states [B, T, n_embd], before the head."""
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))
        for block in self.blocks:
            x = block(x, plan)
        return self.ln_f(x)

    @classmethod
    def from_pretrained(cls, name_or_folder, data_dir=None, **settings):
        """GPT-2's weights in this class: gpt2, gpt2-medium (downloaded once) or a folder with
        config.json + model.safetensors (pretrained.py). settings: block_size (the window: the
        first of GPT-2's positions), plan_dim, dropout, adapter_from; the adapters start at zero."""
        import pretrained  # the machinery that reads and checks the files, needed here only
        config, weights = pretrained.gpt2(name_or_folder, data_dir, **settings)
        lm = cls(GPTConfig(**config))
        missing, _ = lm.load_state_dict(weights, strict=False)
        if other := [k for k in missing if ".adapter." not in k and k != "lm_head.weight"]:
            raise RuntimeError(f"GPT-2's weights left {other} unset")  # the head is tied to wte
        return lm

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, plan_fn=None,
                 generator=None, never=None):
        """Sample max_new_tokens after idx [B, T].

        plan_fn(idx) -> [B, T, plan_dim]: the plans for every position of idx, asked for again
        before each new token, so the caller can re-plan each time the last token ended a sentence.
        never: a token that is not drawn (sample.py's <|endoftext|>: no new document).
        """
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size:]
            plan = plan_fn(idx)[:, -ctx.shape[1]:] if plan_fn else None
            # the head, most of the compute at this size, is needed at the last position only
            logits = self.lm_head(self.features(ctx, plan)[:, -1]) / max(temperature, 1e-6)
            if never is not None:
                logits[:, never] = -float("inf")
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, -float("inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def head_loss(h, weight, targets):
    """The LM loss, plainly: logits for every position, then the mean cross-entropy over
    targets != -1."""
    logits = h @ weight.T
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=-1)


def init_gpt2(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)

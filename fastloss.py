"""
The LM loss without the logits: an optimisation of model.head_loss (logits for every position, then
F.cross_entropy), which model.GPT uses by default. Same value and gradients (tests/test_model.py
holds the two equal, in float32 and under bf16 autocast); at GPT-2's vocabulary the [rows, vocab]
float32 logits are most of a small model's memory and much of its step.
"""

import torch


# Rows of the head computed at a time by ChunkedHeadLoss. Measured on 2 CPU cores, default model and
# batch (2,048 rows), fp32: 512 rows 3.38 s/step, 1,024 rows 3.0 s, 2,048 rows 2.9 s; the plain loss
# 3.5-3.8 s.
LOSS_CHUNK = 2048


class ChunkedHeadLoss(torch.autograd.Function):
    """Optimisation of head_loss: the same value and gradients, without a [rows, vocab] float32
    tensor.

    With hidden states h [N, C], the tied head W [V, C], logits z = h W^T and the n rows whose
    target t_i is not -1 (the set S):
        loss       = (1/n) sum_{i in S} (logsumexp_j z_ij - z_{i,t_i})
        dloss/dz   = G,  G_ij = (softmax(z_i)_j - [j = t_i]) / n for i in S, 0 elsewhere
        dloss/dh   = G W            dloss/dW = G^T h
    Only the rows of S are computed (evaluation scores half of each window), `chunk` at a time: z of
    a chunk (matmul in the autocast dtype), its softmax in float32 and, when a gradient is wanted,
    G's chunk turned at once into its share of dh and dW. Backward only scales them by the incoming
    gradient: the logits are never stored, nor computed twice.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk, want_grad):
        dtype = (torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type)
                 else h.dtype)
        scored, w = targets >= 0, weight.to(dtype)
        if want_grad:
            # training: every row, an unscored one weighed by 0, so that the host never waits for
            # the device to count them (a boolean index or int(n) would)
            hs, ts, n, keep = h.to(dtype), targets.clamp_min(0), scored.sum(), scored.float()
        else:
            # evaluation scores about half of each window: the head of those rows only
            hs, ts, n = h[scored].to(dtype), targets[scored], int(scored.sum())
            keep = torch.ones(len(hs), device=h.device)
        total = torch.zeros((), device=h.device, dtype=torch.float32)
        grad_h = torch.empty_like(hs) if want_grad else None
        # a frozen head (train.py --train-lm adapters) needs no gradient of its own
        want_w = want_grad and ctx.needs_input_grad[1]
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        for lo in range(0, len(hs), chunk):
            hc, tc, kc = hs[lo:lo + chunk], ts[lo:lo + chunk], keep[lo:lo + chunk]
            z = (hc @ w.T).float()
            z_target, z_max = z.gather(1, tc[:, None])[:, 0], z.amax(1, keepdim=True)
            e = z.sub_(z_max).exp_()  # in place of z: one pass over the chunk's logits for exp
            norm = e.sum(1, keepdim=True)
            total += (((z_max + norm.log())[:, 0] - z_target) * kc).sum()
            if want_grad:
                g = e.mul_(kc[:, None] / (n * norm))  # softmax / n, in place again
                g[torch.arange(len(tc), device=g.device), tc] -= kc / n
                g = g.to(dtype)
                grad_h[lo:lo + chunk] = g @ w
                if want_w:
                    grad_w += (g.T @ hc).float()
        ctx.save_for_backward(grad_h if grad_h is None else grad_h.to(h.dtype), grad_w)
        ctx.want_w = want_w
        # nothing scored: nan, as F.cross_entropy's mean of nothing (0 / 0 in training)
        return total / n if want_grad or n else total.new_tensor(float("nan"))

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss if ctx.want_w else None,
                None, None, None)


def chunked_head_loss(h, weight, targets, chunk=None):
    """model.head_loss(h [..., C], weight, targets [...]) by ChunkedHeadLoss; gradients only if
    wanted."""
    want_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    args = h.reshape(-1, h.shape[-1]), weight, targets.reshape(-1), chunk or LOSS_CHUNK
    return ChunkedHeadLoss.apply(*args, True) if want_grad else scored_rows_loss(*args)


# Without gradients only the scored rows are computed, a number that depends on the data: under
# torch.compile (train.py --compile, its validation) that would break the graph five times, so it
# stays outside, one break. The training path compiles whole.
@torch.compiler.disable
def scored_rows_loss(h, weight, targets, chunk):
    return ChunkedHeadLoss.apply(h, weight, targets, chunk, False)

"""
Train the planner-conditioned GPT end to end, in the stages of the method:

  (a) data: sentences, embeddings, k-means plan labels and the codebook (data.py, cached)
  (b) pretrain the LM with no plans                                  \\ cached under <out-dir>/pretrain,
  (c) pretrain the planner on the labels (cross-entropy)             / shared by every mode
  (d) fine-tune the LM with plans from one estimator (mix.py), planner frozen or joint

    python train.py                                  # wiki corpus, --mode soft --planner joint
    python train.py --mode hard                      # planner frozen (the default for hard)
    python train.py --mode st                        # straight-through, planner joint
    python train.py --mode oracle                    # the true label of each sentence: an upper bound
    python train.py --dataset synthetic --device cpu
    torchrun --standalone --nproc_per_node 2 train.py   # DDP: the global batch is split across processes

With the same --seed every mode starts from the same pretrained weights and sees the same batches, so
differences come from the estimator alone. Then compare runs with `python eval.py out/none out/soft-joint ...`.
"""

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import pickle
import shutil
import signal
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import data
from mix import ESTIMATORS, MODES, Plans
from model import GPT, GPTConfig
from planner import Planner, PlannerConfig, accuracy, planner_loss

# Defaults that depend on the device; an explicit flag always wins. The CPU set is a budget: 2,048 tokens
# a step and 550 LM steps, ~10 minutes for every stage on 2 cores with native bf16 on the wiki corpus; on a
# CPU without it autocast stays float32 and a step is ~3x slower, so expect ~30 minutes. Within that budget
# tune.py measured (exact val perplexity of the default run, README's table):
CPU_DEFAULTS = dict(n_layer=4, n_head=4, n_embd=256, dropout=0.0,
                    block_size=32, batch_size=64,  # measured: val perplexity 295; 64 x 32: 323; 128 x 16: 359
                    grad_accum=1,
                    lm_iters=400, finetune_iters=150,  # measured: the LM's steps split 400/150 beat 275/275 and 468/82
                    planner_iters=500, eval_interval=50, eval_iters=8)
# On a GPU the defaults follow from the corpus, by arithmetic (cuda_defaults; README says why). The model:
# the larger one only where the corpus can feed it; on ~1M tokens it would memorise the corpus.
LARGE_CORPUS = 20e6  # training tokens: WikiText-103 has ~98M, wiki ~0.93M
CUDA_MODELS = {"large": dict(n_layer=8, n_head=8, n_embd=512, block_size=512, batch_size=32, grad_accum=2, dropout=0.0),
               "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=32, grad_accum=1, dropout=0.1)}
# The schedule: a token budget that one GPU gets through in minutes, capped at a number of passes over
# the corpus past which the LM only memorises it (the best checkpoint by val loss guards what is left).
CUDA_LM_TOKENS = 200e6
CUDA_PLANNER_DOCS = 200_000
MAX_PASSES = 8  # LM pretraining
PLANNER_PASSES = 30  # a small model over sentence embeddings overfits far later
FINETUNE_SHARE = 1 / 3  # fine-tuning tokens against pretraining's
EVALS_PER_FINETUNE = 8
WARN_PASSES = 10  # an LM stage with more passes than this gets a warning with the fix


def cuda_defaults(train_tokens, train_docs, world=1, planner_batch=64):
    """The GPU defaults for a corpus of train_tokens tokens in train_docs documents."""
    d = dict(CUDA_MODELS["large" if train_tokens >= LARGE_CORPUS else "small"])
    per_step = d["batch_size"] * d["grad_accum"] * d["block_size"] * world
    lm_tokens = min(CUDA_LM_TOKENS, MAX_PASSES * train_tokens)
    finetune_iters = max(1, round(FINETUNE_SHARE * lm_tokens / per_step))
    return dict(d, lm_iters=max(1, round(lm_tokens / per_step)), finetune_iters=finetune_iters,
                planner_iters=max(1, round(min(CUDA_PLANNER_DOCS, PLANNER_PASSES * train_docs) / (planner_batch * world))),
                eval_interval=max(1, finetune_iters // EVALS_PER_FINETUNE), eval_iters=50)


class TrainError(Exception):
    """A bad flag combination or a run that cannot go on: shown as one line with the fix."""


# ----------------------------------------------------------------------------- configuration

def make_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data.add_data_args(p)
    g = p.add_argument_group("method")
    g.add_argument("--mode", default="soft", help=f"how plans reach the LM: {', '.join(MODES)}")
    g.add_argument("--planner", choices=("frozen", "joint"), help="hard: frozen; st, soft, gumbel: joint")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of st/soft/gumbel")
    g.add_argument("--planner-loss-weight", type=float, default=0.0,
                   help="keep the planner's own cross-entropy during joint training (0: pure end-to-end)")
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", default="out", help="runs go to <out-dir>/<run>/, pretrained stages to <out-dir>/pretrain/")
    g.add_argument("--run", help="run name (default: the mode, plus -frozen/-joint)")
    g.add_argument("--seed", type=int, default=0, help="data split, labels, initial weights, batches")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="autocast dtype; auto: bfloat16 where the device computes it natively")
    g.add_argument("--compile", action="store_true", help="torch.compile the LM")
    g.add_argument("--resume", action="store_true", help="continue the fine-tuning run from its checkpoint")
    g = p.add_argument_group("model (defaults depend on the device and, on a GPU, the corpus: CPU_DEFAULTS, cuda_defaults)")
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        g.add_argument("--" + name.replace("_", "-"), type=int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--bias", action="store_true",
                   help="biases in the LM's linear layers, as GPT-2: then fixed (a constant plan) adds no capacity")
    g.add_argument("--planner-layers", type=int, default=2)
    g.add_argument("--planner-embd", type=int, default=128)
    g = p.add_argument_group("schedule")
    for name in ("lm_iters", "planner_iters", "finetune_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters"):
        g.add_argument("--" + name.replace("_", "-"), type=int)
    g.add_argument("--planner-batch", type=int, default=64, help="documents per planner pretraining step")
    # measured (tune.py, the CPU defaults): 2e-3 ends at val perplexity 295, 1e-3 at 345, 4e-3 at 372
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of LM pretraining")
    g.add_argument("--planner-lr", type=float, default=2e-3, help="peak learning rate of planner pretraining")
    g.add_argument("--finetune-lr", type=float, default=1e-3, help="peak learning rate of fine-tuning (tune.py: half of --lr)")
    g.add_argument("--planner-finetune-lr", type=float, default=1e-4,
                   help="peak learning rate of a joint planner during fine-tuning")
    g.add_argument("--warmup-iters", type=int, default=100, help="per stage, capped at a fifth of its iterations")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0)
    return p


def get_args(argv=None):
    args = make_parser().parse_args(argv)
    args.device = resolve_device(args.device)
    if args.device != "cuda":
        fill_defaults(args, CPU_DEFAULTS)  # on a GPU they wait for the corpus: see cuda_defaults
    check_ranges(args, FLAG_RANGES)
    if args.n_embd is not None and args.n_head is not None:  # on a GPU the defaults come with the corpus
        check_shapes(args)
    check_method(args)
    return args


def fill_defaults(args, defaults):
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def check_shapes(args):
    if args.n_embd % args.n_head:
        raise TrainError(f"--n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}: change one of them")
    if args.planner_embd % PlannerConfig.n_head:
        raise TrainError(f"--planner-embd {args.planner_embd} must be a multiple of the planner's {PlannerConfig.n_head} heads")


# Every numeric flag's range, in one place: (flags, test, what the flag must be).
FLAG_RANGES = [
    (("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "eval_interval", "eval_iters",
      "planner_batch", "planner_layers", "planner_embd", "n_labels", "embed_dim", "synthetic_types"),
     lambda v: v >= 1, "at least 1"),
    (("lm_iters", "planner_iters", "finetune_iters"), lambda v: v >= 1,
     "at least 1 (every stage must train: fine-tuning an untrained LM or planner measures nothing)"),
    (("synthetic_docs",), lambda v: v >= 3, "at least 3 (train, val and test take one document each at least)"),
    (("seed", "warmup_iters"), lambda v: v >= 0, "zero or more"),
    (("lr", "planner_lr", "finetune_lr", "planner_finetune_lr", "temperature"), lambda v: 0 < v < math.inf,
     "a positive number"),
    (("weight_decay", "grad_clip", "planner_loss_weight"), lambda v: 0 <= v < math.inf, "zero or a positive number"),
    (("dropout",), lambda v: 0 <= v < 1, "at least 0 and below 1"),
    (("synthetic_ambiguity",), lambda v: 0 <= v <= 1, "a probability, from 0 to 1"),
]


def check_ranges(args, table):
    """Refuse the first flag outside its range (NaN is outside every range) with one line."""
    for names, ok, what in table:
        for name in names:
            value = getattr(args, name)
            if value is not None and not ok(value):
                raise TrainError(f"--{name.replace('_', '-')} must be {what}, got {value}")


def check_method(args):
    if args.mode not in MODES:
        raise TrainError(f"unknown --mode {args.mode!r}: choose one of {', '.join(MODES)}")
    if args.mode not in ESTIMATORS:
        if args.planner:
            raise TrainError(f"--mode {args.mode} uses no planner: drop --planner {args.planner}")
    else:
        args.planner = args.planner or ("frozen" if args.mode == "hard" else "joint")
        if args.mode == "hard" and args.planner == "joint" and args.planner_loss_weight == 0:
            raise TrainError("--mode hard sends no gradient to the planner: --planner joint needs "
                             "--planner-loss-weight > 0 (or use --planner frozen)")
    if args.planner_loss_weight and args.planner != "joint":
        raise TrainError("--planner-loss-weight only applies to a joint planner: add --planner joint")
    args.run = args.run or args.mode + (f"-{args.planner}" if args.planner else "")


def resolve_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available() or name == "mps" and not torch.backends.mps.is_available():
        raise TrainError(f"--device {name} is not available on this machine: use --device cpu or auto")
    return name


def autocast_dtype(args):
    if args.dtype != "auto":
        return getattr(torch, args.dtype)
    if args.device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if args.device == "cpu" and cpu_has_native_bf16() else torch.float32


def autocast(args):
    dtype = autocast_dtype(args)
    return torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16():
    """Without avx512_bf16 or AMX, bf16 matmuls on a CPU are emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: play safe
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def gpt_config(args):
    # The synthetic corpus has a closed vocabulary: its LM's head has a row per token the generator can
    # write (~700), not 50,257 rows for tokens that never occur, which made 97% of a small model's step.
    vocab = data.synthetic_vocab(args.seed, args.synthetic_types) if args.dataset == "synthetic" else None
    return GPTConfig(block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                     dropout=args.dropout, plan_dim=args.embed_dim, bias=args.bias, vocab=vocab)


def planner_config(args):
    return PlannerConfig(n_labels=args.n_labels, embed_dim=args.embed_dim, n_layer=args.planner_layers,
                         n_embd=args.planner_embd, dropout=args.dropout)


# ----------------------------------------------------------------------------- batches with plans

class SplitData:
    """One split of the corpus as tensors, and the batches cut from it."""

    def __init__(self, split, device):
        long = lambda a: torch.as_tensor(a.astype(np.int64), device=device)
        self.tokens, self.tok_sent, self.labels, self.doc_sent = map(long, (split.tokens, split.tok_sent, split.labels, split.doc_sent))
        self.emb = torch.as_tensor(split.emb, device=device)
        self.sent_doc = torch.repeat_interleave(torch.arange(len(split.doc_sent) - 1, device=device), self.doc_sent.diff())
        self.device = device

    def documents(self, docs, n_sent):
        """Sentence embeddings and labels of documents docs, their first n_sent sentences, zero-padded."""
        first = self.doc_sent[docs]
        grid = first[:, None] + torch.arange(n_sent, device=self.device)
        mask = grid < self.doc_sent[docs + 1][:, None]
        grid = grid.clamp_max(len(self.labels) - 1)
        return self.emb[grid] * mask[..., None], self.labels[grid], mask

    def lm_batch(self, starts, block_size):
        """Windows at starts. Position t is conditioned on the plan of the sentence of target t.

        The planner input holds the documents the targets belong to, from their first sentence on, so
        sentence s is planned from sentences < s of its own document, even those before the window.
        """
        pos = starts[:, None] + torch.arange(block_size + 1, device=self.device)
        window, tsent = self.tokens[pos], self.tok_sent[pos[:, 1:]]
        sents, which = torch.unique(tsent[tsent >= 0], return_inverse=True)
        plan_index = torch.full_like(tsent, -1)  # into sents; -1: the target is <|endoftext|>, no plan
        plan_index[tsent >= 0] = which
        docs, doc_row = torch.unique(self.sent_doc[sents], return_inverse=True)
        sent_pos = sents - self.doc_sent[self.sent_doc[sents]]
        emb, _, _ = self.documents(docs, int(sent_pos.max()) + 1 if len(sents) else 1)
        return dict(idx=window[:, :-1], targets=window[:, 1:], plan_index=plan_index, emb=emb,
                    doc_row=doc_row, sent_pos=sent_pos, labels=self.labels[sents])

    def planner_batch(self, docs):
        n = int((self.doc_sent[docs + 1] - self.doc_sent[docs]).max())
        emb, labels, mask = self.documents(docs, n)
        return dict(emb=emb, labels=labels, mask=mask)


def step_rng(seed, stage, step):
    """Batches depend on (seed, stage, step) alone: every mode sees the same ones, and a resumed run too."""
    return np.random.default_rng([seed, ["lm", "planner", "finetune"].index(stage), step])


# ----------------------------------------------------------------------------- what is trained

class PlannedLM(nn.Module):
    """The LM, the planner and the estimator, as one module: batch in, losses out."""

    def __init__(self, lm, planner, plans, planner_frozen=True):
        super().__init__()
        self.lm, self.planner, self.plans, self.planner_frozen = lm, planner, plans, planner_frozen
        # What this mode leaves unused is frozen, so that neither the optimizer nor DDP sees it.
        if planner is not None:
            planner.requires_grad_(not planner_frozen)
        plans.codebook.requires_grad_(plans.mode not in ("none", "fixed"))
        for b in lm.blocks:
            b.adapter.requires_grad_(plans.mode != "none")

    def train(self, mode=True):
        super().train(mode)
        if self.planner is not None and self.planner_frozen:
            self.planner.eval()  # a frozen planner has no dropout noise either
        return self

    def sentence_logits(self, emb, doc_row, sent_pos):
        if not self.plans.uses_planner:
            return None
        with torch.no_grad() if self.planner_frozen else contextlib.nullcontext():
            return self.planner(emb)[doc_row, sent_pos].float()

    def forward(self, idx, targets, plan_index, emb, doc_row, sent_pos, labels, generator=None):
        """-> (LM loss, the planner's cross-entropy on these sentences or None)."""
        logits = self.sentence_logits(emb, doc_row, sent_pos)
        vectors = self.plans(logits=logits, labels=labels, generator=generator)  # [n_sentences, D] or None
        plan = None
        if vectors is not None:
            vectors = torch.cat([vectors.new_zeros(1, vectors.shape[-1]), vectors])  # row 0: no plan
            plan = vectors[plan_index + 1].to(self.lm.wte.weight.dtype)
        _, loss = self.lm(idx, targets, plan)
        return loss, (nn.functional.cross_entropy(logits, labels) if logits is not None else None)


class PlannerObjective(nn.Module):
    """Stage (c): the planner alone, learning to predict the k-means label of the next sentence."""

    def __init__(self, planner):
        super().__init__()
        self.planner = planner

    def forward(self, emb, labels, mask):
        return planner_loss(self.planner(emb), labels, mask), None


# ----------------------------------------------------------------------------- the loop

def lr_at(step, iters, peak, warmup):
    """Linear warmup (over at most a fifth of the stage), then cosine decay to a tenth of the peak."""
    warmup = min(warmup, iters // 5)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, iters - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(net, lr, weight_decay, planner_lr_scale=1.0):
    """AdamW; no decay on gains, biases and vectors. A joint planner can learn at its own, slower pace."""
    planner = {id(p) for p in net.planner.parameters()} if isinstance(net, PlannedLM) and net.planner else set()
    groups = []
    for scale, params in ((1.0, [p for p in net.parameters() if id(p) not in planner]),
                          (planner_lr_scale, [p for p in net.parameters() if id(p) in planner])):
        params = [p for p in params if p.requires_grad]
        groups += [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": scale},
                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))


def identity(corpus):
    """What a checkpoint must agree with to be used on a corpus."""
    return {"tokenizer": data.GPT2_RANKS_SHA256, "labels": corpus.meta["key"]}


# Where a run is kept, and on what hardware: a run can continue elsewhere, with or without torch.compile.
NOT_THE_RUN = ("data_dir", "out_dir", "device", "compile", "resume")


def refuse_other_settings(saved, args, ckpt_path):
    """Continuing a run with other settings would make a run that no command describes."""
    changed = [k for k in saved if k not in NOT_THE_RUN and saved[k] != vars(args).get(k)]
    if changed:
        flags = lambda values: ", ".join(f"--{k.replace('_', '-')} {values.get(k)}" for k in changed)
        raise TrainError(f"--resume: {ckpt_path} was made with {flags(saved)}, not {flags(vars(args))}: "
                         f"continue with the same flags, or delete {ckpt_path.parent} to start the run over")


def checkpoint(net, args, corpus, stage, step, opt, done, best):
    ck = dict(stage=stage, step=step, done=done, config=vars(args), identity=identity(corpus),
              optimizer=opt.state_dict(), best_loss=best[0], best_step=best[1])
    if isinstance(net, PlannedLM):
        ck.update(model_args=dataclasses.asdict(net.lm.config), model=net.lm.state_dict(),
                  mode=net.plans.mode, plans=net.plans.state_dict())
    if net.planner is not None:
        ck.update(planner_args=dataclasses.asdict(net.planner.config), planner=net.planner.state_dict())
    return ck


def save(ck, path):
    with data.atomic_write(path) as tmp:
        torch.save(ck, tmp)


def keep_best(ckpt_path):
    """best.pt beside ckpt.pt: the checkpoint of the lowest validation loss so far, as a second name of
    the file just written (a hard link: no copy; a later ckpt.pt is a new file and leaves it alone)."""
    with data.atomic_write(ckpt_path.with_name("best.pt")) as tmp:
        os.remove(tmp)
        try:
            os.link(ckpt_path, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(ckpt_path, tmp)


def schedule(stage, iters, args, corpus):
    """-> (what one step reads, a line saying what the schedule means for this corpus, passes over it)."""
    world, split = Context.get().world, corpus.splits["train"]
    if stage == "planner":
        per_step, unit, have = args.planner_batch * args.grad_accum * world, "documents", len(split.doc_sent) - 1
    else:
        per_step, unit, have = args.batch_size * args.grad_accum * world * args.block_size, "tokens", len(split.tokens)
    passes = iters * per_step / have
    return per_step, (f"{stage}: {per_step:,} {unit} a step x {iters:,} steps = {iters * per_step:,} {unit}, "
                      f"{passes:.2f} passes over the {have:,} training {unit}"), passes


def load_checkpoint(path, device="cpu"):
    """A checkpoint holds tensors and plain values only, so it is loaded without running any code it may carry."""
    if not zipfile.is_zipfile(path):
        raise TrainError(f"{path} is damaged or not a checkpoint (cut short while copying?): delete it and "
                         "train again, or copy it again")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise TrainError(f"{path} holds more than tensors and plain values, so it was refused without running it "
                         f"({data.first_line(e)[:80]}...): use a checkpoint written by train.py") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise TrainError(f"{path} is damaged ({data.first_line(e)[:100]}): delete it and train again") from None


class StopRequest:
    """Ctrl-C in the loop: finish the step under way, then save and stop. A second Ctrl-C quits at once.

    A KeyboardInterrupt raised mid-step can land inside opt.step() and leave some parameter groups one
    update ahead of the others; a flag read between whole steps never saves half a step.
    """

    def __enter__(self):
        self.requested = False
        try:
            self.previous = signal.signal(signal.SIGINT, self.handle)
        except ValueError:  # not the main thread, where only the main thread may catch signals
            self.previous = None
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step (Ctrl-C again quits without saving it)", file=sys.stderr)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def agreed(self, device):
        """Under DDP every process stops at the same step, whichever of them got the signal."""
        if not dist.is_initialized():
            return self.requested
        flag = torch.tensor(float(self.requested), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)


def kept(saved, path):
    """The sentence that ends a stopped run's message: it names a checkpoint only if this run wrote or read it."""
    return f"The last good checkpoint (step {saved}) is kept at {path}" if saved is not None else "No checkpoint was written"


def train(net, stage, iters, lr, args, corpus, ckpt_path, batch_fn, val_fn, resume):
    """The loop shared by every stage. batch_fn(step, micro) -> dict of tensors for net.forward."""
    ctx = Context.get()
    opt = make_optimizer(net, lr, args.weight_decay, args.planner_finetune_lr / args.finetune_lr)
    step, saved, best, log_path = 0, None, (math.inf, None), ckpt_path.parent / "log.jsonl"
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, args.device)
        if stage == "finetune":  # a pretrained stage's folder is keyed by its settings; a run's is only named
            refuse_other_settings(ck["config"], args, ckpt_path)
        load_state(net, ck)
        opt.load_state_dict(ck["optimizer"])
        step = saved = ck["step"]
        best = ck.get("best_loss", math.inf), ck.get("best_step")
    elif ctx.master:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    if args.compile and isinstance(net, PlannedLM):
        net.lm.compile()  # the LM only: its shapes are fixed, the planner's change with every batch
    model = DDP(net) if ctx.world > 1 else net
    per_step, plan, passes = schedule(stage, iters, args, corpus)
    if ctx.master:
        print(plan)
        if stage != "planner" and passes > WARN_PASSES:
            print(f"warning: {passes:.0f} passes over the corpus: the LM will overfit long before the end (the "
                  f"checkpoint of the best val loss is kept): use fewer --{stage}-iters, a smaller model, "
                  "--dropout 0.1, or a larger corpus", file=sys.stderr)
    bar = tqdm(range(step, iters), initial=step, total=iters, desc=f"{stage} [{args.run if stage == 'finetune' else 'shared'}]",
               disable=None if ctx.master else True, dynamic_ncols=True)
    t0, done, first = time.time(), step, step
    with StopRequest() as stop:
        try:
            for step in bar:
                if stop.agreed(args.device):
                    break
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, iters, lr, args.warmup_iters) * group["lr_scale"]
                torch.manual_seed(args.seed * 1_000_003 + step)  # dropout noise: also a function of the step
                total = torch.zeros((), device=args.device)
                for micro in range(args.grad_accum):
                    sync = micro == args.grad_accum - 1 or ctx.world == 1
                    with autocast(args), (contextlib.nullcontext() if sync else model.no_sync()):
                        loss, aux = model(**batch_fn(step, micro))
                        if aux is not None and args.planner_loss_weight:
                            loss = loss + args.planner_loss_weight * aux
                    (loss / args.grad_accum).backward()
                    total += loss.detach() / args.grad_accum
                if ctx.world > 1:
                    dist.all_reduce(total, op=dist.ReduceOp.AVG)
                if not torch.isfinite(total):
                    raise TrainError(f"{stage}: the loss became {total.item()} at step {step + 1}; stopped. "
                                     f"{kept(saved, ckpt_path)}: lower the learning rate and rerun")
                if args.grad_clip:
                    nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], args.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                done = step + 1
                rate = (done - first) * per_step / (time.time() - t0)
                bar.set_postfix(loss=f"{total.item():.3f}", ppl=f"{math.exp(min(total.item(), 50)):.1f}",
                                **{"tok/s" if stage != "planner" else "docs/s": f"{rate:,.0f}"})
                if done % args.eval_interval == 0 or done == iters:
                    record = dict(step=done, train_loss=total.item(), lr=opt.param_groups[0]["lr"], per_s=round(rate, 1),
                                  seconds=round(time.time() - t0, 1), **val_fn())
                    if bad := [f"{k} {v}" for k, v in record.items() if not math.isfinite(v)]:
                        raise TrainError(f"{stage}: at step {done} {', '.join(bad)}; stopped without saving "
                                         f"that step. {kept(saved, ckpt_path)}: lower the learning rate and rerun")
                    score = record.get("val_loss", record.get("planner_val_loss"))
                    improved = score < best[0]
                    best = (score, done) if improved else best
                    if ctx.master:
                        bar.write(f"{stage} step {done}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "step")
                                  + (" (best so far)" if improved else f" (best: step {best[1]})"))
                        with open(log_path, "a") as f:
                            f.write(json.dumps(dict(record, best_step=best[1])) + "\n")
                        save(checkpoint(net, args, corpus, stage, done, opt, done == iters, best), ckpt_path)
                        if improved:
                            keep_best(ckpt_path)
                    saved = done
        except KeyboardInterrupt:  # the second Ctrl-C, mid-step: nothing of that step is kept
            raise TrainError(f"interrupted twice during step {done + 1} of {stage}: that step was not saved. "
                             f"{kept(saved, ckpt_path)}") from None
        finally:
            bar.close()
    if stop.requested:
        if saved != done:
            if ctx.master:
                save(checkpoint(net, args, corpus, stage, done, opt, done == iters, best), ckpt_path)
            saved = done
        raise TrainError(f"interrupted after step {done} of {stage}: saved {ckpt_path}; "
                         f"continue with the same command{' and --resume' if stage == 'finetune' else ''}")
    if best[1] not in (None, done):
        if ctx.master:
            print(f"{stage}: the best val loss ({best[0]:.4g}) was at step {best[1]} of {done}: going on with that "
                  f"checkpoint, {ckpt_path.with_name('best.pt')}")
        if ctx.world > 1:
            dist.barrier()  # rank 0 wrote it
        load_state(net, load_checkpoint(ckpt_path.with_name("best.pt"), args.device))
    return net


def load_state(net, ck):
    if isinstance(net, PlannedLM):
        net.lm.load_state_dict(ck["model"])
        if "plans" in ck and ck.get("mode") == net.plans.mode:
            net.plans.load_state_dict(ck["plans"])
    if net.planner is not None and "planner" in ck:
        net.planner.load_state_dict(ck["planner"])


@dataclasses.dataclass
class Context:
    """Where this process stands: alone, or rank `rank` of `world` under torchrun."""
    rank: int = 0
    world: int = 1

    @property
    def master(self):
        return self.rank == 0

    @staticmethod
    def get():
        return Context(dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else Context()


# ----------------------------------------------------------------------------- the stages

def stage_dir(args, name, corpus, *settings):
    """Pretrained stages are keyed by everything that changes their result, so modes share them."""
    key = json.dumps([identity(corpus), args.seed, autocast_dtype(args).__repr__(), Context.get().world,
                      *settings], sort_keys=True, default=str)
    return Path(args.out_dir) / "pretrain" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def finished(ckpt_path, net, args):
    """Load a pretrained stage that an earlier run completed; False if there is none (or it was cut short)."""
    if not ckpt_path.exists():
        return False
    try:
        ck = load_checkpoint(ckpt_path, args.device)
        if ck["done"]:  # what the stage hands on: its best weights by validation loss
            load_state(net, ck if ck.get("best_step", ck["step"]) == ck["step"] else
                       load_checkpoint(ckpt_path.with_name("best.pt"), args.device))
    except TrainError as e:  # shared by every run in this out-dir: say which folder to delete
        raise TrainError(f"pretrained stage {ckpt_path.parent}: {e} (rm -r {ckpt_path.parent} retrains it)") from None
    return ck["done"]


def fixed_windows(sd, args, ctx):
    """The same val windows at every evaluation, evenly spaced over the stream; this process's share."""
    n = args.eval_iters * ctx.world * args.batch_size
    starts = np.linspace(0, len(sd.tokens) - args.block_size - 2, n).astype(np.int64)
    return [sd.lm_batch(torch.as_tensor(s, device=args.device), args.block_size)
            for s in starts.reshape(args.eval_iters, ctx.world, args.batch_size)[:, ctx.rank]]


@torch.no_grad()
def val_loss(net, batches, args):
    net.eval()
    with autocast(args):
        loss = torch.stack([net(**b)[0].float() for b in batches]).mean()
    if dist.is_initialized():
        dist.all_reduce(loss, op=dist.ReduceOp.AVG)  # every window has the same number of targets
    net.train()
    return {"val_loss": loss.item()}


def lm_batches(sd, args, stage):
    ctx = Context.get()

    def batch(step, micro):
        rng = step_rng(args.seed, stage, step)
        n = args.batch_size * args.grad_accum * ctx.world  # the global batch; this process takes its share
        starts = rng.integers(0, len(sd.tokens) - args.block_size - 1, n)
        mine = starts.reshape(args.grad_accum, ctx.world, args.batch_size)[micro, ctx.rank]
        b = sd.lm_batch(torch.as_tensor(mine, device=args.device), args.block_size)
        share = ctx.rank * args.grad_accum + micro  # gumbel noise: a function of (seed, step, share) too
        b["generator"] = torch.Generator(args.device).manual_seed(int(rng.integers(2**62)) + share)
        return b
    return batch


def pretrain_lm(args, corpus, splits):
    cfg = gpt_config(args)
    out = stage_dir(args, "lm", corpus, dataclasses.asdict(cfg), args.lm_iters, args.lr, args.batch_size,
                    args.grad_accum, min(args.warmup_iters, args.lm_iters // 5), args.weight_decay, args.grad_clip)
    torch.manual_seed(args.seed)
    net = PlannedLM(GPT(cfg), None, Plans("none", corpus.codebook)).to(args.device)
    ck = out / "ckpt.pt"
    if finished(ck, net, args):
        return net.lm, out
    val = fixed_windows(splits["val"], args, Context.get())
    train(net, "lm", args.lm_iters, args.lr, args, corpus, ck, lm_batches(splits["train"], args, "lm"),
          lambda: val_loss(net, val, args), resume=True)
    return net.lm, out


def pretrain_planner(args, corpus, splits):
    cfg = planner_config(args)
    out = stage_dir(args, "planner", corpus, dataclasses.asdict(cfg), args.planner_iters, args.planner_lr,
                    args.planner_batch, min(args.warmup_iters, args.planner_iters // 5), args.weight_decay, args.grad_clip)
    torch.manual_seed(args.seed)
    net = PlannerObjective(Planner(cfg, corpus.codebook)).to(args.device)
    ck = out / "ckpt.pt"
    if finished(ck, net, args):
        return net.planner, out
    train_sd, val_sd = splits["train"], splits["val"]
    n_docs, ctx = len(train_sd.doc_sent) - 1, Context.get()

    def batch(step, micro):
        docs = step_rng(args.seed, "planner", step).integers(0, n_docs, (args.grad_accum, ctx.world, args.planner_batch))
        return train_sd.planner_batch(torch.as_tensor(docs[micro, ctx.rank], device=args.device))

    train(net, "planner", args.planner_iters, args.planner_lr, args, corpus, ck, batch,
          lambda: planner_metrics(net.planner, val_sd), resume=True)
    return net.planner, out


@torch.no_grad()
def sentence_logits(planner, sd, chunk=256):
    """The planner's logits for every sentence of a split, in split order (row s from sentences < s)."""
    was_training, n_docs, logits = planner.training, len(sd.doc_sent) - 1, []
    planner.eval()
    for lo in range(0, n_docs, chunk):
        b = sd.planner_batch(torch.arange(lo, min(lo + chunk, n_docs), device=sd.device))
        logits.append(planner(b["emb"]).float()[b["mask"]])
    planner.train(was_training)
    return torch.cat(logits)


@torch.no_grad()
def planner_metrics(planner, sd):
    """Planner loss and top-1/top-5 accuracy over every sentence of a split."""
    logits, every = sentence_logits(planner, sd), torch.ones_like(sd.labels, dtype=torch.bool)
    return {"planner_val_loss": planner_loss(logits, sd.labels, every).item(),
            **{f"planner_{k}": v for k, v in accuracy(logits, sd.labels, every).items()}}


def finetune(args, corpus, splits, lm, planner):
    plans = Plans(args.mode, corpus.codebook, args.temperature)
    net = PlannedLM(lm, planner if plans.uses_planner else None, plans, args.planner != "joint").to(args.device)
    out = Path(args.out_dir) / args.run
    val = fixed_windows(splits["val"], args, Context.get())

    def metrics():
        m = val_loss(net, val, args)
        return {**m, **planner_metrics(net.planner, splits["val"])} if net.planner is not None else m

    train(net, "finetune", args.finetune_iters, args.finetune_lr, args, corpus, out / "ckpt.pt",
          lm_batches(splits["train"], args, "finetune"), metrics, resume=args.resume)
    return net, out, metrics()


def unigram_loss(corpus, batches, vocab=None):
    """Cross-entropy of add-one-smoothed train-split token frequencies on the same val windows (over the
    LM's closed vocabulary, if it has one)."""
    counts = np.bincount(corpus.splits["train"].tokens, minlength=data.VOCAB_SIZE) + 1.0
    if vocab is not None:
        counts[np.setdiff1d(np.arange(data.VOCAB_SIZE), vocab)] = 0
    with np.errstate(divide="ignore"):  # log 0 = -inf for tokens outside the vocabulary: never targets
        logp = torch.as_tensor(np.log(counts / counts.sum()))
    return float(np.mean([-logp[b["targets"].cpu()].mean().item() for b in batches]))


def setup_distributed(args):
    if "RANK" not in os.environ:
        return
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"


def main(argv=None):
    try:
        args = get_args(argv)
        resume_from = Path(args.out_dir) / args.run / "ckpt.pt"
        if args.resume and not resume_from.exists():  # before hours of pretraining, not after
            raise TrainError(f"--resume: there is no checkpoint at {resume_from}: drop --resume to start the run")
        setup_distributed(args)
        ctx = Context.get()
        if ctx.world > 1 and not ctx.master:
            dist.barrier()  # rank 0 builds the data cache first
        corpus = data.load_from_args(args)
        if ctx.world > 1 and ctx.master:
            dist.barrier()
        if args.device.startswith("cuda"):
            train_split = corpus.splits["train"]
            fill_defaults(args, cuda_defaults(len(train_split.tokens), len(train_split.doc_sent) - 1, ctx.world,
                                              args.planner_batch))
            check_shapes(args)
        check_split_sizes(corpus, args)
        splits = {k: SplitData(sp, args.device) for k, sp in corpus.splits.items()}
        t0 = time.time()
        lm, lm_dir = pretrain_lm(args, corpus, splits)
        planner, planner_dir = pretrain_planner(args, corpus, splits)
        net, out, final = finetune(args, corpus, splits, lm, planner)
        if ctx.master:
            report(args, corpus, splits, out, final, lm_dir, planner_dir, time.time() - t0)
    except (TrainError, data.DataError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # outside the training loops, which stop between steps themselves
        sys.exit("error: interrupted; every checkpoint written so far is whole: run the same command to go on")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def check_split_sizes(corpus, args):
    """Training and validation windows need block_size + 2 tokens of their split's stream."""
    docs = sum(len(sp.doc_sent) - 1 for sp in corpus.splits.values())
    per_doc = sum(len(sp.tokens) for sp in corpus.splits.values()) / docs
    for name, share in (("train", 1 - data.VAL_FRAC - data.TEST_FRAC), ("val", data.VAL_FRAC)):
        n = len(corpus.splits[name].tokens)
        if n < args.block_size + 2:
            lower = f"lower --block-size to at most {n - 2}, or " if n > 2 else ""
            need = math.ceil((args.block_size + 2) / per_doc / share)
            raise TrainError(f"the {name} split has {n} tokens, fewer than --block-size {args.block_size} + 2: {lower}"
                             f"use a corpus of about {need} documents or more (it has {docs}, of ~{per_doc:.0f} tokens each)")


def report(args, corpus, splits, out, final, lm_dir, planner_dir, seconds):
    world = Context.get().world
    uni = unigram_loss(corpus, [b for r in range(world) for b in fixed_windows(splits["val"], args, Context(r, world))],
                       gpt_config(args).vocab)
    print(f"run {out} ({args.mode}{', planner ' + args.planner if args.planner else ''}) in {seconds:.0f} s; "
          f"pretrained LM {lm_dir}, planner {planner_dir}")
    print(f"val perplexity {math.exp(final['val_loss']):.1f} vs unigram {math.exp(uni):.1f} "
          f"(on {args.eval_iters * args.batch_size * world} fixed val windows; `python eval.py {out}` gives the exact figure)")
    if "planner_top1" in final:
        print(f"planner val accuracy: top-1 {final['planner_top1']:.3f}, top-5 {final['planner_top5']:.3f}")


if __name__ == "__main__":
    main()

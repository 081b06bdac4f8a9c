"""
Train the planner-conditioned GPT end to end, in the stages of the method:

  (a) data: sentences, embeddings, k-means plan labels and the codebook (data.py, cached)
  (b) pretrain the LM with no plans                   \\ cached under <out-dir>/pretrain (or
  (c) pretrain the planner on the labels              / --pretrain-dir), shared by every mode;
                                                        (b) reads no label, so one LM serves
                                                        every K
      (--embedder lm: between (b) and (c) the labels are made again, from the LM's own states)
  (d) fine-tune the LM with plans from one estimator (mix.py), planner frozen or joint

    python train.py                                  # wiki corpus, --mode soft --planner joint
    python train.py --mode hard                      # planner frozen (the default for hard)
    python train.py --mode st                        # straight-through, planner joint
    python train.py --mode oracle                    # the true label of each sentence: a bound
    python train.py --planner frozen --truth-weight 0.5   # soft plans halfway to the oracle
    python train.py --embedder lm                    # labels made in the pretrained LM's space
    python train.py --dataset synthetic --device cpu
    torchrun --standalone --nproc_per_node 2 train.py   # DDP: --batch-size windows a process

With the same --seed every mode starts from the same pretrained weights and sees the same batches,
so differences come from the estimator alone. Then compare runs with
`python eval.py out/none out/soft-joint ...`.
"""


import argparse
import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import data
import runtime
from data import SplitData
from mix import ESTIMATORS, MODES, PlannedLM, Plans
from model import GPT, GPTConfig
from planner import BigramPlanner, Planner, PlannerConfig, planner_loss, planner_metrics
from runtime import Context, TrainError


# Defaults that depend on the device; an explicit flag always wins. The CPU set is a budget: 2,048
# tokens a step and 550 LM steps, every stage on the wiki corpus in 13 minutes on 2 cores with
# native bf16 (an Intel Xeon), 31 without it (an AMD EPYC: autocast stays float32). Within that
# budget tune.py measured (exact val perplexity of the default run, a table of RESULTS.md):
CPU_DEFAULTS = dict(n_layer=4, n_head=4, n_embd=256, dropout=0.0,
                    # measured: 32-token windows, 64 a step: val perplexity 295; 64 x 32: 323;
                    # 128 x 16: 359
                    block_size=32, batch_size=64,
                    grad_accum=1,
                    # measured: the LM's steps split 400/150 beat 275/275 and 468/82
                    lm_iters=400, finetune_iters=150,
                    planner_iters=500, eval_interval=50, eval_iters=8)


# ----------------------------------------------------------------------------- configuration


def make_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data.add_data_args(p)
    g = p.add_argument_group("method")
    g.add_argument("--mode", default="soft", help=f"how plans reach the LM: {', '.join(MODES)}")
    g.add_argument("--planner", choices=("frozen", "joint", "bigram"),
                   help="default: frozen for hard, joint for st, soft, gumbel; bigram: a label "
                        "bigram in the planner's place (counted, never trained), the reference a "
                        "planner must beat")
    g.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature of st/soft/gumbel")
    g.add_argument("--truth-weight", type=float, default=0.0,
                   help="soft plans from w onehot(true label) + (1-w) the planner's distribution: "
                        "0 the planner's plans, 1 the oracle's, between them the curve of plan "
                        "quality")
    g.add_argument("--embedder", choices=("tfidf", "lm"), default="tfidf",
                   help="what the labels are made from: tfidf, TF-IDF + SVD of each sentence's "
                        "tokens; lm, the pretrained LM's hidden states averaged over each "
                        "sentence (labels in the space of the LM that reads the plans)")
    g.add_argument("--planner-loss-weight", type=float, default=0.0,
                   help="keep the planner's own cross-entropy during joint training "
                        "(0: pure end-to-end)")
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", default="out",
                   help="runs go to <out-dir>/<run>/, pretrained stages to <out-dir>/pretrain/")
    g.add_argument("--pretrain-dir",
                   help="where the pretrained stages go instead (e.g. one folder for several "
                        "out-dirs: each stage is keyed by all that changes it)")
    g.add_argument("--run", help="run name (default: the mode, then -frozen, -joint or -bigram, "
                                 "then -truth<w> for a truth weight)")
    g.add_argument("--seed", type=int, default=0,
                   help="data split, labels, initial weights, batches")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="autocast dtype; auto: bfloat16 where the device computes it natively")
    g.add_argument("--compile", action="store_true", help="torch.compile the LM")
    g.add_argument("--resume", action="store_true",
                   help="continue the fine-tuning run from its checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in <out-dir>/<run> (without it, that is refused)")
    add_model_and_schedule_args(p)
    return p


def add_model_and_schedule_args(p):
    g = p.add_argument_group("model (defaults depend on the device and, on a GPU, the corpus: "
                             "CPU_DEFAULTS, cuda_defaults)")
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        g.add_argument("--" + name.replace("_", "-"), type=int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--bias", action="store_true",
                   help="biases in the LM's linear layers, as GPT-2: then fixed (a constant plan) "
                        "adds no capacity")
    g.add_argument("--init-from", metavar="gpt2|gpt2-medium|FOLDER",
                   help="start from GPT-2's weights (downloaded once, or a folder with "
                        "config.json + model.safetensors) instead of pretraining an LM: stage (b) "
                        "is skipped (--lm-iters, --lr unused) and the shape is GPT-2's")
    g.add_argument("--train-lm", choices=("all", "adapters"), default="all",
                   help="what fine-tuning trains of the LM: all its weights, or only the plan "
                        "adapters, the LM frozen as in the original code (the plans' own "
                        "parameters and a joint planner learn either way)")
    g.add_argument("--adapter-from", type=int, default=0,
                   help="the first layer (counted from 0) with a plan adapter (the original "
                        "code: 2)")
    g.add_argument("--planner-layers", type=int, default=2)
    g.add_argument("--planner-embd", type=int, default=128)
    g = p.add_argument_group("schedule")
    for name in ("lm_iters", "planner_iters", "finetune_iters", "batch_size", "grad_accum",
                 "eval_interval", "eval_iters"):
        g.add_argument("--" + name.replace("_", "-"), type=int)
    g.add_argument("--planner-batch", type=int, default=64,
                   help="documents per planner pretraining step")
    # measured (tune.py, the CPU defaults): 2e-3 ends at val perplexity 295, 1e-3 at 345,
    # 4e-3 at 372
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of LM pretraining")
    g.add_argument("--planner-lr", type=float, default=2e-3,
                   help="peak learning rate of planner pretraining")
    g.add_argument("--finetune-lr", type=float, default=1e-3,
                   help="peak learning rate of fine-tuning (tune.py: half of --lr)")
    g.add_argument("--planner-finetune-lr", type=float, default=1e-4,
                   help="peak learning rate of a joint planner during fine-tuning")
    g.add_argument("--warmup-iters", type=int, default=100,
                   help="per stage, capped at a fifth of its iterations")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0)


def get_args(argv=None):
    args = make_parser().parse_args(argv)
    args.device = runtime.resolve_device(args.device)
    # kept in the checkpoint: eval.py, sample.py, explore.py find the cache from any folder
    args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else args.data_dir
    if args.init_from and (given := [f"--{k.replace('_', '-')}" for k in ("n_layer", "n_head",
                                                                          "n_embd")
                                     if getattr(args, k) is not None] + ["--bias"] * args.bias):
        raise TrainError(f"--init-from {args.init_from} takes the LM's shape from its weights: "
                         f"drop {' '.join(given)}")
    if args.device != "cuda":  # on a GPU the defaults wait for the corpus: see cuda_defaults
        runtime.fill_defaults(args, CPU_DEFAULTS)
    runtime.check_ranges(args, runtime.FLAG_RANGES)
    if args.synthetic_ambiguity and args.dataset != "synthetic":
        raise TrainError("--synthetic-ambiguity shapes the synthetic corpus only: add --dataset "
                         "synthetic")
    if args.n_embd is not None and args.n_head is not None:
        runtime.check_shapes(args, PlannerConfig.n_head)
    if args.n_layer is not None and args.n_embd is not None and not args.init_from:
        check_adapters(args)  # on a GPU, once the corpus sets the shape (load_data)
    check_method(args)
    return args


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
        if args.mode == "st" and args.planner != "joint":
            raise TrainError(f"--mode st with a {args.planner} planner is hard exactly (they "
                             "differ only in the gradient sent to the planner): use --mode hard, "
                             "or --planner joint")
    if args.planner_loss_weight and args.planner != "joint":
        raise TrainError("--planner-loss-weight only applies to a joint planner: "
                         "add --planner joint")
    if args.truth_weight and args.mode != "soft":
        raise TrainError(f"--truth-weight mixes the true label into soft plans: use --mode soft, "
                         f"not {args.mode}")
    args.run = args.run or (args.mode + (f"-{args.planner}" if args.planner else "")
                            + (f"-truth{args.truth_weight:g}" if args.truth_weight else ""))


def gpt_config(args, corpus):
    return GPTConfig(block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                     n_embd=args.n_embd, dropout=args.dropout, plan_dim=args.embed_dim,
                     bias=args.bias, adapter_from=args.adapter_from,
                     vocab_size=len(corpus.vocab) if corpus.vocab else data.VOCAB_SIZE)


def planner_config(args):
    return PlannerConfig(n_labels=args.n_labels, embed_dim=args.embed_dim,
                         n_layer=args.planner_layers, n_embd=args.planner_embd,
                         dropout=args.dropout)


# ----------------------------------------------------------------------------- the stages


def step_rng(seed, stage, step):
    """Batches depend on (seed, stage, step) alone: every mode sees the same ones, and a resumed run
    too."""
    return np.random.default_rng([seed, ["lm", "planner", "finetune"].index(stage), step])


def lm_batches(sd, args, stage):
    """-> batch(step, micro), the LM's batches of a stage."""
    ctx = Context.get()  # under torchrun, process ctx.rank of ctx.world (alone: 0 of 1)

    def batch(step, micro):
        rng = step_rng(args.seed, stage, step)
        # the global batch; this process takes its share
        n = args.batch_size * args.grad_accum * ctx.world
        starts = rng.integers(0, len(sd.tokens) - args.block_size - 1, n)
        mine = starts.reshape(args.grad_accum, ctx.world, args.batch_size)[micro, ctx.rank]
        b = sd.lm_batch(torch.as_tensor(mine), args.block_size)
        # gumbel noise: a function of (seed, step, share) too
        share = ctx.rank * args.grad_accum + micro
        b["generator"] = torch.Generator(args.device).manual_seed(int(rng.integers(2**62)) + share)
        return b
    return batch


def fixed_windows(sd, args, ctx):
    """The same val windows at every evaluation, evenly spaced over the stream; this process's
    share."""
    n = args.eval_iters * ctx.world * args.batch_size
    starts = np.linspace(0, len(sd.tokens) - args.block_size - 2, n).astype(np.int64)
    return [sd.lm_batch(torch.as_tensor(s), args.block_size)
            for s in starts.reshape(args.eval_iters, ctx.world, args.batch_size)[:, ctx.rank]]


@torch.no_grad()
def val_loss(net, batches, args):
    net.eval()
    with runtime.autocast(args):
        loss = torch.stack([net(**b)[0].float() for b in batches]).mean()
    if dist.is_initialized():
        dist.all_reduce(loss, op=dist.ReduceOp.AVG)  # every window has the same number of targets
    net.train()
    return {"val_loss": loss.item()}


def pretrain_lm(args, corpus, splits, resume_from=None):
    """Stage (b), or GPT-2's weights (--init-from): -> (the LM, where it comes from). resume_from: a
    resumed run's checkpoint, which holds every weight: then only the LM's shape is built."""
    if args.init_from:
        return pretrained_lm(args, resume_from), args.init_from
    cfg = gpt_config(args, corpus)
    # No label reaches this stage: it is keyed by the tokens alone, so one LM serves every K (not
    # every D: the adapters are D wide), and mode none reads no codebook, so it gets one zero row.
    # Nor does it use an adapter: it has them in every layer, and those below --adapter-from are
    # dropped after, so one LM serves every --adapter-from too. Options added later key it only
    # when they are set, so the LMs trained before are found.
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k != "adapter_from" and not (k == "gelu" and v == GPTConfig.gelu)}
    out = runtime.stage_dir(args, "lm", corpus.identity(labels=False), settings,
                            args.lm_iters, args.lr, args.batch_size, args.grad_accum,
                            min(args.warmup_iters, args.lm_iters // 5), args.weight_decay,
                            args.grad_clip)
    torch.manual_seed(args.seed)
    net = PlannedLM(GPT(dataclasses.replace(cfg, adapter_from=0)), None,
                    Plans("none", np.zeros((1, args.embed_dim)))).to(args.device)
    ck = out / "ckpt.pt"
    if not (runtime.finished(ck, net, args) or resume_from):
        val = fixed_windows(splits["val"], args, Context.get())
        with runtime.folder_lock(out, Context.get().master):  # every run of this out-dir shares it
            train(net, "lm", args.lm_iters, args.lr, args, corpus, ck,
                  lm_batches(splits["train"], args, "lm"),
                  lambda: val_loss(net, val, args), resume=True)
    for block in net.lm.blocks[:args.adapter_from]:
        block.adapter = None
    net.lm.config = cfg
    return net.lm, out


def pretrained_lm(args, resume_from=None):
    """GPT-2's weights (--init-from), its shape recorded in args; for a resumed run, the shape its
    checkpoint names (no file read, no download)."""
    if resume_from:
        lm = GPT(GPTConfig(**runtime.load_checkpoint(resume_from)["model_args"]))
    else:
        with runtime.rank0_first():  # under torchrun one process downloads, the others wait
            lm = GPT.from_pretrained(args.init_from, args.data_dir, block_size=args.block_size,
                                     plan_dim=args.embed_dim, dropout=args.dropout,
                                     adapter_from=args.adapter_from)
    args.n_layer, args.n_head, args.n_embd, args.bias = (lm.config.n_layer, lm.config.n_head,
                                                         lm.config.n_embd, True)
    check_adapters(args)
    return lm.to(args.device)


def lm_labels(args, corpus, splits, lm, resume_from=None):
    """Stage (a) again, after (b) (--embedder lm): the labels made in the pretrained LM's space. A
    resumed run names its labels: from the cache, else made again by its pretrained LM (loaded,
    or trained again where it is gone) and checked to be the same."""
    if resume_from:
        key = runtime.load_checkpoint(resume_from)["identity"]["labels"]
        with runtime.rank0_first():
            found = data.lm_labelled_from_cache(corpus, key, args.data_dir, missing_ok=True)
        if found is not None:
            return found
        lm = pretrain_lm(args, corpus, splits)[0]
    with runtime.rank0_first():
        made = data.lm_labelled(corpus, lm, args.data_dir)
    if resume_from and made.meta["key"] != key:
        raise TrainError(f"--resume: the labels of {resume_from} are not in the cache, and its "
                         f"pretrained LM, made again, makes other labels: start the run over "
                         f"with --overwrite")
    return made


def check_adapters(args):
    """Checks that need the LM's shape (with --init-from, once its weights are read)."""
    if args.adapter_from >= args.n_layer:
        raise TrainError(f"--adapter-from {args.adapter_from}: the LM has {args.n_layer} layers "
                         f"(0 to {args.n_layer - 1}), so no plan would reach it: use at most "
                         f"{args.n_layer - 1}")
    if args.embedder == "lm" and args.embed_dim > args.n_embd:
        raise TrainError(f"--embed-dim {args.embed_dim} is wider than the LM's {args.n_embd} "
                         f"hidden units that --embedder lm reads: use at most {args.n_embd}")


class PlannerObjective(nn.Module):
    """Stage (c): the planner alone, learning to predict the k-means label of the next sentence."""

    def __init__(self, planner):
        super().__init__()
        self.planner = planner

    def forward(self, emb, labels, mask):  # (loss, planner_ce) as the loop expects; the loss is it
        return planner_loss(self.planner(emb), labels, mask), None


def pretrain_planner(args, corpus, splits, shape_only=False):
    """Stage (c), or the label bigram (--planner bigram): -> (the planner, where it comes from).
    shape_only: a resumed run's checkpoint holds the planner, so an untrained one is not trained."""
    if args.planner == "bigram":  # counted, not trained
        labelled = corpus.splits["train"]
        planner = BigramPlanner.fit(corpus.codebook, labelled.labels, labelled.doc_sent)
        return planner.to(args.device), None
    cfg = planner_config(args)
    out = runtime.stage_dir(args, "planner", corpus.identity(), dataclasses.asdict(cfg),
                            args.planner_iters, args.planner_lr, args.planner_batch,
                            min(args.warmup_iters, args.planner_iters // 5), args.weight_decay,
                            args.grad_clip)
    torch.manual_seed(args.seed)
    net = PlannerObjective(Planner(cfg, corpus.codebook)).to(args.device)
    ck = out / "ckpt.pt"
    if runtime.finished(ck, net, args) or shape_only:
        return net.planner, out
    train_sd, val_sd = splits["train"], splits["val"]
    n_docs, ctx = len(train_sd.doc_sent) - 1, Context.get()

    def batch(step, micro):
        docs = step_rng(args.seed, "planner", step).integers(
            0, n_docs, (args.grad_accum, ctx.world, args.planner_batch))
        return train_sd.planner_batch(torch.as_tensor(docs[micro, ctx.rank]))

    with runtime.folder_lock(out, Context.get().master):
        train(net, "planner", args.planner_iters, args.planner_lr, args, corpus, ck, batch,
              lambda: planner_metrics(net.planner, val_sd), resume=True)
    return net.planner, out


def finetune(args, corpus, splits, lm, planner):
    """Stage (d): the LM with plans from --mode, the planner frozen or joint. -> (the conditioned
    model, its folder, its final val metrics)."""
    plans = Plans(args.mode, corpus.codebook, args.temperature, args.truth_weight)
    net = PlannedLM(lm, planner if plans.uses_planner else None, plans,
                    args.planner != "joint").to(args.device)
    if args.train_lm == "adapters":  # the LM's own weights frozen, as in the original code
        for name, p in net.lm.named_parameters():
            if ".adapter." not in name:
                p.requires_grad_(False)
    out = Path(args.out_dir) / args.run
    val = fixed_windows(splits["val"], args, Context.get())

    def metrics():
        m = val_loss(net, val, args)
        return ({**m, **planner_metrics(net.planner, splits["val"])} if net.planner is not None
                else m)

    if not any(p.requires_grad for p in net.parameters()):  # none, the LM frozen: the LM as it is
        final = metrics()
        runtime.save_untrained(net, args, corpus, out / "ckpt.pt", final)
        return net, out, final
    train(net, "finetune", args.finetune_iters, args.finetune_lr, args, corpus, out / "ckpt.pt",
          lm_batches(splits["train"], args, "finetune"), metrics, resume=args.resume,
          planner_lr_scale=args.planner_finetune_lr / args.finetune_lr)
    return net, out, metrics()


# ----------------------------------------------------------------------------- the loop


def lr_at(step, iters, peak, warmup):
    """Linear warmup (over at most a fifth of the stage), then cosine decay to a tenth of the
    peak."""
    warmup = min(warmup, iters // 5)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, iters - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(net, lr, weight_decay, planner_lr_scale=1.0):
    """AdamW; no decay on gains, biases and single vectors (fixed's plan vector among them); the
    codebook, a matrix of label embeddings, decays as the token embeddings do. A joint planner can
    learn at its own, slower pace."""
    planner = ({id(p) for p in net.planner.parameters()}
               if isinstance(net, PlannedLM) and net.planner else set())
    groups = []
    for scale, params in ((1.0, [p for p in net.parameters() if id(p) not in planner]),
                          (planner_lr_scale, [p for p in net.parameters() if id(p) in planner])):
        params = [p for p in params if p.requires_grad]
        groups += [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay,
                    "lr_scale": scale},
                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0,
                    "lr_scale": scale}]
    fused = next(net.parameters()).is_cuda  # one kernel for every parameter on a GPU
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95),
                             fused=fused or None)


def train(net, stage, iters, lr, args, corpus, ckpt_path, batch_fn, val_fn, resume,
          planner_lr_scale=1.0):
    """The loop shared by every stage. batch_fn(step, micro) -> dict of tensors for net.forward."""
    opt = make_optimizer(net, lr, args.weight_decay, planner_lr_scale)
    run = runtime.Run(stage, iters, args, corpus, ckpt_path)
    run.begin(net, opt, resume)
    model = run.parallel(net)
    with run.stopping():
        for step in run.steps():
            for group in opt.param_groups:
                group["lr"] = lr_at(step, iters, lr, args.warmup_iters) * group["lr_scale"]
            # dropout noise: also a function of the step, and of the process (its own data)
            torch.manual_seed(args.seed * 1_000_003 + step + 7_919 * Context.get().rank)
            total = torch.zeros((), device=args.device)
            # micro-batches: one batch of batch_size x grad_accum
            for micro in range(args.grad_accum):
                with runtime.autocast(args), run.no_sync(model, micro):
                    loss, planner_ce = model(**batch_fn(step, micro))
                    if planner_ce is not None and args.planner_loss_weight:
                        loss = loss + args.planner_loss_weight * planner_ce
                (loss / args.grad_accum).backward()
                total += loss.detach() / args.grad_accum
            run.check_loss(total, step)
            if args.grad_clip:
                nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad],
                                         args.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            run.step_done(step + 1, total)  # the progress bar
            if (step + 1) % args.eval_interval == 0 or step + 1 == iters:
                run.record(step + 1, total, opt, net, val_fn())  # log, save, keep the best
    return run.end(net, opt)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    with runtime.one_line_errors(data.DataError, interrupted="interrupted; every checkpoint "
                                 "written so far is whole: run the same command to go on",
                                 memory="use a smaller model or batch (--n-embd, --n-layer, "
                                 "--batch-size, --eval-iters), or --grad-accum"):
        runtime.stop_like_ctrl_c()
        args = get_args(argv)
        with runtime.run_folder(args) as resume_from:
            run_stages(args, resume_from)


def run_stages(args, resume_from):
    """The data, the two shared pretraining stages and this run's fine-tuning, then the report."""
    runtime.setup_distributed(args)
    corpus, splits = load_data(args)
    t0 = time.time()
    # resumed, the run's checkpoint holds every weight: stages deleted since are not trained again
    resumed = resume_from if args.resume else None
    lm, lm_dir = pretrain_lm(args, corpus, splits, resumed)
    if resumed:  # only the run of the same flags (with --init-from, GPT-2's shape is known now)
        ck = {k: v for k, v in runtime.load_checkpoint(resumed).items()
              if k in ("config", "identity")}  # not its weights: fine-tuning loads those
        runtime.refuse_other_settings(ck["config"], args, resumed,
                                      vars(make_parser().parse_args([])))
    if args.embedder == "lm":
        corpus = lm_labels(args, corpus, splits, lm, resumed)
        splits = {k: SplitData(corpus, k, args.device) for k in corpus.splits}
    if resumed:  # and the same data
        runtime.refuse_other_data(ck, args.dataset, corpus, resumed, "start the run over with "
                                  "--overwrite instead of --resume")
    planner, planner_dir = pretrain_planner(args, corpus, splits, shape_only=args.resume)
    net, out, final = finetune(args, corpus, splits, lm, planner)
    if Context.get().master:
        report(args, out, final, lm_dir, planner_dir, time.time() - t0)


def load_data(args):
    """Stage (a): the corpus and its splits as tensors; on a GPU, the defaults sized to it."""
    with runtime.rank0_first():
        corpus = data.load_from_args(args)
    if args.init_from:  # GPT-2 reads GPT-2 ids, not a closed vocabulary's rows
        corpus.vocab = None
    if args.device.startswith("cuda"):
        split = corpus.splits["train"]
        runtime.fill_defaults(args, runtime.cuda_defaults(len(split.tokens),
                                                          len(split.doc_sent) - 1,
                                                          Context.get().world, vars(args)))
        runtime.check_shapes(args, PlannerConfig.n_head)
        if not args.init_from:  # GPT-2's shape is checked once its weights are read
            check_adapters(args)
    runtime.check_split_sizes(corpus, args, {"train": 1 - data.VAL_FRAC - data.TEST_FRAC,
                                             "val": data.VAL_FRAC})
    return corpus, {k: SplitData(corpus, k, args.device) for k in corpus.splits}


def report(args, out, final, lm_dir, planner_dir, seconds):
    print(f"run {out} ({args.mode}{', planner ' + args.planner if args.planner else ''}) in "
          f"{seconds:.0f} s; pretrained LM {lm_dir}, planner {planner_dir or 'a label bigram'}")
    print(f"val perplexity {math.exp(final['val_loss']):.1f} on the fixed val windows "
          f"(`python eval.py {out}` gives the exact figure)"
          + (f"; planner top-1 {final['planner_top1']:.3f}, top-5 {final['planner_top5']:.3f}"
             if "planner_top1" in final else ""))


if __name__ == "__main__":
    main()

"""
How fast is the method? Training-step throughput and peak memory of every mode against mode none,
achieved FLOP/s against a matmul peak measured in the same run on the same device (fp32 and bf16),
and the cost of the planner in the joint modes.

    python bench.py                       # the default model and batch of train.py on this device
    python bench.py --modes none,soft --steps 10 --dtype float32

Each mode runs in a fresh process, so its peak memory (resident set on a CPU, allocated memory on a
GPU) is its own. The batch is random tokens shaped like the wiki corpus: windows cover sentences of
~28 tokens, and the planner reads each window's document from its first sentence on.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from mix import Plans
from model import GPT, GPTConfig
from planner import Planner, PlannerConfig
from train import CPU_DEFAULTS, CUDA_DEFAULTS, PlannedLM, autocast, autocast_dtype, resolve_device

MODES = ["none", "fixed", "uniform", "oracle", "hard-frozen", "st-joint", "soft-frozen", "soft-joint", "gumbel-joint"]
SENTENCE_TOKENS = 28  # the wiki corpus's mean sentence length in GPT-2 tokens
HISTORY = 3  # sentences of each document before the window


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device, dtype, n, repeat=10):
    """FLOP/s of a square matmul of size n: what this device can do at best, measured now."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeat / (time.perf_counter() - t)


def make_batch(cfg, batch, device, n_labels, g):
    """A batch for PlannedLM.forward: random tokens, sentence structure like the wiki corpus."""
    T = cfg.block_size
    per_window = -(-T // SENTENCE_TOKENS)
    idx, targets = torch.randint(0, cfg.vocab_size, (2, batch, T), generator=g)
    plan_index = (torch.arange(T) // SENTENCE_TOKENS)[None, :] + per_window * torch.arange(batch)[:, None]
    emb = torch.nn.functional.normalize(torch.randn(batch, HISTORY + per_window, cfg.plan_dim, generator=g), dim=-1)
    b = dict(idx=idx, targets=targets, plan_index=plan_index, emb=emb,
             doc_row=torch.arange(batch).repeat_interleave(per_window),
             sent_pos=HISTORY + torch.arange(per_window).repeat(batch),
             labels=torch.randint(0, n_labels, (batch * per_window,), generator=g))
    return {k: v.to(device) for k, v in b.items()}


def run_mode(args):
    """Time training steps of one mode in this process; print one JSON line."""
    torch.manual_seed(0)
    d = CUDA_DEFAULTS if args.device.startswith("cuda") else CPU_DEFAULTS
    cfg = GPTConfig(n_layer=d["n_layer"], n_head=d["n_head"], n_embd=d["n_embd"], block_size=d["block_size"],
                    plan_dim=args.embed_dim)
    mode, _, planner_mode = args.one.partition("-")
    codebook = torch.nn.functional.normalize(torch.randn(args.n_labels, args.embed_dim), dim=-1)
    planner = Planner(PlannerConfig(n_labels=args.n_labels, embed_dim=args.embed_dim), codebook)
    net = PlannedLM(GPT(cfg), planner if planner_mode else None, Plans(mode, codebook), planner_mode != "joint")
    net.to(args.device).train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    batch = make_batch(cfg, d["batch_size"], args.device, args.n_labels, torch.Generator().manual_seed(0))
    dtype = autocast_dtype(args)

    def step():
        with autocast(args):
            loss, _ = net(**batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(args.device)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(args.device)
    seconds = (time.perf_counter() - t) / args.steps
    memory = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = d["batch_size"] * cfg.block_size
    print(json.dumps(dict(mode=args.one, dtype=str(dtype).split(".")[-1], step_s=seconds, tokens_per_s=tokens / seconds,
                          flops=net.lm.flops_per_token() * tokens / seconds, memory=memory, model=f"{cfg.n_layer}x{cfg.n_embd}",
                          batch=f"{d['batch_size']}x{cfg.block_size}")))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="as train.py")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--n-labels", type=int, default=64)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = p.parse_args()
    args.device = resolve_device(args.device)
    if args.one:
        return run_mode(args)
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        sys.exit(f"error: unknown mode(s) {', '.join(sorted(unknown))}: choose from {', '.join(MODES)}")
    n = 4096 if args.device != "cpu" else 2048
    peak = {dt: matmul_peak(args.device, getattr(torch, dt), n) for dt in ("float32", "bfloat16")}
    print(f"device {args.device} ({torch.get_num_threads()} threads); matmul peak measured now ({n}x{n}): "
          f"fp32 {peak['float32'] / 1e9:,.0f} GFLOP/s, bf16 {peak['bfloat16'] / 1e9:,.0f} GFLOP/s")
    base = ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--n-labels", str(args.n_labels), "--embed-dim", str(args.embed_dim)]
    results = {}
    jobs = [(m, args.dtype) for m in modes]
    if "none" in modes and autocast_dtype(args) == torch.bfloat16:
        jobs.append(("none", "float32"))  # how much autocast buys
    for mode, dtype in jobs:
        out = subprocess.run([sys.executable, __file__, *base, "--one", mode, "--dtype", dtype],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results[(mode, r["dtype"])] = r
        share = r["flops"] / peak[r["dtype"]]
        ref = results.get(("none", r["dtype"]))
        print(f"{mode:13s} {r['dtype']:8s} model {r['model']} batch {r['batch']}: {r['tokens_per_s']:9,.0f} tokens/s "
              f"({r['step_s']:.3f} s/step)" + (f", {r['tokens_per_s'] / ref['tokens_per_s']:.2f}x none" if ref else "") +
              f", peak memory {r['memory'] / 2**30:.2f} GiB, {r['flops'] / 1e9:,.0f} GFLOP/s = "
              f"{share:.0%} of the {r['dtype']} matmul peak" + (" (MFU)" if args.device.startswith("cuda") else ""))
    none = {dt: r for (m, dt), r in results.items() if m == "none"}
    if len(none) == 2:
        print(f"bf16 autocast / fp32 (none): {none['bfloat16']['tokens_per_s'] / none['float32']['tokens_per_s']:.2f}x tokens/s")
    soft = next((r for (m, _), r in results.items() if m == "soft-joint"), None)
    if soft and (ref := none.get(soft["dtype"])):
        print(f"overhead soft-joint/none: {ref['tokens_per_s'] / soft['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()

"""
How fast is the method? Training-step throughput and peak memory of every mode against mode none,
achieved FLOP/s against a matmul peak measured in the same run on the same device (fp32 and bf16),
and the cost of the planner in the joint modes.

    python bench.py                       # the default model and batch of train.py on this device
    python bench.py --modes none,soft-joint --steps 10 --dtype float32
    python bench.py --pipeline 103M       # the data pipeline on a corpus of WikiText-103's shape
                                          # and size
    python bench.py --kmeans 12500        # k-means on a sample of the training sentences vs on
                                          # all of them
    python bench.py --gpt2 --train-lm adapters   # GPT-2 small's shape at 128 tokens, the LM
                                          # frozen: the paper's setting (train.py --init-from gpt2)
    python bench.py --check               # the GPU check: MFU, memory, torch.compile, GPT-2
                                          # small's shape, a short train.py run

Each mode runs in a fresh process, so its peak memory (resident set on a CPU, allocated memory on a
GPU) is its own. The batch is random tokens shaped like the wiki corpus: windows cover sentences of
~28 tokens, and the planner reads each window's document from its first sentence on.

--pipeline writes an archive in WikiText-103's raw format (its articles, headings and spaced-out
punctuation) made of the wiki corpus's sentences, as many tokens as asked, and times
`python explore.py` on it in a fresh process: the build from nothing, then the load from the cache
(wall time, peak RSS, cache size), then batches, the planner's document gathering and the
evaluation windows at that size.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

import corpora
import data
from mix import PlannedLM, Plans
from model import GPT, GPTConfig
from planner import Planner, PlannerConfig
from runtime import (CUDA_MODELS, TrainError, allow_tf32, atomic_write, autocast,
                     autocast_dtype, one_line_errors, read_log, resolve_device)
from train import CPU_DEFAULTS, make_optimizer
from train import make_parser as train_parser

MODES = ["none", "fixed", "uniform", "oracle", "hard-frozen", "st-joint", "soft-frozen",
         "soft-joint", "gumbel-joint"]
SENTENCE_TOKENS = 28  # the wiki corpus's mean sentence length in GPT-2 tokens
HISTORY = 3  # sentences of each document before the window


def flops_per_token(lm, adapters=True):
    """Training FLOPs (forward + backward) per token of a model.GPT at full context: 6 per weight
    that multiplies (the tied head counted once, as the head; no position table), 4 for a frozen
    one a gradient passes through to a trainable one below it, 2 (forward only) for a frozen one
    below every trainable one, plus attention."""
    c = lm.config
    trains = [any(p.requires_grad for p in b.parameters()) for b in lm.blocks]
    lowest = trains.index(True) if True in trains else c.n_layer  # nothing below it needs a grad

    def per_weight(name, p):
        below = name.startswith("blocks.") and int(name.split(".")[1]) < lowest
        return 6 if p.requires_grad else 2 if below else 4
    weights = sum(per_weight(name, p) * p.numel() for name, p in lm.named_parameters()
                  if name != "wpe.weight" and (adapters or ".adapter." not in name))
    return weights + 12 * c.n_layer * c.n_embd * c.block_size


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device, dtype, n, repeat=None):
    """FLOP/s of a square matmul of size n: what this device can do at best, measured now (on a GPU
    over ~0.1 s after a warm-up, so that its clocks have risen)."""
    repeat = repeat or (100 if device.startswith("cuda") else 10)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(repeat // 5 + 2):
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
    plan_index = ((torch.arange(T) // SENTENCE_TOKENS)[None, :]
                  + per_window * torch.arange(batch)[:, None])
    emb = torch.nn.functional.normalize(
        torch.randn(batch, HISTORY + per_window, cfg.plan_dim, generator=g), dim=-1)
    b = dict(idx=idx, targets=targets, plan_index=plan_index, emb=emb,
             doc_row=torch.arange(batch).repeat_interleave(per_window),
             sent_pos=HISTORY + torch.arange(per_window).repeat(batch),
             labels=torch.randint(0, n_labels, (batch * per_window,), generator=g))
    return {k: v.to(device) for k, v in b.items()}


# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), by whole words of the
# device's name, first match (so "L4" is not "L40", nor "A10" "A100"): what model FLOP
# utilisation (MFU) is measured against on a GPU.
BF16_PEAKS = [("H200 NVL", 835e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
              ("H800 PCIe", 756e12), ("H200", 989e12), ("H100", 989e12), ("H800", 989e12),
              ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
              ("L40", 181e12), ("L4", 121e12), ("A10", 125e12), ("RTX 4090", 165e12)]


def datasheet_peak(device):
    """-> (name, bf16 FLOP/s) of this GPU from BF16_PEAKS, or None (a CPU, or a card not listed)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next(((name, peak) for key, peak in BF16_PEAKS
                 if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w])", name)), None)


def shape(args):
    """(layers, width, context, batch): --size, GPT-2 small's, or train.py's default model and
    batch on this device."""
    if args.size:
        return tuple(int(x) for x in args.size.split(","))
    if args.gpt2:  # the batch of README's recipe (8 windows on a CPU)
        return 12, 768, 128, 64 if args.device.startswith("cuda") else 8
    d = CUDA_MODELS["large"] if args.device.startswith("cuda") else CPU_DEFAULTS
    return d["n_layer"], d["n_embd"], d["block_size"], d["batch_size"]


def run_mode(args):
    """Time training steps of one mode in this process; print one JSON line."""
    torch.manual_seed(0)
    n_layer, n_embd, block_size, batch_size = shape(args)
    cfg = GPTConfig(n_layer=n_layer, n_head=max(1, n_embd // 64), n_embd=n_embd,
                    block_size=block_size, plan_dim=args.embed_dim,
                    # GPT-2's own details, and the original code's adapters (pretrained.py)
                    **(dict(bias=True, gelu="tanh", adapter_from=min(2, n_layer - 1))
                       if args.gpt2 else {}))
    mode, _, planner_mode = args.one.partition("-")
    codebook = torch.nn.functional.normalize(torch.randn(args.n_labels, args.embed_dim), dim=-1)
    planner = Planner(PlannerConfig(n_labels=args.n_labels, embed_dim=args.embed_dim), codebook)
    net = PlannedLM(GPT(cfg), planner if planner_mode else None, Plans(mode, codebook),
                    planner_mode != "joint")
    net.to(args.device).train()
    if args.train_lm == "adapters":  # as train.py --train-lm adapters
        for name, p in net.lm.named_parameters():
            if ".adapter." not in name:
                p.requires_grad_(False)
    net.lm.chunked_loss = not args.plain_loss
    if args.compiled:
        net.lm.compile()  # as train.py --compile: the LM only
    allow_tf32(args.device)  # as train.py: its float32 matmuls, its optimizer (fused on a GPU)
    opt = make_optimizer(net, 1e-4, train_parser().get_default("weight_decay"))
    batch = make_batch(cfg, batch_size, args.device, args.n_labels,
                       torch.Generator().manual_seed(0))
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
    memory = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    tokens = batch_size * cfg.block_size
    work = flops_per_token(net.lm, adapters=mode != "none")  # none's adapters compute nothing
    print(json.dumps(dict(mode=args.one, dtype=str(dtype).split(".")[-1], step_s=seconds,
                          tokens_per_s=tokens / seconds, flops=work * tokens / seconds,
                          memory=memory,
                          model=f"{cfg.n_layer}x{cfg.n_embd}"
                          + (" (LM frozen)" if args.train_lm == "adapters" else ""),
                          batch=f"{batch_size}x{cfg.block_size}", compiled=args.compiled)))


# ----------------------------------------------------------------------- the data pipeline at scale

BENCH_DIR = data.ROOT / "data" / "bench-pipeline"  # --pipeline's and --check's files
WIKITEXT_ARTICLES = 28_595  # train + valid + test articles of WikiText-103
SECTION_EVERY = 6  # paragraphs per ' = = Heading = = '
PARAGRAPH = 5  # sentences per line


def wikitextify(sentence):
    """WikiText's tokenization of a sentence: ' @-@ ' inside words, ' @,@ ' in numbers, punctuation
    spaced out."""
    s = re.sub(r"(?<=\d),(?=\d)", "\0", sentence.strip())  # kept from the spacing below
    s = re.sub(r"([.,;:!?()\"])", r" \1 ", s).replace("\0", " @,@ ")
    return re.sub(r" +", " ", re.sub(r"(?<=\w)-(?=\w)", " @-@ ", s)).strip()


def write_wikitext_like(path, tokens, seed=0):
    """A zip in WikiText-103's raw format: its number of articles, about `tokens` GPT-2 tokens in
    all."""
    sentences = [wikitextify(x) for d in corpora.wiki_documents() for x in data.split_sentences(d)]
    per_sentence = np.mean([len(t)
                            for t in data.tokenizer().encode_ordinary_batch(sentences[:2000])])
    rng = np.random.default_rng(seed)
    # long and short articles
    n_sent = rng.geometric(WIKITEXT_ARTICLES * per_sentence / tokens, WIKITEXT_ARTICLES)
    titles = rng.choice(corpora.english_words(), (WIKITEXT_ARTICLES, 2))
    # the sentences, and words for headings
    picks = iter(rng.integers(0, len(sentences), 2 * n_sent.sum()))
    splits = {"train": [], "valid": [], "test": []}
    for i, n in enumerate(n_sent):
        lines = ["", f" = {titles[i, 0].title()} {titles[i, 1]} = ", ""]
        for p in range(0, n, PARAGRAPH):
            if p and p // PARAGRAPH % SECTION_EVERY == 0:
                lines += [f" = = {sentences[next(picks)].split()[0]} = = ", ""]
            lines += [" " + " ".join(sentences[next(picks)]
                                     for _ in range(min(PARAGRAPH, n - p))) + " ", ""]
        split = ("train" if i < WIKITEXT_ARTICLES - 120
                 else "valid" if i < WIKITEXT_ARTICLES - 60 else "test")
        splits[split].append("\n".join(lines))
    with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED,
                                                    compresslevel=1) as z:
        for member, split in zip(corpora.WIKITEXT_MEMBERS, splits):
            z.writestr(member, "\n".join(splits[split]) + "\n")


def timed_process(argv):
    """Run argv in a fresh process, in this one's folder (its paths mean what they mean here) ->
    (wall seconds, peak RSS in bytes, stdout)."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"error: {' '.join(argv)} failed (exit {proc.returncode})")
    return time.perf_counter() - t, usage.ru_maxrss * 1024, out


def pipeline_tokens(text):
    """'103M' or '5000000' -> tokens; None if it is neither, or under 1M (WikiText-103's 28,595
    articles need a sentence each, ~25 tokens)."""
    try:
        tokens = (float(text.upper().rstrip("M")) * 1e6 if text.upper().endswith("M")
                  else float(text))
    except ValueError:
        return None
    return int(tokens) if 1e6 <= tokens < float("inf") else None


def bad_flag(args):
    """The first flag whose value would measure nothing (or trace back), as one line; else None."""
    if args.steps < 1 or args.warmup < 0:
        return f"--steps must be at least 1 and --warmup 0 or more, got {args.steps}, {args.warmup}"
    if args.n_labels < 1 or args.embed_dim < 1:
        return (f"--n-labels and --embed-dim must be at least 1, got {args.n_labels}, "
                f"{args.embed_dim}")
    if args.kmeans is not None and args.kmeans < args.n_labels:
        return (f"--kmeans N samples N sentences for {args.n_labels} labels: give at least "
                f"{args.n_labels}, got {args.kmeans}")
    if args.pipeline is not None and pipeline_tokens(args.pipeline) is None:
        return (f"--pipeline takes a number of tokens, at least 1M, such as 103M or 5000000, "
                f"got {args.pipeline!r}")
    if args.size is not None and not re.fullmatch(r"[1-9]\d*(,[1-9]\d*){3}", args.size):
        return (f"--size takes LAYERS,WIDTH,CONTEXT,BATCH as four positive numbers, "
                f"got {args.size!r}")
    if args.size is not None and (width := int(args.size.split(",")[1])) % max(1, width // 64):
        return (f"--size: a width of {width} does not split into {width // 64} heads of 64: give "
                "a multiple of 64 (or under 128)")
    return None


def pipeline(args):
    tokens = pipeline_tokens(args.pipeline)
    root = Path(args.data_dir)
    # it writes a generated WikiText-103 archive there and deletes the cache: never in a folder of
    # real data (its own folders are marked; the default is its own)
    mark = root / ".bench-pipeline"
    if (root.is_dir() and any(root.iterdir()) and not mark.is_file()
            and root.resolve() != BENCH_DIR.resolve()):
        raise TrainError(f"--pipeline writes a generated WikiText-103 and deletes the cache in "
                         f"--data-dir, and {root} holds files it did not write: give a new folder")
    root.mkdir(parents=True, exist_ok=True)
    mark.write_text("a generated WikiText-103 and its cache: bench.py --pipeline\n")
    archive = root / f"{corpora.WIKITEXT_NAME}.zip"
    if not archive.exists():
        t = time.perf_counter()
        write_wikitext_like(archive, tokens)
        print(f"wrote {archive} ({archive.stat().st_size / 2**20:,.0f} MiB) in "
              f"{time.perf_counter() - t:.0f} s")
    else:
        print(f"using the archive already at {archive} (delete it to write one of another size)")
    shutil.rmtree(root / "cache", ignore_errors=True)
    cmd = [sys.executable, str(data.ROOT / "explore.py"), "--dataset", "wikitext103",
           "--data-dir", str(root), "--n-labels", str(args.n_labels),
           "--embed-dim", str(args.embed_dim)]
    for what in ("build from nothing", "load from the cache"):
        seconds, rss, out = timed_process(cmd)
        print(f"python explore.py, {what}: {seconds:.1f} s wall, peak RSS {rss / 2**30:.2f} GiB")
    print(out.rstrip())
    cache = next((root / "cache").glob("*.npz"))
    print(f"cache {cache.stat().st_size / 2**30:.2f} GiB")
    corpus = data.load("wikitext103", args.n_labels, args.embed_dim, data_dir=root, quiet=True)
    print(f"k-means: {corpus.meta['kmeans_steps']} steps on "
          f"{min(data.KMEANS_SAMPLE, len(corpus.splits['train'].labels)):,} "
          "sampled training sentences")
    from eval import windows
    from data import SplitData
    t = time.perf_counter()
    splits = {k: SplitData(corpus, k, "cpu") for k in corpus.splits}
    print(f"SplitData (tensors of every split): {time.perf_counter() - t:.1f} s")
    train, g = splits["train"], np.random.default_rng(0)
    for what, fn in (("LM batch, 32 windows of 512 tokens, with every document's planner input",
                      lambda: train.lm_batch(
                          torch.as_tensor(g.integers(0, len(train.tokens) - 513, 32)), 512)),
                     ("planner batch, 64 whole documents",
                      lambda: train.planner_batch(
                          torch.as_tensor(g.integers(0, len(train.doc_sent) - 1, 64)))),
                     ("evaluation windows of the val split (block 512)",
                      lambda: windows(len(splits["val"].tokens) - 1, 512))):
        fn()
        t = time.perf_counter()
        for _ in range(10):
            fn()
        print(f"{what}: {(time.perf_counter() - t) * 100:.1f} ms")


def measure(args, modes):
    """Every mode in its own process (eager, and compiled with --compile): one line each.
    -> results."""
    if args.train_lm == "adapters" and "none" in modes:
        print("none: nothing trains with the LM frozen (train.py keeps its LM as it is)")
        modes = [m for m in modes if m != "none"]
    n = 4096 if args.device != "cpu" else 2048
    # bf16 only where it is used: emulated on a CPU without native bf16, its matmul takes minutes
    dtypes = dict.fromkeys(["float32", str(autocast_dtype(args)).split(".")[-1]])
    allow_tf32(args.device)  # float32 as train.py runs it
    peak = {dt: matmul_peak(args.device, getattr(torch, dt), n) for dt in dtypes}
    print(f"device {args.device} ({torch.get_num_threads()} threads); matmul peak measured now "
          f"({n}x{n}): "
          + ", ".join(f"{dt} {p / 1e9:,.0f} GFLOP/s" for dt, p in peak.items())
          + (" (float32 as TF32, as train.py runs it)" if args.device.startswith("cuda") else ""))
    base = (["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
             "--n-labels", str(args.n_labels), "--embed-dim", str(args.embed_dim)]
            + (["--size", args.size] if args.size else []) + ["--gpt2"] * args.gpt2
            + ["--train-lm", args.train_lm])
    results = {}
    jobs = ([(m, args.dtype, False) for m in modes]
            + [(m, args.dtype, True) for m in modes if args.compile])
    if "none" in modes and autocast_dtype(args) == torch.bfloat16:
        # how much autocast buys
        jobs.append(("none", "float32", False))
    for mode, dtype, compiled in jobs:
        name = mode + (" compiled" if compiled else "")
        r = one_process(base, mode, dtype, ["--compiled"] * compiled, name)
        results[(mode, r["dtype"] if r else dtype, compiled)] = r
        if r is None:
            continue
        ref = results.get(("none", r["dtype"], False)) if mode != "none" or compiled else None
        eager = results.get((mode, r["dtype"], False)) if compiled else None
        print(f"{name:22s} {r['dtype']:8s} model {r['model']} batch {r['batch']}: "
              f"{r['tokens_per_s']:9,.0f} tokens/s ({r['step_s']:.3f} s/step)"
              + (f", {r['tokens_per_s'] / ref['tokens_per_s']:.2f}x none" if ref and not compiled
                 else "")
              + (f", {r['tokens_per_s'] / eager['tokens_per_s']:.2f}x eager" if eager else "") +
              f", peak memory {r['memory'] / 2**30:.2f} GiB, {r['flops'] / 1e9:,.0f} GFLOP/s = "
              f"{r['flops'] / peak[r['dtype']]:.0%} of the {r['dtype']} matmul peak measured now")
    none = {dt: r for (m, dt, c), r in results.items() if m == "none" and not c and r}
    if "none" in modes and (chunked := none.get(str(autocast_dtype(args)).split(".")[-1])):
        plain = one_process(base, "none", chunked["dtype"], ["--plain-loss"], "none, plain loss")
        if plain:
            print(f"chunked head + loss / plain F.cross_entropy (none, {chunked['dtype']}): "
                  f"{chunked['tokens_per_s'] / plain['tokens_per_s']:.2f}x tokens/s "
                  f"({plain['tokens_per_s']:,.0f} plain), "
                  f"peak memory {chunked['memory'] / 2**30:.2f} vs "
                  f"{plain['memory'] / 2**30:.2f} GiB")
    if len(none) == 2:
        print(f"bf16 autocast / fp32 (none): "
              f"{none['bfloat16']['tokens_per_s'] / none['float32']['tokens_per_s']:.2f}x tokens/s")
    soft = next((r for (m, _, c), r in results.items() if m == "soft-joint" and not c and r), None)
    if soft and (ref := none.get(soft["dtype"])):
        print(f"overhead soft-joint/none: {ref['tokens_per_s'] / soft['tokens_per_s']:.2f}")
    return results


def one_process(base, mode, dtype, extra, name):
    """Time one mode in a fresh process (its peak memory is its own). -> its JSON record, or None if
    it failed."""
    proc = subprocess.run([sys.executable, __file__, *base, "--one", mode, "--dtype", dtype,
                           *extra],
                          capture_output=True, text=True)
    if proc.returncode:
        print(f"{name:22s} failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(args):
    """The GPU check: step throughput and MFU against the card's data-sheet peak, memory, whether
    torch.compile works, then a short train.py run at the GPU defaults (wall time, tokens/s per
    stage)."""
    args.compile = args.compile or args.device.startswith("cuda")
    # the short run's corpus is there (or downloaded) first: if not, a line now, not after minutes
    given = train_parser().parse_known_args(args.check_train.split())[0]
    corpora.source_files(given.dataset, given.data_dir)
    results = measure(args, ["none", "soft-joint"])
    sheet = datasheet_peak(args.device)
    for (mode, dtype, compiled), r in results.items():
        if r and sheet and dtype != "float32":  # the peak is bf16's
            print(f"MFU {mode}{' compiled' if compiled else ''} ({dtype}): "
                  f"{r['flops'] / sheet[1]:.1%} of the "
                  f"{sheet[0]}'s {sheet[1] / 1e12:,.0f} TFLOP/s dense bf16 (data sheet)")
    if not sheet:
        print(f"MFU: no data-sheet bf16 peak for {args.device} in bench.BF16_PEAKS; the shares "
              "above are of the matmul peak measured now")
    if args.compile:
        works = [r is not None for (m, _, c), r in results.items() if c]
        print(f"torch.compile: {'works' if all(works) else 'FAILS (see above)'} on {args.device}")
    for train_lm in ("all", "adapters"):  # the paper's setting: train.py --init-from gpt2
        print(f"GPT-2 small's shape, --train-lm {train_lm}:")
        # (--size, as the tests give it, shrinks this shape too)
        gpt2 = measure(argparse.Namespace(**dict(vars(args), gpt2=True, compile=False,
                                                 train_lm=train_lm)), ["soft-joint"])
        for (mode, dtype, _), r in gpt2.items():
            if r and sheet and dtype != "float32":
                print(f"MFU {mode} ({dtype}): {r['flops'] / sheet[1]:.1%} of the data sheet")
    out = Path(args.data_dir) / "check-run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(data.ROOT / "train.py"), "--device", args.device,
           "--out-dir", str(out), *args.check_train.split()]
    seconds, rss, stdout = timed_process(cmd)
    print(f"train.py {' '.join(cmd[2:])}: {seconds:.0f} s wall")
    for log in sorted(out.glob("*/*/log.jsonl")) + sorted(out.glob("*/log.jsonl")):
        last = read_log(log.parent)[-1]
        print(f"  {log.parent.relative_to(out)}: {last['per_s']:,.0f} "
              f"{'documents' if 'planner' in log.parent.name else 'tokens'}"
              f"/s, val loss {last.get('val_loss', last.get('planner_val_loss')):.3f} "
              f"at step {last['step']}")
    print(*(line for line in stdout.splitlines() if line.startswith("val perplexity")), sep="\n")


def kmeans_sample(args):
    """What fitting k-means on a sample costs in label quality: mean squared distance of held-out
    (val) sentences to their nearest centroid, fitted on a random sample of the training sentences
    vs on all."""
    corpus = data.load("wiki", args.n_labels, args.embed_dim)
    train, val = corpus.splits["train"].emb, torch.as_tensor(corpus.splits["val"].emb)
    rng = np.random.default_rng(0)
    if args.kmeans > len(train):
        raise TrainError(f"--kmeans {args.kmeans}: the wiki corpus has {len(train):,} training "
                         "sentences: give at most that")
    for n in (args.kmeans, len(train)):
        t = time.perf_counter()
        fit_on = (train[np.sort(rng.choice(len(train), n, replace=False))] if n < len(train)
                  else train)
        centers, _, steps = data.kmeans(fit_on, args.n_labels, 0)
        centers = torch.as_tensor(centers)
        inertia = ((val - centers[data.nearest(val, centers)]) ** 2).sum(1).mean().item()
        print(f"k-means K={args.n_labels} on {n:,} of {len(train):,} wiki training sentences "
              f"({n / args.n_labels:,.0f} a label): held-out inertia {inertia:.4f}, {steps} steps, "
              f"{time.perf_counter() - t:.1f} s")


def make_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default=",".join(MODES),
                   help="comma-separated, from: " + ", ".join(MODES))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="as train.py")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per mode")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps first (the first compiled step compiles)")
    p.add_argument("--compile", action="store_true",
                   help="also time every mode with the LM torch.compiled")
    p.add_argument("--size",
                   help="LAYERS,WIDTH,CONTEXT,BATCH instead of train.py's default model and batch")
    p.add_argument("--gpt2", action="store_true",
                   help="GPT-2 small's shape (12 x 768, biases, tanh GELU, adapters from layer 2) "
                        "at 128 tokens, 64 a batch (8 on a CPU): train.py --init-from gpt2")
    p.add_argument("--train-lm", choices=("all", "adapters"), default="all",
                   help="as train.py: adapters freezes the LM's own weights")
    p.add_argument("--n-labels", type=int, default=64)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode in this process
    # internal: with --one
    p.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    # internal: with --one
    p.add_argument("--plain-loss", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true",
                   help="the GPU check: none and soft-joint, eager and compiled, MFU, then a short "
                        "train.py run")
    p.add_argument("--check-train",
                   default="--lm-iters 60 --planner-iters 60 --finetune-iters 60 "
                           "--eval-interval 30 --eval-iters 4",
                   help="train.py flags of --check's short run (defaults: the device's, wiki)")
    p.add_argument("--pipeline", metavar="TOKENS",
                   help="time the data pipeline on a generated WikiText-103-like corpus, e.g. 103M")
    p.add_argument("--data-dir", default=str(BENCH_DIR),
                   help="where --pipeline and --check write")
    p.add_argument("--kmeans", type=int, metavar="N",
                   help="held-out inertia of k-means fitted on N sampled wiki sentences vs all")
    return p


def main(argv=None):
    args = make_parser().parse_args(argv)
    with one_line_errors(data.DataError):
        run(args)


def run(args):
    if problem := bad_flag(args):
        sys.exit(f"error: {problem}")
    if args.pipeline is not None:
        return pipeline(args)
    if args.kmeans is not None:
        return kmeans_sample(args)
    args.device = resolve_device(args.device)
    if args.one:
        return run_mode(args)
    if args.check:
        return check(args)
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        sys.exit(f"error: unknown mode(s) {', '.join(sorted(unknown))}: "
                 f"choose from {', '.join(MODES)}")
    measure(args, modes)


if __name__ == "__main__":
    main()

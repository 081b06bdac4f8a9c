"""
The machinery that makes train.py and eval.py robust, without being the method: devices and dtypes,
the GPU defaults, flag ranges, DDP, atomic files and folder locks, checkpoints (and what --resume
may continue), and a stage's run (resume, progress bar, log, best checkpoint, Ctrl-C / SIGTERM /
SIGHUP between whole steps, the NaN guard).

train.py's loop calls it with a few verbs (see Run); of the method it knows only the names of the
parts a checkpoint holds (net.lm, net.plans, net.planner), the stages' names and corpus.identity().
"""

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm


class TrainError(Exception):
    """A bad flag combination or a run that cannot go on: shown as one line with the fix."""


# ----------------------------------------------------------------------------- device and dtype


def resolve_device(name):
    if name == "auto":
        return ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available()
                else "cpu")
    if (name == "cuda" and not torch.cuda.is_available()
            or name == "mps" and not torch.backends.mps.is_available()):
        raise TrainError(f"--device {name} is not available on this machine: "
                         f"use --device cpu or auto")
    return name


def autocast_dtype(args):
    if args.dtype != "auto":
        return getattr(torch, args.dtype)
    if args.device.startswith("cuda"):  # native bf16 from Ampere (8.0) on; older cards emulate it
        native = torch.cuda.get_device_capability(args.device)[0] >= 8
        return torch.bfloat16 if native else torch.float32
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


# ------------------------------------------------------------------------- defaults and flag checks

# On a GPU the defaults follow from the corpus, by arithmetic (cuda_defaults). The model: the larger
# one only where the corpus can feed it. On WikiText-103 (~98M training tokens) 8 x 512 with a
# 512-token context and 32,768 tokens a step: 200M tokens are ~6,100 steps, ~2 passes. On wiki
# (~0.93M tokens) that model would see the corpus 200 times, so it gets 6 x 384, a 256-token
# context, dropout 0.1 and 8,192 tokens a step: 8 passes are ~910 steps.
LARGE_CORPUS = 20e6  # training tokens: WikiText-103 has ~98M, wiki ~0.93M
CUDA_MODELS = {"large": dict(n_layer=8, n_head=8, n_embd=512, block_size=512, batch_size=32,
                             grad_accum=2, dropout=0.0),
               "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=32,
                             grad_accum=1, dropout=0.1)}

# The schedule: a token budget that one GPU gets through in minutes, capped at a number of passes
# over the corpus past which the LM only memorises it (the best checkpoint by val loss guards what
# is left).
CUDA_LM_TOKENS = 200e6
CUDA_PLANNER_DOCS = 200_000
MAX_PASSES = 8  # LM pretraining
PLANNER_PASSES = 30  # a small model over sentence embeddings overfits far later
FINETUNE_SHARE = 1 / 3  # fine-tuning tokens against pretraining's
EVALS_PER_FINETUNE = 8
WARN_PASSES = 10  # an LM stage with more passes than this gets a warning with the fix
SYNC_EVERY = 10  # on a GPU, the training loop reads the device's values this often (Run)


def cuda_defaults(train_tokens, train_docs, world=1, given=None):
    """The GPU defaults for a corpus of train_tokens tokens in train_docs documents. given: the
    settings as the user's flags left them (None: not given); the schedule follows from the batch
    that will run, so --batch-size or --grad-accum keep the token budget and --finetune-iters moves
    the evaluations."""
    d = dict(CUDA_MODELS["large" if train_tokens >= LARGE_CORPUS else "small"])
    s = {**d, "planner_batch": 64, **{k: v for k, v in (given or {}).items() if v is not None}}
    per_step = s["batch_size"] * s["grad_accum"] * s["block_size"] * world
    lm_tokens = min(CUDA_LM_TOKENS, MAX_PASSES * train_tokens)
    finetune_iters = s.get("finetune_iters") or max(1, round(FINETUNE_SHARE * lm_tokens / per_step))
    planner_docs = min(CUDA_PLANNER_DOCS, PLANNER_PASSES * train_docs)  # a step: every micro-batch
    return dict(d, lm_iters=max(1, round(lm_tokens / per_step)), finetune_iters=finetune_iters,
                planner_iters=max(1, round(planner_docs
                                           / (s["planner_batch"] * s["grad_accum"] * world))),
                eval_interval=max(1, finetune_iters // EVALS_PER_FINETUNE), eval_iters=50)


def fill_defaults(args, defaults):
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


# Every numeric flag's range, in one place: (flags, test, what the flag must be).
FLAG_RANGES = [
    (("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "eval_interval",
      "eval_iters", "planner_batch", "planner_layers", "planner_embd", "n_labels", "embed_dim",
      "synthetic_types"),
     lambda v: v >= 1, "at least 1"),
    (("lm_iters", "planner_iters", "finetune_iters"), lambda v: v >= 1,
     "at least 1 (every stage must train: fine-tuning an untrained LM or planner measures "
     "nothing)"),
    (("synthetic_docs",), lambda v: v >= 3,
     "at least 3 (train, val and test take one document each at least)"),
    (("warmup_iters", "adapter_from"), lambda v: v >= 0, "zero or more"),
    (("seed",), lambda v: 0 <= v < 2**32, "from 0 to 4294967295"),  # torch's seeds end at 2**63
    (("lr", "planner_lr", "finetune_lr", "planner_finetune_lr", "temperature"),
     lambda v: 0 < v < math.inf, "a positive number"),
    (("weight_decay", "grad_clip", "planner_loss_weight"), lambda v: 0 <= v < math.inf,
     "zero or a positive number"),
    (("dropout",), lambda v: 0 <= v < 1, "at least 0 and below 1"),
    (("synthetic_ambiguity", "truth_weight"), lambda v: 0 <= v <= 1, "from 0 to 1"),
]


# flags naming a path or a run: empty, they would mean the working folder (--dataset "" reads every
# .txt under it)
NOT_EMPTY = ("dataset", "data_dir", "out_dir", "pretrain_dir", "init_from", "run")


def check_paths(args):
    """Refuse a path flag given empty, with one line; a flag the command does not have is
    skipped."""
    for name in NOT_EMPTY:
        if getattr(args, name, None) == "":
            raise TrainError(f"--{name.replace('_', '-')} is empty: give a path or leave it out")


def check_ranges(args, table, paths=True):
    """Refuse the first flag outside its range (NaN is outside every range), or (paths) a path flag
    given empty, with one line; a flag the command does not have is skipped."""
    if paths:
        check_paths(args)
    for names, ok, what in table:
        for name in names:
            value = getattr(args, name, None)
            if value is not None and not ok(value):
                raise TrainError(f"--{name.replace('_', '-')} must be {what}, got {value}")


def check_shapes(args, planner_heads):
    if args.n_embd % args.n_head:
        raise TrainError(f"--n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}: "
                         f"change one of them")
    if args.planner_embd % planner_heads:
        raise TrainError(f"--planner-embd {args.planner_embd} must be a multiple of the planner's "
                         f"{planner_heads} heads")


def check_split_sizes(corpus, args, shares):
    """Training and validation windows need block_size + 2 tokens of their split's stream.
    shares: each split's share of the documents."""
    docs = sum(len(sp.doc_sent) - 1 for sp in corpus.splits.values())
    per_doc = sum(len(sp.tokens) for sp in corpus.splits.values()) / docs
    for name in ("train", "val"):
        n = len(corpus.splits[name].tokens)
        if n < args.block_size + 2:
            lower = f"lower --block-size to at most {n - 2}, or " if n > 2 else ""
            need = math.ceil((args.block_size + 2) / per_doc / shares[name])
            raise TrainError(f"the {name} split has {n} tokens, fewer than --block-size "
                             f"{args.block_size} + 2: {lower}"
                             f"use a corpus of about {need} documents or more (it has {docs}, "
                             f"of ~{per_doc:.0f} tokens each)")


# ----------------------------------------------------------------------------- DDP


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
        return (Context(dist.get_rank(), dist.get_world_size()) if dist.is_initialized()
                else Context())


def allow_tf32(device):
    """On a GPU, float32 matmuls in training (the planner, validation) round to TF32: several times
    faster where the card has it. eval.py's figures do not (exact_float32)."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def exact_float32():
    """float32 matmuls at full precision inside, whatever a training in this process allowed."""
    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


def setup_distributed(args):
    allow_tf32(args.device)
    if "RANK" not in os.environ:
        return
    local = int(os.environ.get("LOCAL_RANK", 0))  # torchrun sets it; a bare launch may not
    if args.device == "cuda" and local >= torch.cuda.device_count():
        # checked before the process group exists: torchrun then ends the other processes at once
        gpus = torch.cuda.device_count()
        raise TrainError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', local + 1)} "
                         f"processes on this machine, which has {gpus} GPU(s), one a process: "
                         f"use --nproc_per_node {gpus}")
    # the other ranks wait while rank 0 builds the data (WikiText-103: 11 min on 2 CPU cores): a
    # barrier must outlast that, NCCL's 10 minutes do not
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo",
                            timeout=datetime.timedelta(hours=2))
    if args.device == "cuda":
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"


@contextlib.contextmanager
def rank0_first():
    """Under DDP, rank 0 runs the block (it builds the data cache) before the others, who then read
    what it wrote."""
    ctx = Context.get()
    if ctx.world > 1 and not ctx.master:
        dist.barrier()
    yield
    if ctx.world > 1 and ctx.master:
        dist.barrier()


# ----------------------------------------------------------------------------- files written whole


class atomic_write:
    """`with atomic_write(path) as tmp:` write tmp; it replaces path only if the block succeeds.

    The temp file is named <path>.<pid>.<random>.tmp, so that one left by a process killed mid-write
    (kill -9 skips every cleanup) is recognised and swept by the next write of the same path.
    """

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(self.path)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent,
                                        prefix=f"{self.path.name}.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
        return self.tmp

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


def sweep_stale_temps(path):
    """Remove temp files of path whose writing process no longer runs."""
    for tmp in Path(path).parent.glob(f"{glob_escape(Path(path).name)}.*.tmp"):
        pid = tmp.name[len(Path(path).name) + 1:].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def glob_escape(name):
    return re.sub(r"([*?\[])", r"[\1]", name)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def first_line(e):
    """An exception's message, first line only (some span pages), or its type when it has none."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def launched_as_master():
    """Rank 0 under torchrun (read before the process group exists), or a process on its own."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def folder_lock(folder, master=True):
    """One process at a time writes a run (or a pretraining stage) folder: <folder>/lock holds its
    pid while it runs. Another process is refused with one line naming it; a lock left by a
    process that no longer runs (kill -9) is taken over. Under DDP only rank 0 (master) writes,
    and locks."""
    if not master:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, mine = folder / "lock", folder / f"lock.{os.getpid()}.tmp"
    mine.write_text(str(os.getpid()))
    try:
        while not take_lock(path, mine):
            try:
                pid = int(path.read_text())
            except (OSError, ValueError):  # removed meanwhile, or being written
                pid = None
            if pid is not None and pid != os.getpid() and process_alive(pid):
                raise TrainError(f"{folder} is being written by another process (pid {pid}): "
                                 f"wait for it to end, or stop it; if none runs (the lock outlived "
                                 f"a crash and its pid was reused), delete {path}")
            path.unlink(missing_ok=True)  # its process is gone
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def take_lock(path, mine):
    """Create path holding this process's pid, in one step; False if it exists already."""
    try:
        os.link(mine, path)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: an exclusive create instead
        try:
            with open(path, "x") as f:
                f.write(str(os.getpid()))
        except FileExistsError:
            return False
    return True


@contextlib.contextmanager
def run_folder(args):
    """The fine-tuning run's folder, held by this process: -> the checkpoint path to resume from.
    A finished run is never replaced without --overwrite, and --resume is refused before hours of
    pretraining, not after, if there is nothing to resume. --overwrite leaves the old run's files
    until the new run begins to train (Run.begin): a run that fails before loses nothing."""
    ckpt_path = Path(args.out_dir) / args.run / "ckpt.pt"
    if args.resume and not ckpt_path.exists():
        raise TrainError(f"--resume: there is no checkpoint at {ckpt_path}: "
                         f"drop --resume to start the run")
    if ckpt_path.exists() and not (args.resume or args.overwrite):
        raise TrainError(run_exists(ckpt_path))
    with folder_lock(ckpt_path.parent, launched_as_master()):
        yield ckpt_path


def printable_paths(*streams):
    """A path that is not valid UTF-8 (its bytes kept as surrogates) is printed escaped instead
    of failing the print: under a strict locale that would end a finished run with a traceback."""
    for stream in streams:
        with contextlib.suppress(AttributeError, ValueError):  # not a text stream we can change
            stream.reconfigure(errors="backslashreplace")


@contextlib.contextmanager
def one_line_errors(*errors, interrupted="interrupted",
                    memory="use a smaller model or batch (see --help)"):
    """A command's bad input (TrainError, errors) and file-system faults end it with one line, as
    does a Ctrl-C outside the training loops (which stop between steps themselves)."""
    printable_paths(sys.stdout, sys.stderr)
    try:
        yield
    except (TrainError, *errors) as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: {file_error(e)}")
    except KeyboardInterrupt:
        sys.exit(f"error: {interrupted}")
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if not isinstance(e, MemoryError) and not re.search(r"out of memory|can't allocate",
                                                            str(e)):
            raise
        sys.exit(f"error: not enough memory ({type(e).__name__}: {first_line(e)[:100]}): "
                 f"{memory}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- checkpoints


def checkpoint(net, args, corpus, stage, step, opt, done, best):
    ck = dict(stage=stage, step=step, done=done, config=vars(args), identity=corpus.identity(),
              optimizer=opt.state_dict() if opt else {}, best_loss=best[0], best_step=best[1])
    if hasattr(net, "plans"):
        ck.update(model_args=dataclasses.asdict(net.lm.config), model=net.lm.state_dict(),
                  mode=net.plans.mode, plans=net.plans.state_dict())
    if net.planner is not None:
        ck.update(planner_args=dataclasses.asdict(net.planner.config),
                  planner=net.planner.state_dict())
    return ck


def save(ck, path):
    with atomic_write(path) as tmp:
        try:
            torch.save(ck, tmp)
        except RuntimeError as e:  # torch's own "file write failed": a full disk, as a rule
            raise OSError(f"{path} could not be written ({first_line(e)[:80]})") from None


def file_error(e):
    """An OSError (a folder that is a file, a read-only folder, a full disk) as one line."""
    where = f"{e.filename}: " if e.filename else ""
    return (f"{where}{e.strerror or first_line(e)}: give a folder that can be written and has free "
            "space (--out-dir, --data-dir); every file written before is whole")


def keep_best(ckpt_path):
    """best.pt beside ckpt.pt: the checkpoint of the lowest validation loss so far, as a second name
    of the file just written (a hard link: no copy; a later ckpt.pt is a new file and leaves it
    alone)."""
    with atomic_write(ckpt_path.with_name("best.pt")) as tmp:
        os.remove(tmp)
        try:
            os.link(ckpt_path, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(ckpt_path, tmp)


def load_checkpoint(path, device="cpu"):
    """A checkpoint holds tensors and plain values only, so it is loaded without running any code it
    may carry."""
    if not Path(path).exists():  # e.g. a comparison's results.json copied without its runs
        raise TrainError(f"{path} does not exist: give a run folder made by train.py")
    if not zipfile.is_zipfile(path):
        raise TrainError(f"{path} is damaged or not a checkpoint (cut short while copying?): "
                         "delete it and train again, or copy it again")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise TrainError(f"{path} holds more than tensors and plain values, so it was refused "
                         f"without running it ({first_line(e)[:80]}...): use a checkpoint "
                         f"written by train.py") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise TrainError(f"{path} is damaged ({first_line(e)[:100]}): "
                         f"delete it and train again") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise TrainError(f"{path} is not a checkpoint written by train.py (it has no "
                         f"{', '.join(missing)}): give a run folder made by train.py")
    return ck


# What every checkpoint holds (checkpoint()); a fine-tuned run's also the model, plans and mode.
CHECKPOINT_KEYS = ("stage", "step", "done", "config", "identity", "optimizer")


def checkpoint_path(run):
    """What a run is judged by: its best.pt (lowest validation loss), else ckpt.pt, or the file
    given."""
    run = Path(run)
    if not run.is_dir():
        return run
    return run / "best.pt" if (run / "best.pt").exists() else run / "ckpt.pt"


def run_checkpoint(run, device="cpu"):
    """-> (checkpoint_path(run), its checkpoint), checked to be a fine-tuned run's."""
    path = checkpoint_path(run)
    if not path.exists():
        raise TrainError(f"no checkpoint at {path}: give a run folder made by train.py (e.g. "
                         "out/soft-joint)")
    if path == Path(run) and not zipfile.is_zipfile(path):  # a file given, a corpus say
        raise TrainError(f"{path} is not a checkpoint: give a run folder made by train.py (e.g. "
                         "out/soft-joint) or its ckpt.pt")
    ck = load_checkpoint(path, device)
    if ck["stage"] != "finetune":
        raise TrainError(f"{path} is a pretraining checkpoint ({ck['stage']}): evaluate a "
                         "fine-tuned run")
    return path, ck


@contextlib.contextmanager
def readable(path):
    """Whatever a checkpoint that is a valid file but not train.py's breaks, as one line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError,
            AssertionError, TrainError) as e:
        raise TrainError(f"{path} does not hold a run this code can read ({type(e).__name__}: "
                         f"{first_line(e)[:80]}): give a run folder made by train.py") from None


def load_state(net, ck):
    if hasattr(net, "plans"):
        net.lm.load_state_dict(ck["model"])
        if "plans" in ck and ck.get("mode") == net.plans.mode:
            net.plans.load_state_dict(ck["plans"])
    if net.planner is not None and "planner" in ck:
        net.planner.load_state_dict(ck["planner"])


# Where a run is kept, on what hardware, and how it was started: a run can continue elsewhere,
# under another name, with or without torch.compile.
NOT_THE_RUN = ("data_dir", "out_dir", "pretrain_dir", "run", "device", "compile", "resume",
               "overwrite")


def other_settings(saved, asked, defaults):
    """The settings asked for that a run was not made with: -> [(flag, made with, asked)]. A
    setting the run predates was made with its default."""
    made = lambda k: saved.get(k, defaults.get(k))
    return [(f"--{k.replace('_', '-')}", made(k), v)
            for k, v in asked.items() if k not in NOT_THE_RUN and v != made(k)]


def refuse_other_settings(saved, args, ckpt_path, defaults):
    """Continuing a run with other settings would make a run that no command describes."""
    if changed := other_settings(saved, vars(args), defaults):
        raise TrainError(f"--resume: {ckpt_path} was made with "
                         f"{', '.join(f'{k} {was}' for k, was, _ in changed)}, not "
                         f"{', '.join(f'{k} {now}' for k, _, now in changed)}: continue with the "
                         f"same flags, or delete {ckpt_path.parent} to start the run over")


def refuse_other_data(ck, dataset, corpus, ckpt_path, fix):
    """Continuing or scoring a run on other data (the corpus file changed under its name, other
    labels) would make a run of neither."""
    have = corpus.identity()
    if other := [k for k, v in ck["identity"].items() if have.get(k) != v]:
        raise TrainError(f"{ckpt_path} was trained on other data than --dataset {dataset} gives "
                         f"now (its {' and '.join(other)} differ): restore that data, or {fix}")


def run_exists(ckpt_path):
    """Why a new run may not start where one is: a finished run is never replaced silently."""
    try:
        ck = load_checkpoint(ckpt_path)
        what = ("a finished run" if ck.get("done") else
                f"a run stopped at step {ck['step']} (continue it with --resume)")
    except (TrainError, KeyError):
        what = "a run whose checkpoint cannot be read"
    return (f"{ckpt_path.parent} already holds {what}: name this one with --run NAME, or add "
            "--overwrite to replace it")


def stage_dir(args, name, identity, *settings):
    """Pretrained stages are keyed by everything that changes their result (identity: of the data
    they read), so modes share them."""
    key = json.dumps([identity, args.seed, autocast_dtype(args).__repr__(),
                      Context.get().world, *settings], sort_keys=True, default=str)
    return (Path(args.pretrain_dir or Path(args.out_dir) / "pretrain")
            / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")


def finished(ckpt_path, net, args):
    """Load a pretrained stage that an earlier run completed; False if there is none (or it was cut
    short)."""
    if not ckpt_path.exists():
        return False
    try:
        ck = load_checkpoint(ckpt_path, args.device)
        if ck["done"]:  # what the stage hands on: its best weights by validation loss
            load_state(net, ck if ck.get("best_step", ck["step"]) == ck["step"] else
                       load_checkpoint(ckpt_path.with_name("best.pt"), args.device))
    except TrainError as e:  # shared by every run in this out-dir: say which folder to delete
        raise TrainError(f"pretrained stage {ckpt_path.parent}: {e} "
                         f"(rm -r {ckpt_path.parent} retrains it)") from None
    return ck["done"]


def read_log(run):
    """The records a run's stages appended to log.jsonl next to its checkpoint, oldest first: a
    torn line is skipped with a warning, a step logged twice (a failed save, then --resume) kept
    once, its last record."""
    path = (Path(run) if Path(run).is_dir() else Path(run).parent) / "log.jsonl"
    if not path.exists():
        raise TrainError(f"no training log at {path}: train.py writes one next to every checkpoint")
    records = {}
    for n, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            print(f"warning: {path} line {n} is not a whole record (cut short?): skipped",
                  file=sys.stderr)
            continue
        if isinstance(record, dict) and "step" in record:
            records[record["step"]] = record
    return list(records.values())


# ----------------------------------------------------------------------------- one stage's run


# Ctrl-C, and what schedulers (SLURM, Kubernetes) and closed terminals send before they kill.
STOP_SIGNALS = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]


def stop_like_ctrl_c():
    """Outside the training loops, SIGTERM and SIGHUP interrupt as Ctrl-C does (KeyboardInterrupt:
    train.py says what was kept), instead of killing the process without a word."""
    for name in STOP_SIGNALS[1:]:
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(getattr(signal, name), signal.default_int_handler)


class StopRequest:
    """Ctrl-C (or SIGTERM, SIGHUP) in the loop: finish the step under way, then save and stop. A
    second one quits at once.

    A KeyboardInterrupt raised mid-step can land inside opt.step() and leave some parameter groups
    one update ahead of the others; a flag read between whole steps never saves half a step.
    """

    def __enter__(self):
        self.requested, self.previous, self.holding, self.pending = False, {}, False, False
        try:
            for name in STOP_SIGNALS:
                number = getattr(signal, name)
                self.previous[number] = signal.signal(number, self.handle)
        except ValueError:  # not the main thread, where only the main thread may catch signals
            pass
        return self

    def handle(self, signum, frame):
        if self.requested and self.holding:
            self.pending = True
            print("\nquitting once this checkpoint is written", file=sys.stderr)
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this step (another one quits without saving it)",
              file=sys.stderr)

    def __exit__(self, *exc):
        for number, previous in self.previous.items():
            signal.signal(number, previous)

    @contextlib.contextmanager
    def held(self):
        """A second Ctrl-C waits until the block ends (the checkpoint, best.pt and the log are
        written together), then quits."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending:
            raise KeyboardInterrupt

    def agreed(self, device):
        """Under DDP every process stops at the same step, whichever of them got the signal."""
        if not dist.is_initialized():
            return self.requested
        flag = torch.tensor(float(self.requested), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)


def kept(saved, path):
    """The sentence that ends a stopped run's message: it names a checkpoint only if this run wrote
    or read it."""
    return (f"The last good checkpoint (step {saved}) is kept at {path}" if saved is not None
            else "No checkpoint was written")


def schedule(stage, iters, args, corpus):
    """-> (what one step reads, a line saying what the schedule means for this corpus, passes over
    it)."""
    world, split = Context.get().world, corpus.splits["train"]
    if stage == "planner":
        per_step, unit, have = (args.planner_batch * args.grad_accum * world, "documents",
                                len(split.doc_sent) - 1)
    else:
        per_step, unit, have = (args.batch_size * args.grad_accum * world * args.block_size,
                                "tokens", len(split.tokens))
    passes = iters * per_step / have
    return per_step, (f"{stage}: {per_step:,} {unit} a step x {iters:,} steps = "
                      f"{iters * per_step:,} {unit}, "
                      f"{passes:.2f} passes over the {have:,} training {unit}"), passes


def save_untrained(net, args, corpus, ckpt_path, record):
    """A run with nothing to learn (--mode none, the LM frozen): its starting weights, validated,
    written as a finished run of step 0."""
    if Context.get().master:
        for old in ("best.pt", "log.jsonl"):  # of the run it replaces (--overwrite)
            ckpt_path.with_name(old).unlink(missing_ok=True)
        save(checkpoint(net, args, corpus, "finetune", 0, None, True, (record["val_loss"], 0)),
             ckpt_path)
        keep_best(ckpt_path)
        with atomic_write(ckpt_path.parent / "log.jsonl") as tmp:
            Path(tmp).write_text(json.dumps(dict(record, step=0, best_step=0)) + "\n")


class Run:
    """One stage's run in ckpt_path's folder, as train.py's loop drives it:

        first = run.begin(net, opt, resume)     # continue from the checkpoint, or start the log
                                                # afresh
        with run.stopping():                    # Ctrl-C, SIGTERM, SIGHUP: finish the step, stop
            for step in run.steps():            # a progress bar; ends early once a stop is agreed
                ...one optimisation step...
                run.check_loss(total, step)     # the NaN guard, before the update is applied
                run.step_done(step + 1, total)  # the progress bar
                if (step + 1) % eval_interval == 0 or step + 1 == iters:
                    run.record(step + 1, total, opt, net, val_fn())  # log, save, keep the best
        run.end(net, opt)                       # save and say how to resume, or go on from the best
    """

    def __init__(self, stage, iters, args, corpus, ckpt_path):
        self.stage, self.iters, self.args, self.corpus, self.ckpt = (
            stage, iters, args, corpus, ckpt_path)
        self.ctx, self.log = Context.get(), ckpt_path.parent / "log.jsonl"
        self.saved, self.best, self.stop = None, (math.inf, None), None
        # On a GPU, reading a value the device computed waits for all its queued work: the loop
        # reads its loss (and, under DDP, agrees on a stop) every SYNC_EVERY steps and before
        # every save, not every step; on a CPU there is nothing to wait for.
        self.sync_every = SYNC_EVERY if str(args.device).startswith("cuda") else 1
        self.nonfinite, self.last_read = None, 0

    def begin(self, net, opt, resume):
        """-> the first step: the checkpoint's, if resuming from one, else 0 with an empty log."""
        step, args = 0, self.args
        if resume and self.ckpt.exists():
            # a pretrained stage's folder is keyed by its settings; a run's flags and data were
            # checked against its checkpoint before its planner stage (train.run_stages)
            ck = load_checkpoint(self.ckpt, args.device)
            try:
                load_state(net, ck)
                opt.load_state_dict(ck["optimizer"])
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise TrainError(f"--resume: {self.ckpt} does not fit this run's model "
                                 f"({type(e).__name__}: {first_line(e)[:80]}): delete it to start "
                                 "the run over") from None
            step = self.saved = ck["step"]
            self.best = ck.get("best_loss", math.inf), ck.get("best_step")
        elif self.ctx.master:  # a run started over (--overwrite): nothing of the old one mixes in
            self.log.parent.mkdir(parents=True, exist_ok=True)
            for old in (self.ckpt, self.ckpt.with_name("best.pt")):
                old.unlink(missing_ok=True)
            self.log.write_text("")
        if args.compile and hasattr(net, "lm"):
            # the LM only: its shapes are fixed, the planner's change with every batch
            net.lm.compile()
        self.per_step, plan, passes = schedule(self.stage, self.iters, args, self.corpus)
        if self.ctx.master:
            print(plan)
            if self.stage != "planner" and passes > WARN_PASSES:
                print(f"warning: {passes:.0f} passes over the corpus: the LM will overfit long "
                      f"before the end (the checkpoint of the best val loss is kept): use fewer "
                      f"--{self.stage}-iters, a smaller model, --dropout 0.1, or a larger corpus",
                      file=sys.stderr)
        self.done = step
        return step

    def parallel(self, net):
        """The module the loop calls: DDP's wrapper under torchrun, else net itself."""
        return DDP(net) if self.ctx.world > 1 else net

    def no_sync(self, model, micro):
        """Gradients are averaged across processes once a step, at its last micro-batch."""
        last = micro == self.args.grad_accum - 1 or self.ctx.world == 1
        return contextlib.nullcontext() if last else model.no_sync()

    @contextlib.contextmanager
    def stopping(self):
        name = self.args.run if self.stage == "finetune" else "shared"
        self.bar = tqdm(range(self.done, self.iters), initial=self.done, total=self.iters,
                        desc=f"{self.stage} [{name}]", disable=None if self.ctx.master else True,
                        dynamic_ncols=True)
        self.started, self.first, self.paused = time.time(), self.done, 0.0
        self.last_read = self.done
        with StopRequest() as self.stop:
            try:
                yield
            except KeyboardInterrupt:  # the second Ctrl-C, mid-step: nothing of that step is kept
                go_on = (f"; continue with the same command"
                         f"{' and --resume' if self.stage == 'finetune' else ''}"
                         if self.saved is not None else "")
                raise TrainError(f"interrupted twice during step {self.done + 1} of {self.stage}: "
                                 f"that step was not saved. "
                                 f"{kept(self.saved, self.ckpt)}{go_on}") from None
            finally:
                self.bar.close()

    def steps(self):
        for step in self.bar:
            # where the loss was read: a stop saves no step that was not checked
            if (step == self.first or self.reads(step)) and self.stop.agreed(self.args.device):
                return
            yield step

    def reads(self, done):
        """Whether the loop reads the device's values after step `done`."""
        return (done % self.sync_every == 0 or done % self.args.eval_interval == 0
                or done == self.iters)

    def check_loss(self, total, step):
        """Average the step's loss over processes; refuse to apply a step whose loss is not
        finite (on a GPU: stop at the next read, nothing saved after the last good step)."""
        if self.ctx.world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.AVG)
        bad = ~torch.isfinite(total)
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad
        if not self.reads(step + 1):
            return
        if self.nonfinite.item():
            what = (f"{total.item()} at step {step + 1}" if step == self.last_read else
                    f"not finite at one of steps {self.last_read + 1}-{step + 1}")
            raise TrainError(f"{self.stage}: the loss became {what}; stopped. "
                             f"{kept(self.saved, self.ckpt)}: lower the learning rate and rerun")
        self.last_read = step + 1

    def step_done(self, done, total):
        """The progress bar: the loss where the loop reads it, the speed. The speed is the steps'
        alone: from the end of the first one (which warms up: allocations, kernels, compiling; a
        validation right after it logs its speed), not counting validation and saving (record)."""
        self.done, self.step_end = done, time.time()
        if done == self.first + 1:
            self.rate, self.t0 = self.per_step / (self.step_end - self.started), self.step_end
        else:
            self.rate = ((done - self.first - 1) * self.per_step
                         / max(self.step_end - self.t0 - self.paused, 1e-9))
        if self.reads(done):
            self.bar.set_postfix(loss=f"{total.item():.3f}",
                                 ppl=f"{math.exp(min(total.item(), 50)):.1f}",
                                 **{"tok/s" if self.stage != "planner" else "docs/s":
                                    f"{self.rate:,.0f}"})

    def record(self, done, total, opt, net, metrics):
        """After a validation (metrics): log, save, keep the best checkpoint."""
        args = self.args
        record = dict(step=done, train_loss=total.item(), lr=opt.param_groups[0]["lr"],
                      per_s=round(self.rate, 1), seconds=round(time.time() - self.started, 1),
                      **metrics)
        if bad := [f"{k} {v}" for k, v in record.items() if not math.isfinite(v)]:
            raise TrainError(f"{self.stage}: at step {done} {', '.join(bad)}; stopped without "
                             f"saving that step. "
                             f"{kept(self.saved, self.ckpt)}: lower the learning rate and rerun")
        score = record.get("val_loss", record.get("planner_val_loss"))
        if self.ctx.world > 1:  # rank 0's verdict for all: end() waits on the best step they agree
            score = torch.tensor(score, dtype=torch.float64, device=args.device)
            dist.broadcast(score, 0)
            score = score.item()
        improved = score < self.best[0]
        self.best = (score, done) if improved else self.best
        with self.stop.held():
            if self.ctx.master:
                self.bar.write(f"{self.stage} step {done}: "
                               + ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                                           if k != "step")
                               + (" (best so far)" if improved
                                  else f" (best: step {self.best[1]})"))
                save(checkpoint(net, args, self.corpus, self.stage, done, opt,
                                done == self.iters, self.best), self.ckpt)
                if improved:
                    keep_best(self.ckpt)
                with open(self.log, "a") as f:  # after the save: the log never runs ahead of it
                    f.write(json.dumps(dict(record, best_step=self.best[1])) + "\n")
            self.saved = done
        self.paused += time.time() - self.step_end  # validation and saving: not the steps' speed

    def end(self, net, opt):
        """A stop: save what is done and say how to go on. Else go on from the best checkpoint by
        val loss."""
        done, args = self.done, self.args
        if self.stop.requested:
            if self.saved != done:
                if self.ctx.master:
                    save(checkpoint(net, args, self.corpus, self.stage, done, opt,
                                    done == self.iters, self.best),
                         self.ckpt)
                self.saved = done
            raise TrainError(f"interrupted after step {done} of {self.stage}: saved {self.ckpt}; "
                             f"continue with the same command"
                             f"{' and --resume' if self.stage == 'finetune' else ''}")
        if self.best[1] not in (None, done):
            if self.ctx.master:
                print(f"{self.stage}: the best val loss ({self.best[0]:.4g}) was at step "
                      f"{self.best[1]} of {done}: "
                      f"going on with that checkpoint, {self.ckpt.with_name('best.pt')}")
            if self.ctx.world > 1:
                dist.barrier()  # rank 0 wrote it
            load_state(net, load_checkpoint(self.ckpt.with_name("best.pt"), args.device))
        return net

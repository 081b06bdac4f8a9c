"""
GPT-2's weights for our GPT (model.GPT.from_pretrained), the paper's own setting: a pretrained LM
conditioned on plans.

    from model import GPT
    lm = GPT.from_pretrained("gpt2", block_size=128)   # downloaded once into data/pretrained/gpt2
    lm = GPT.from_pretrained("path/to/folder")         # config.json + model.safetensors

A name is downloaded from the Hugging Face Hub at a pinned revision (MODELS), through the same code
as WikiText-103 (corpora.download: resumed, retried; offline, one line names where to put the files
by hand); a folder in the Hub's layout is read as it is. What arrives is checked before it is used:
the file's size against its own header, every tensor's name and shape against config.json.

safetensors is read by a short reader of our own, not the `safetensors` package: the format is an
8-byte length, a JSON header and the raw little-endian tensors, so twenty lines read it, the
project needs no other package for it, and nothing in the file can run code (unlike a pickled
pytorch_model.bin, which is refused by never being read).

What makes the same weights give GPT-2's logits: two GPTConfig options (the from-scratch defaults
differ), biases in every linear layer and the tanh approximation of GELU; and two things done here
on load, the 1,024-position table cut to the training window and GPT-2's Conv1D weights ([in, out])
transposed to nn.Linear's [out, in].
"""

import json
import os
from pathlib import Path

import numpy as np
import torch

import corpora
from corpora import VOCAB_SIZE, DataError

HUB = "https://huggingface.co"
# name -> (Hub repository, the commit every download is pinned to)
MODELS = {"gpt2": ("openai-community/gpt2", "607a30d783dfa663caf39e06633721c8d4cfcd7e"),
          "gpt2-medium": ("openai-community/gpt2-medium",
                          "6dcaa7a952f72f9298047fd5137cd6e4f05f41da")}
FILES = ("config.json", "model.safetensors")
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
# GPT-2's activation names -> GPTConfig.gelu
GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}


def gpt2(name_or_folder, data_dir=None, block_size=None, **settings):
    """-> (GPTConfig fields, state dict in our names): GPT-2's weights, checked. block_size: the
    training window (at most the model's positions; default all of them); settings: other GPTConfig
    fields (plan_dim, dropout, adapter_from)."""
    folder = files(name_or_folder, data_dir or Path(__file__).resolve().parent / "data")
    hf = read_config(folder / "config.json")
    positions = hf["n_positions"]
    block_size = block_size or positions
    if block_size > positions:
        raise DataError(f"--block-size {block_size}: {name_or_folder} has {positions} positions: "
                        f"use at most {positions}")
    header = read_header(folder / "model.safetensors")
    names = our_names(hf["n_layer"])
    check_shapes(header, names, expected_shapes(hf), folder / "model.safetensors")
    theirs = read_safetensors(folder / "model.safetensors", header,
                              [their for their, _ in names.values()])
    weights = {}
    for ours, (their, conv1d) in names.items():
        w = theirs[their].float()
        weights[ours] = w.T.contiguous() if conv1d else w
    weights["wpe.weight"] = weights["wpe.weight"][:block_size].clone()  # the window's positions
    config = dict(vocab_size=hf["vocab_size"], block_size=block_size, n_layer=hf["n_layer"],
                  n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True,
                  gelu=GELU[hf["activation_function"]], **settings)
    return config, weights


# ----------------------------------------------------------------------------- the files

def files(name_or_folder, data_dir):
    """The folder holding config.json and model.safetensors: given, or downloaded for a name."""
    if name_or_folder in MODELS:
        folder = Path(data_dir) / "pretrained" / name_or_folder
        for name in FILES:
            if not (folder / name).exists():
                fetch(name_or_folder, name, folder)
        return folder
    folder = Path(name_or_folder)
    if not folder.is_dir():
        raise DataError(f"--init-from {name_or_folder}: neither one of {', '.join(MODELS)} nor a "
                        f"folder: give a name or a folder with {' and '.join(FILES)}")
    if missing := [name for name in FILES if not (folder / name).is_file()]:
        raise DataError(f"--init-from {folder} lacks {' and '.join(missing)}: a folder in the "
                        f"Hugging Face layout holds {' and '.join(FILES)} (the weights as "
                        f"safetensors, not pytorch_model.bin)")
    return folder


def fetch(model, name, folder):
    """One file of a Hub model at its pinned revision into folder, checked before it is kept."""
    repo, revision = MODELS[model]
    url, dest = f"{HUB}/{repo}/resolve/{revision}/{name}", folder / name
    try:
        part = corpora.download(url, dest)
    except OSError as e:
        raise DataError(f"cannot download {url} ({corpora.first_line(e)}): download "
                        f"{' and '.join(FILES)} of {HUB}/{repo}/tree/{revision} by hand and put "
                        f"them in {folder}") from None
    try:
        if name == "config.json":
            read_config(part)
        else:
            check_shapes(read_header(part), our_names(read_config(folder / "config.json")
                                                      ["n_layer"]),
                         expected_shapes(read_config(folder / "config.json")), part)
    except DataError as e:
        part.unlink()  # complete but wrong: the next try starts afresh
        raise DataError(f"{e}; deleted it") from None
    os.replace(part, dest)


def read_config(path):
    """config.json of a GPT-2, with every setting our GPT cannot reproduce refused by name."""
    try:
        hf = json.loads(Path(path).read_text())
        keys = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
        if not all(isinstance(hf.get(k), int) and hf[k] > 0 for k in keys):
            raise ValueError(f"it needs positive integers {', '.join(keys)}")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise DataError(f"{path} is no GPT-2 config.json ({corpora.first_line(e)})") from None
    differs = [f"{k} {hf.get(k)!r} (ours: {want!r})" for k, want in (
        ("model_type", "gpt2"), ("vocab_size", VOCAB_SIZE), ("layer_norm_epsilon", 1e-5),
        ("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
        ("reorder_and_upcast_attn", False), ("tie_word_embeddings", True))
        if hf.get(k, want) != want]
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        differs.append(f"n_inner {hf['n_inner']} (ours: 4 x n_embd)")
    if hf.get("activation_function", "gelu_new") not in GELU:
        differs.append(f"activation_function {hf['activation_function']!r} "
                       f"(ours: {', '.join(GELU)})")
    if hf["n_embd"] % hf["n_head"]:
        differs.append(f"n_embd {hf['n_embd']} not a multiple of n_head {hf['n_head']}")
    if differs:
        raise DataError(f"{path}: this GPT cannot reproduce {'; '.join(differs)}")
    hf.setdefault("activation_function", "gelu_new")
    return hf


# ----------------------------------------------------------------------------- names and shapes

def our_names(n_layer):
    """Our parameter name -> (GPT-2's name, whether it is a Conv1D weight to transpose)."""
    names = {k: (k, False) for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    for i in range(n_layer):
        for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.qkv", "attn.c_attn"),
                             ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                             ("mlp.proj", "mlp.c_proj")):
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = (f"h.{i}.{theirs}.{kind}",
                                                      kind == "weight" and "ln" not in ours)
    return names


def expected_shapes(hf):
    """GPT-2's name -> the shape config.json implies (Conv1D weights are [in, out])."""
    c = hf["n_embd"]
    shapes = {"wte.weight": [hf["vocab_size"], c], "wpe.weight": [hf["n_positions"], c],
              "ln_f.weight": [c], "ln_f.bias": [c]}
    for i in range(hf["n_layer"]):
        for name, shape in (("ln_1.weight", [c]), ("ln_1.bias", [c]), ("ln_2.weight", [c]),
                            ("ln_2.bias", [c]), ("attn.c_attn.weight", [c, 3 * c]),
                            ("attn.c_attn.bias", [3 * c]), ("attn.c_proj.weight", [c, c]),
                            ("attn.c_proj.bias", [c]), ("mlp.c_fc.weight", [c, 4 * c]),
                            ("mlp.c_fc.bias", [4 * c]), ("mlp.c_proj.weight", [4 * c, c]),
                            ("mlp.c_proj.bias", [c])):
            shapes[f"h.{i}.{name}"] = shape
    return shapes


def unprefixed(name):
    """A model saved with its head (GPT2LMHeadModel) names the body transformer.*."""
    return name.removeprefix("transformer.")


def check_shapes(header, names, shapes, path):
    have = {unprefixed(k): v["shape"] for k, v in header.items()}
    problems = [f"{k} missing" for _, (k, _) in names.items() if k not in have]
    problems += [f"{k} is {have[k]}, config.json says {shapes[k]}" for k in shapes
                 if k in have and have[k] != shapes[k]]
    if problems:
        raise DataError(f"{path} does not hold the GPT-2 its config.json describes: "
                        f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}")


# ----------------------------------------------------------------------------- safetensors

def read_header(path):
    """The JSON header of a safetensors file, checked against the file's size: name -> {dtype,
    shape, data_offsets}."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
        try:
            if not 2 <= n <= size - 8:
                raise ValueError(f"a header of {n} bytes in a file of {size:,}")
            header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            end = 0
            for name, t in header.items():
                a, b = t["data_offsets"]
                if not all(isinstance(x, int) and x >= 0 for x in (a, b, *t["shape"])):
                    raise ValueError(f"tensor {name}: offsets {a}, {b}, shape {t['shape']}")
                numel = int(np.prod(t["shape"], dtype=np.int64))
                if t["dtype"] not in DTYPES or b - a != numel * DTYPES[t["dtype"]].itemsize:
                    raise ValueError(f"tensor {name}: {t['dtype']} {t['shape']} in {b - a} bytes")
                end = max(end, b)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path} is no safetensors file ({corpora.first_line(e)}): download "
                            "it again") from None
    if 8 + n + end != size:
        raise DataError(f"{path} is {size:,} bytes but its header describes {8 + n + end:,}: cut "
                        "short or damaged: delete it and download it again")
    return header


def read_safetensors(path, header=None, names=None):
    """-> {name: tensor} of a safetensors file (GPT-2's names without the transformer. prefix),
    of those names only if given."""
    header = header or read_header(path)
    with open(path, "rb") as f:
        start = 8 + int.from_bytes(f.read(8), "little")
    raw = np.memmap(path, np.uint8, "r")
    out = {}
    for name, t in header.items():
        if names is not None and unprefixed(name) not in names:
            continue
        a, b = t["data_offsets"]
        buffer = bytearray(raw[start + a:start + b])  # a copy: the file stays read-only
        out[unprefixed(name)] = (torch.frombuffer(buffer, dtype=DTYPES[t["dtype"]])
                                 if b > a else torch.empty(0, dtype=DTYPES[t["dtype"]])
                                 ).reshape(t["shape"])
    return out

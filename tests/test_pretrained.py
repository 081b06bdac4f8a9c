"""GPT-2's weights in our GPT (pretrained.py, GPT.from_pretrained): the same logits as the reference
implementation for a tiny GPT-2 it saved (tests/fixtures, made once by make_tiny_gpt2.py; these
tests never import transformers), every fault of the files one line, the download on loopback."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import corpora
import eval as evaluation
import pretrained
import sample as sampling
import train
from model import GPT, GPTConfig
import test_download
from test_download import Server

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny-gpt2"
REFERENCE = json.loads((FIXTURE / "logits.json").read_text())
server = test_download.server  # the loopback HTTP server, a fixture


def reference():
    return torch.tensor(REFERENCE["logits"], dtype=torch.float64)


def logits_of(lm):
    x = torch.tensor([REFERENCE["input"]])
    with torch.no_grad():
        logits, _ = lm.eval()(x)
        _, loss = lm(x[:, :-1], x[:, 1:])
    return logits[0][:, REFERENCE["columns"]].double(), loss.item()


@pytest.mark.parametrize("block_size", [None, 16])
def test_the_reference_logits_in_float32(block_size):
    """All 48 positions, or the first 16 (the window), with adapters (zero: no change)."""
    lm = GPT.from_pretrained(FIXTURE, block_size=block_size, plan_dim=4, adapter_from=1)
    assert lm.config.block_size == (block_size or 48) and lm.config.bias
    assert lm.blocks[0].adapter is None and lm.blocks[1].adapter is not None
    logits, loss = logits_of(lm)
    assert torch.allclose(logits, reference(), atol=1e-5, rtol=0)
    assert loss == pytest.approx(REFERENCE["loss"], abs=1e-5)
    assert lm.lm_head.weight is lm.wte.weight  # still tied


def test_each_detail_of_gpt2_changes_the_logits(monkeypatch):
    """Without the tanh GELU (its logits beyond the tolerance above), or with Conv1D weights read
    as nn.Linear's, our GPT is not GPT-2: the options are needed, and the tests would see them
    gone."""
    config, weights = pretrained.gpt2(FIXTURE)
    exact = GPT(GPTConfig(**dict(config, gelu="exact")))
    exact.load_state_dict(weights, strict=False)
    assert (logits_of(exact)[0] - reference()).abs().max() > 2e-5  # measured: 5.8e-5
    monkeypatch.setattr(pretrained, "our_names", lambda n: {
        k: (their, False) for k, (their, _) in our_names(n).items()})
    with pytest.raises(RuntimeError, match="size mismatch"):  # [in, out] read as [out, in]
        GPT.from_pretrained(FIXTURE)


our_names = pretrained.our_names


def copy_fixture(tmp_path):
    folder = tmp_path / "gpt2"
    shutil.copytree(FIXTURE, folder)
    return folder


@pytest.mark.parametrize("fault, message", [
    ("cut", "is 1,619,303 bytes but its header describes 1,619,304: cut short"),
    ("header", "is no safetensors file"),
    ("shape", "does not hold the GPT-2 its config.json describes: wte.weight is \\[50257, 8\\], "
              "config.json says \\[50257, 16\\]"),
    ("activation", "cannot reproduce activation_function 'relu'"),
    ("vocabulary", "cannot reproduce vocab_size 100 \\(ours: 50257\\)"),
    ("untied", "cannot reproduce tie_word_embeddings False"),
    ("no weights", "lacks model.safetensors: .* not pytorch_model.bin"),
    ("window", "--block-size 64: .* has 48 positions: use at most 48"),
    ("not a folder", "neither one of gpt2, gpt2-medium nor a folder"),
])
def test_a_bad_folder_is_one_line_that_names_the_fault(tmp_path, fault, message):
    folder = copy_fixture(tmp_path)
    weights, config = folder / "model.safetensors", folder / "config.json"
    hf = json.loads(config.read_text())
    settings = {}
    if fault == "cut":
        weights.write_bytes(weights.read_bytes()[:-1])
    elif fault == "header":
        weights.write_bytes((10).to_bytes(8, "little") + b"not json!!" + b"\0" * 100)
    elif fault in ("shape", "activation", "vocabulary", "untied"):
        hf.update({"shape": {"n_embd": 16}, "activation": {"activation_function": "relu"},
                   "vocabulary": {"vocab_size": 100}, "untied": {"tie_word_embeddings": False}}[
                       fault])
        config.write_text(json.dumps(hf))
    elif fault == "no weights":
        weights.unlink()
    elif fault == "window":
        settings = {"block_size": 64}
    elif fault == "not a folder":
        folder = tmp_path / "nowhere"
    with pytest.raises(corpora.DataError, match=message):
        GPT.from_pretrained(folder, **settings)


def hub_files(monkeypatch, base, model="gpt2"):
    repo, revision = pretrained.MODELS[model]
    monkeypatch.setattr(pretrained, "HUB", base)
    for name in pretrained.FILES:
        Server.FILES[f"/{repo}/resolve/{revision}/{name}"] = (FIXTURE / name).read_bytes()
    return f"/{repo}/resolve/{revision}/"


def test_a_name_downloads_the_pinned_revision_once_and_checks_it(server, monkeypatch, tmp_path):
    prefix = hub_files(monkeypatch, server)
    Server.CUT.add(prefix + "model.safetensors")  # the first try is cut: resumed
    lm = GPT.from_pretrained("gpt2", tmp_path, block_size=16)
    assert torch.allclose(logits_of(lm)[0], reference(), atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "pretrained" / "gpt2").iterdir()) == [
        "config.json", "model.safetensors"]  # no .part left
    assert any(rng for path, rng in Server.seen if path.endswith("safetensors"))
    Server.seen.clear()
    GPT.from_pretrained("gpt2", tmp_path)
    assert not Server.seen  # downloaded once


def test_a_wrong_download_is_deleted_and_offline_says_where_to_put_the_files(server, monkeypatch,
                                                                             tmp_path):
    prefix = hub_files(monkeypatch, server, "gpt2-medium")
    Server.FILES[prefix + "model.safetensors"] = Server.FILES[prefix + "model.safetensors"][:-8]
    with pytest.raises(corpora.DataError, match="cut short .*; deleted it"):
        GPT.from_pretrained("gpt2-medium", tmp_path)
    assert not (tmp_path / "pretrained" / "gpt2-medium" / "model.safetensors.part").exists()
    monkeypatch.setattr(pretrained, "HUB", "http://127.0.0.1:9")  # nothing listens there
    dest = tmp_path / "pretrained" / "gpt2-medium"
    with pytest.raises(corpora.DataError, match=f"download config.json and model.safetensors of "
                                                f".* by hand and put them in {dest}"):
        GPT.from_pretrained("gpt2-medium", tmp_path)


def test_a_pretrained_lm_conditioned_on_plans_end_to_end(tmp_path):
    """--init-from: no LM pretraining; --train-lm adapters: none is GPT-2 as it is, fixed and soft
    learn only their adapters (and plans); all: the LM learns too; eval and sampling read the
    runs."""
    flags = ["--dataset", "synthetic", "--synthetic-docs", "200", "--n-labels", "8",
             "--embed-dim", "16", "--block-size", "32", "--batch-size", "4",
             "--planner-iters", "10", "--finetune-iters", "4", "--eval-interval", "2",
             "--eval-iters", "1", "--warmup-iters", "1", "--device", "cpu",
             "--out-dir", str(tmp_path / "out"),
             "--data-dir", str(tmp_path / "data"), "--init-from", str(FIXTURE)]
    adapters = flags + ["--train-lm", "adapters", "--adapter-from", "1"]
    for mode in ("none", "fixed", "soft"):
        train.main(adapters + ["--mode", mode])
    train.main(flags + ["--mode", "fixed", "--run", "fixed-all"])
    assert [p.name.split("-")[0] for p in (tmp_path / "out" / "pretrain").iterdir()] == ["planner"]
    gpt2 = GPT.from_pretrained(FIXTURE, block_size=32, plan_dim=16, adapter_from=1).state_dict()
    changed = {}
    for run in ("none", "fixed", "soft-joint", "fixed-all"):
        net, ck, _ = evaluation.load_run(tmp_path / "out" / run)
        assert ck["config"]["n_layer"] == 2 and net.lm.config.gelu == "tanh"
        lm = net.lm.state_dict()
        changed[run] = {k for k, v in lm.items()
                        if k not in gpt2 or v.shape != gpt2[k].shape or not torch.equal(v, gpt2[k])}
        assert math.isfinite(evaluation.evaluate(tmp_path / "out" / run)["perplexity"])
    assert changed["none"] == set()  # nothing to learn: GPT-2 itself
    assert changed["fixed"] == changed["soft-joint"] == {"blocks.1.adapter.weight"}
    assert {"wte.weight", "blocks.0.adapter.weight"} <= changed["fixed-all"]  # no adapter_from
    net, _, corpus = evaluation.load_run(tmp_path / "out" / "soft-joint")
    assert corpus.vocab is None  # GPT-2 reads GPT-2 ids, the synthetic corpus's closed one unused
    assert len(sampling.sample(net, corpus, 2, force=[1, 2])) == 2
    for bad, message in ((["--n-layer", "4"], "takes the LM's shape from its weights: drop "
                                              "--n-layer"),
                         (["--adapter-from", "2"], "the LM has 2 layers \\(0 to 1\\), so no "
                                                   "plan would reach it: use at most 1")):
        with pytest.raises(SystemExit, match=message):
            train.main(flags + bad + ["--run", "refused"])

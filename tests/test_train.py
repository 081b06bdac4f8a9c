"""Tests for train.py and eval.py on the synthetic corpus: the method end to end, and the loop's
guarantees."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import compare
import corpora
import data
import eval as evaluation
import explore
import figures
import mix
import planner
import runtime
import sample as sampling
import train
from mix import Plans
from model import GPT, GPTConfig
from planner import Planner, PlannerConfig

TINY = ["--dataset", "synthetic", "--synthetic-docs", "600", "--n-labels", "16",
        "--embed-dim", "32", "--n-layer", "2", "--n-embd", "32", "--n-head", "2",
        "--block-size", "64", "--batch-size", "8", "--lm-iters", "150", "--planner-iters", "150",
        "--finetune-iters", "80", "--eval-interval", "40",
        "--eval-iters", "4", "--lr", "3e-3", "--planner-lr", "3e-3", "--finetune-lr", "3e-3",
        "--warmup-iters", "10", "--device", "cpu"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Runs none, oracle and soft (joint) once; the pretrained stages they share are reused by later
    tests.

    The oracle run fine-tunes longer, until its LM writes the sentence type it is told to."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--out-dir", str(root / "out"), "--data-dir", str(root / "data")]
    for mode, iters in (("none", 80), ("oracle", 300), ("soft", 80)):
        run(TINY + common + ["--mode", mode, "--finetune-iters", iters])
    return common, root


def run(argv):
    train.main([str(a) for a in argv])


def test_plans_lower_perplexity_end_to_end(dirs):
    """The synthetic corpus makes the next sentence's type predictable from earlier sentences only:
    the oracle plan and the jointly trained soft planner must both beat no plan."""
    _, root = dirs
    ppl = {name: evaluation.evaluate(root / "out" / name)["perplexity"]
           for name in ("none", "oracle", "soft-joint")}
    assert ppl["oracle"] < 0.35 * ppl["none"]  # measured: 0.21
    assert ppl["soft-joint"] < 0.9 * ppl["none"]  # measured: 0.78


def test_logs_are_written_and_parsed(dirs):
    _, root = dirs
    log = runtime.read_log(root / "out" / "soft-joint")
    assert [r["step"] for r in log] == [40, 80]
    # the schedule's lr at the step logged (peak 3e-3, warmup 10 of 80), and values that can be
    for r in log:
        assert r["lr"] == pytest.approx(train.lr_at(r["step"] - 1, 80, 3e-3, 10))
        assert (0 < r["train_loss"] < 10 and 0 < r["val_loss"] < 10 and r["per_s"] > 0
                and 0 <= r["planner_top1"] <= 1)
    assert log[-1]["best_step"] == min(log, key=lambda r: r["val_loss"])["step"]
    assert log[-1]["val_loss"] < runtime.read_log(
        next((root / "out" / "pretrain").glob("lm-*")))[0]["val_loss"]
    assert runtime.read_log(root / "out" / "oracle" / "ckpt.pt")[-1]["step"] == 300
    with pytest.raises(runtime.TrainError, match="no training log at"):
        runtime.read_log(root)


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    runtime.save({"step": 1, "w": torch.ones(3)}, path)
    real = torch.save

    def dies_midway(obj, f):
        real({"step": 2}, f)
        with open(f, "r+b") as fh:
            fh.truncate(10)
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError):
        runtime.save({"step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_eval_perplexity_is_exp_of_mean_nll_recomputed(dirs):
    """Recompute the oracle run's val NLL window by window from the documented rule, in float64."""
    common, root = dirs
    net, _, corpus = evaluation.load_run(root / "out" / "oracle")
    sp = corpus.splits["val"]
    # synthetic: the LM reads rows of its closed vocabulary
    tokens, block = torch.as_tensor(corpus.to_rows(sp.tokens)), net.lm.config.block_size
    n = len(tokens) - 1
    codebook = net.plans.codebook.detach()
    total, scored = 0.0, 0
    start = 0
    while scored < n:
        start = min(start, n - block)
        idx, tgt = tokens[start:start + block], tokens[start + 1:start + block + 1]
        sent = torch.as_tensor(sp.tok_sent[start + 1:start + block + 1].astype(np.int64))
        plan = torch.where((sent >= 0)[:, None],
                           codebook[torch.as_tensor(sp.labels)[sent.clamp_min(0)]], 0.0)
        with torch.no_grad():
            logits = net.lm(idx[None], plan=plan[None])[0][0].double()
        nll = -torch.log_softmax(logits, -1)[torch.arange(block), tgt]
        first_new = scored - start  # targets start+1 .. scored were scored already
        total += nll[first_new:].sum().item()
        scored = start + block
        start += block // 2
    result = evaluation.evaluate(root / "out" / "oracle")
    assert result["tokens"] == n
    assert math.isclose(result["nll"], total / n, rel_tol=1e-5)
    # float32 vs float64 sums
    assert math.isclose(math.log(result["perplexity"]), total / n, rel_tol=1e-5)


def test_eval_json_and_table(dirs, capsys):
    common, root = dirs
    evaluation.main([str(root / "out" / "none"), str(root / "out" / "soft-joint"), "--json",
                     "--split", "test"])
    out = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in out] == ["none", "soft"] and out[0]["planner_top1"] is None
    for r in out:
        assert {"mode", "planner", "split", "tokens", "nll", "perplexity", "planner_top1",
                "planner_top5"} <= set(r)
        assert r["split"] == "test" and math.isclose(r["perplexity"], math.exp(r["nll"]))
    evaluation.main([str(root / "out" / "none"), str(root / "out" / "soft-joint")])
    table = capsys.readouterr().out
    assert ("| none | none |  |" in table and "| soft-joint | soft | joint |" in table
            and "+0.0%" in table)


def test_eval_refuses_a_checkpoint_of_other_labels(dirs, tmp_path):
    common, root = dirs
    ck = torch.load(root / "out" / "none" / "ckpt.pt", weights_only=True)
    ck["identity"]["labels"] = "0123456789abcdef"
    torch.save(ck, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit, match="error: .* was trained on other data than --dataset "
                                         "synthetic gives now \\(its labels differ\\): restore "
                                         "that data, or retrain"):
        evaluation.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="error: no checkpoint at"):
        evaluation.main([str(tmp_path / "nothing")])


def _tiny_system(mode, frozen):
    torch.manual_seed(0)
    lm = GPT(GPTConfig(vocab_size=data.VOCAB_SIZE, block_size=32, n_layer=1, n_head=2, n_embd=16,
                       plan_dim=8))
    # as after a few fine-tuning steps: the zero-initialised adapters have moved
    for b in lm.blocks:
        torch.nn.init.normal_(b.adapter.weight, std=0.1)
    planner = Planner(PlannerConfig(n_labels=4, embed_dim=8, n_layer=1, n_head=2, n_embd=16))
    return mix.PlannedLM(lm, planner, Plans(mode, torch.randn(4, 8)), planner_frozen=frozen)


@pytest.mark.parametrize("mode, frozen, reaches", [
    ("st", False, True), ("soft", False, True), ("gumbel", False, True),
    ("hard", True, False), ("soft", True, False), ("st", True, False)])
def test_gradient_reaches_the_planner_exactly_in_joint_modes(mode, frozen, reaches, tmp_path):
    corpus = data.load("synthetic", 4, 8, 0, 60, 4, data_dir=tmp_path)
    sd = data.SplitData(corpus, "train", "cpu")
    net = _tiny_system(mode, frozen)
    loss, _ = net(**sd.lm_batch(torch.tensor([0, 40]), 32),
                  generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in net.planner.parameters()]
    if reaches:
        assert sum(g.abs().sum() for g in grads if g is not None) > 0
    else:
        assert (all(g is None for g in grads)
                and not any(p.requires_grad for p in net.planner.parameters()))


@pytest.mark.parametrize("flags, message", [
    (["--mode", "hard", "--planner", "joint"], "--mode hard sends no gradient to the planner"),
    (["--mode", "oracle", "--planner", "frozen"],
     "--mode oracle uses no planner: drop --planner frozen"),
    (["--mode", "argmax"], "unknown --mode 'argmax': choose one of none, fixed"),
    (["--temperature", "0"], "--temperature must be a positive number"),
    (["--mode", "soft", "--planner", "frozen", "--planner-loss-weight", "0.5"],
     "only applies to a joint planner"),
    (["--mode", "hard", "--truth-weight", "0.5"],
     "--truth-weight mixes the true label into soft plans: use --mode soft, not hard"),
    (["--mode", "st", "--planner", "frozen"], "--mode st with a frozen planner is hard exactly"),
    (["--mode", "st", "--planner", "bigram"], "--mode st with a bigram planner is hard exactly"),
    (["--dataset", "wiki", "--synthetic-ambiguity", "0.5"],
     "--synthetic-ambiguity shapes the synthetic corpus only"),
])
def test_bad_flag_combinations(flags, message):
    with pytest.raises(SystemExit, match=message):
        train.main(flags)


def test_resume_without_a_checkpoint(dirs, tmp_path):
    common, _ = dirs
    with pytest.raises(SystemExit, match="--resume: there is no checkpoint at"):
        run(TINY + common + ["--mode", "none", "--run", "never", "--resume"])


def test_ddp_two_processes_match_one_on_the_same_global_batch(tmp_path):
    small = TINY + ["--lm-iters", "4", "--planner-iters", "2", "--finetune-iters", "4",
                    "--eval-interval", "2", "--mode", "soft", "--dtype", "float32",
                    "--data-dir", str(tmp_path / "data")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "train.py", *small, "--batch-size", "4",
           "--out-dir", str(tmp_path / "one")]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", *small, "--batch-size", "2", "--out-dir", str(tmp_path / "two")]
    for cmd in (one, two):
        subprocess.run(cmd, check=True, cwd=data.ROOT, env=env, capture_output=True, timeout=300)
    logs = {}
    for name in ("one", "two"):
        lm_log = next((tmp_path / name / "pretrain").glob("lm-*/log.jsonl"))
        ft_log = tmp_path / name / "soft-joint" / "log.jsonl"
        logs[name] = [json.loads(line) for f in (lm_log, ft_log)
                      for line in f.read_text().splitlines()]
    assert len(logs["one"]) == len(logs["two"]) == 4
    for a, b in zip(logs["one"], logs["two"]):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4)
        assert math.isclose(a["val_loss"], b["val_loss"], rel_tol=1e-4)


def test_sampling_is_deterministic_and_follows_forced_labels(dirs, monkeypatch):
    _, root = dirs
    net, _, corpus = evaluation.load_run(root / "out" / "soft-joint")
    a = sampling.sample(net, corpus, 3, prompt="Weak arms helped.", seed=1)
    assert a == sampling.sample(net, corpus, 3, prompt="Weak arms helped.", seed=1)
    assert a != sampling.sample(net, corpus, 3, prompt="Weak arms helped.", seed=2)
    assert all(planned is not None and 0 <= realised < 16 and text for planned, realised, text in a)
    seen, real = [], net.lm.generate

    def spy(idx, n, temperature, top_k, plan_fn, generator, never):
        seen.append(plan_fn(idx)[0, -1].clone())  # the plan that predicts the next token
        return real(idx, n, temperature, top_k, plan_fn, generator, never)
    monkeypatch.setattr(net.lm, "generate", spy)
    rows = sampling.sample(net, corpus, 2, force=[5, 9], max_tokens=3)
    assert [planned for planned, _, _ in rows] == [5, 9]
    codebook = net.plans.codebook
    assert (all(torch.equal(v, codebook[5]) for v in seen[:3])
            and all(torch.equal(v, codebook[9]) for v in seen[3:]))


def test_a_prompt_is_read_as_the_corpus_and_may_end_mid_sentence(dirs, monkeypatch):
    _, root = dirs
    net, _, corpus = evaluation.load_run(root / "out" / "soft-joint")
    # whitespace as in the corpus's documents: one space
    assert (sampling.sample(net, corpus, 2, prompt="Weak  arms\nhelped. ", seed=1)
            == sampling.sample(net, corpus, 2, prompt="Weak arms helped.", seed=1))
    assert sampling.prompt_sentences("He waited… Then “he left.”", one_space=False) == (
        ["He waited…", " Then “he left.”"], "")  # sentence ends as the corpus's
    # an unfinished sentence is the first one written: planned from the sentences before it, its
    # text and label the whole sentence's
    rows = sampling.sample(net, corpus, 2, prompt="Weak arms helped. Weak arms", seed=1)
    assert rows[0][0] == sampling.next_plan(net, corpus, ["Weak arms helped."])[0]
    assert rows[0][2].startswith(" Weak arms") and len(rows) == 2
    # never a new document, even where the LM would rather end this one
    eot = int(corpus.to_rows([data.EOT])[0])
    head = net.lm.lm_head.forward
    monkeypatch.setattr(net.lm.lm_head, "forward", lambda h: head(h).index_add(
        1, torch.tensor([eot]), torch.full((len(h), 1), 100.0)))
    rows = sampling.sample(net, corpus, 2, temperature=0, max_tokens=5)
    assert all(text.strip() for _, _, text in rows)


def test_forced_labels_are_realised_on_synthetic(dirs):
    """Synthetic sentence types have their own words, so a sentence's label is recoverable from its
    text: an LM that follows its plans writes a sentence of the dictated label (chance: 1 in 16)."""
    _, root = dirs
    net, _, corpus = evaluation.load_run(root / "out" / "oracle")
    rows = sampling.sample(net, corpus, 16, force=list(range(16)), seed=0)
    assert sum(planned == realised for planned, realised, _ in rows) >= 12
    follow = compare.plan_following(net, corpus, n_docs=2, sentences=8, forced=True)
    assert follow["sentences"] == 16 and follow["chance"] == 1 / 16 and follow["rate"] >= 0.75


def test_a_long_prompt_is_planned_in_one_pass_and_read_a_block_at_a_time(dirs, monkeypatch):
    """Sampling after a prompt of many sentences costs what its length costs, not its square: the
    planner reads the prompt once (and once more before each new sentence), the LM never more than
    its block, and each prompt sentence gets the plan of the sentences before it."""
    _, root = dirs
    net, _, corpus = evaluation.load_run(root / "out" / "soft-joint")
    prompt = " ".join(corpus.sentence_text("train", s).strip() for s in range(300))
    seen = {"planner": [], "lm": []}
    planner_forward, generate = type(net.planner).forward, type(net.lm).generate
    monkeypatch.setattr(type(net.planner), "forward", lambda self, emb: seen["planner"].append(
        emb.shape[1]) or planner_forward(self, emb))
    monkeypatch.setattr(type(net.lm), "generate", lambda self, idx, *a, **k: seen["lm"].append(
        (idx.shape[1], a[3](idx).shape[1])) or generate(self, idx, *a, **k))
    rows = sampling.sample(net, corpus, 2, prompt, seed=0)
    n = len(data.split_sentences(prompt))
    assert len(rows) == 2 and seen["planner"][:3] == [n, n + 1, n + 2]
    block = net.lm.config.block_size
    assert all(tokens == plans <= block for tokens, plans in seen["lm"]) and seen["lm"]
    one_by_one = [sampling.next_plan(net, corpus, data.split_sentences(prompt)[:s])[1]
                  for s in (0, 1, n - 1)]
    each = sampling.plan_each(net, corpus, data.split_sentences(prompt))
    for s, vec in zip((0, 1, n - 1), one_by_one):
        torch.testing.assert_close(each[s][1], vec, atol=1e-5, rtol=1e-5)
    # the oracle's prompt sentences get their own true labels; its new ones, the labels given
    oracle, _, _ = evaluation.load_run(root / "out" / "oracle")
    given = data.split_sentences(prompt)[:5]
    truth = corpus.label(corpus.embedder.embed_texts(given))
    assert [torch.equal(vec, oracle.plans.codebook[y]) for (_, vec), y in
            zip(sampling.plan_each(oracle, corpus, given), truth)] == [True] * 5
    rows = sampling.sample(oracle, corpus, 2, "".join(given), force=[1, 2], seed=0)
    assert [planned for planned, _, _ in rows] == [1, 2]


def test_compare_samples_and_scores_plans_on_the_device_asked(dirs, monkeypatch):
    _, root = dirs
    real, asked = evaluation.load_run, []
    monkeypatch.setattr(evaluation, "load_run", lambda run, device=None: asked.append(device)
                        or real(run, device))
    compare.following(root / "out" / "soft-joint", 1, "cpu")
    compare.plan_quality(root / "out" / "soft-joint", "cpu")
    assert asked == ["cpu", "cpu"]  # not the CPU whatever --device says


def test_eval_scores_in_exact_float32_whatever_a_training_allowed(dirs, monkeypatch):
    """On a GPU training lets float32 matmuls round to TF32; eval.py's figures never do, also after
    a training in the same process (compare.py, tune.py)."""
    _, root = dirs
    for flags in (torch.backends.cuda.matmul, torch.backends.cudnn):  # put back after the test
        monkeypatch.setattr(flags, "allow_tf32", flags.allow_tf32)
    real, during = evaluation.perplexity, []
    monkeypatch.setattr(evaluation, "perplexity", lambda *a, **k: during.append(
        torch.backends.cuda.matmul.allow_tf32) or real(*a, **k))
    for module, name in ((compare, "sentence_logits"), (compare, "plan_following")):
        monkeypatch.setattr(module, name, lambda *a, real=getattr(module, name), **k: during.append(
            torch.backends.cuda.matmul.allow_tf32) or real(*a, **k))
    runtime.allow_tf32("cuda")  # as train.py on a GPU
    evaluation.evaluate(root / "out" / "none")
    compare.plan_quality(root / "out" / "soft-joint", "cpu")  # the curve's plans, compare's
    compare.following(root / "out" / "soft-joint", 1, "cpu")  # samplings
    assert during == [False] * 4 and torch.backends.cuda.matmul.allow_tf32


def test_plan_following_chance_is_agreement_of_independent_labels(monkeypatch):
    rows = [(0, 0, ""), (0, 1, ""), (1, 1, ""), (1, 1, "")]  # planned 0,0,1,1; realised 0,1,1,1
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: rows)
    corpus = type("C", (), {"codebook": np.zeros((3, 2))})()
    out = compare.plan_following(None, corpus, n_docs=1, sentences=4)
    assert out == {"sentences": 4, "hits": 3, "rate": 0.75, "chance": 0.5 * 0.25 + 0.5 * 0.75}


def test_browse_guesses_match_planner_accuracy(dirs, capsys):
    """Per-document top-1 guesses over the whole val split give the planner's batched top-1
    accuracy: row s of a document is planned from sentences < s and is set against the label of
    sentence s."""
    _, root = dirs
    net, _, corpus = evaluation.load_run(root / "out" / "soft-joint")
    sp = corpus.splits["val"]
    hits = total = 0
    for doc in range(len(sp.doc_sent) - 1):
        rows = explore.browse(net, corpus, "val", doc)
        assert ([true for _, true, _ in rows]
                == sp.labels[sp.doc_sent[doc]:sp.doc_sent[doc + 1]].tolist())
        for _, true, guesses in rows:
            probs = [p for _, p in guesses]
            assert (len(guesses) == 5 and probs == sorted(probs, reverse=True)
                    and sum(probs) <= 1 + 1e-6)
            hits += guesses[0][0] == true
            total += 1
    sd = data.SplitData(corpus, "val", "cpu")
    top1 = planner.planner_metrics(net.planner, sd)["planner_top1"]
    assert math.isclose(hits / total, top1, abs_tol=1e-6)
    explore.main([str(root / "out" / "soft-joint"), "--browse", "1"])
    out = capsys.readouterr().out
    assert (out.startswith("val document 1:")
            and out.count(" like: ") == 5 * len(explore.browse(net, corpus, "val", 1)))
    for run_dir, flags, message in [("none", ["--browse", "0"],
                                     "mode none has no planner to browse"),
                                    ("soft-joint", ["--browse", "999"],
                                     "the val split has documents 0.."),
                                    ("soft-joint", ["--labels", "2", "--seed", "3"],
                                     "--seed: with a RUN the corpus is the one it was trained "
                                     "on: drop the data flags")]:
        with pytest.raises(SystemExit, match=message):
            explore.main([str(root / "out" / run_dir), *flags])


def test_figures_of_a_comparison(dirs, tmp_path, monkeypatch):
    _, root = dirs
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "seed0").symlink_to(root / "out")
    runs = [tmp_path / "cmp" / "seed0" / name for name in ("none", "oracle", "soft-joint")]
    results = {split: [evaluation.evaluate(r, split) for r in runs] for split in ("val", "test")}
    (tmp_path / "cmp" / "results.json").write_text(json.dumps(results))
    written = figures.figures(tmp_path / "cmp", tmp_path / "figs")
    assert [p.name for p in written] == ["cmp-val-loss.png", "cmp-perplexity.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
               for p in written)
    with pytest.raises(SystemExit,
                       match="error: no results.json in .*: give a folder made by compare.py"):
        figures.main([str(root / "out"), str(tmp_path / "figs")])
    # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match="error: figures need matplotlib, an optional dependency: "
                                         "pip install matplotlib"):
        figures.main([str(tmp_path / "cmp"), str(tmp_path / "figs")])


def test_sampling_errors(dirs):
    _, root = dirs
    for run_dir, flags, message in [("oracle", [], "this run's plans need the true label"),
                                    ("oracle", ["--sentences", "3", "--force-labels", "1"],
                                     "give --force-labels for all 3 sentences"),
                                    ("soft-joint", ["--force-labels", "1,2"],
                                     "gives 2 labels for --sentences 1"),
                                    ("none", ["--force-labels", "1"], "mode none takes no label"),
                                    ("soft-joint", ["--force-labels", "99"],
                                     "there is no label 99"),
                                    ("soft-joint", ["--force-labels", "a,b"],
                                     "comma-separated label numbers"),
                                    ("soft-joint", ["--force-labels", "1,,2"],
                                     "comma-separated label numbers"),
                                    ("soft-joint", ["--prompt", "The river rises in the north."],
                                     "--prompt: this run's LM knows only the words of its corpus, "
                                     "not 'river', 'in'"),
                                    ("soft-joint", ["--prompt", "account adult."],
                                     "not 'account'.*opening with a capital letter")]:
        with pytest.raises(SystemExit, match=message):
            sampling.main([str(root / "out" / run_dir), "--sentences", "1", *flags])


def test_plan_reliance_substitutes_plans_and_the_lm_notices(dirs, capsys):
    """Plans given back unchanged through the substitution path reproduce the run's own figure; the
    oracle run, which leans on its plans, gets worse with another sentence's plan or the mean
    plan."""
    _, root = dirs
    net, _, corpus = evaluation.load_run(root / "out" / "oracle")
    sd = data.SplitData(corpus, "val", "cpu")
    own = evaluation.perplexity(net, sd, net.lm.config.block_size)[1]
    same = evaluation.perplexity(net, sd, net.lm.config.block_size,
                                 plan_table=explore.substituted_plans(net, sd, "as-planned"))[1]
    assert math.isclose(own, same, rel_tol=1e-6)
    ppl = {how: evaluation.evaluate(root / "out" / "oracle", replace_plans=lambda net, sd:
                                    explore.substituted_plans(net, sd, how))["perplexity"]
           for how in explore.PLANS}
    # measured: 6.8, 3.2
    assert ppl["shuffled"] > 3 * math.exp(own) and ppl["mean"] > 1.8 * math.exp(own)
    explore.main([str(root / "out" / "oracle"), "--plans", "mean"])
    assert f"{ppl['mean']:.2f} with every plan replaced (mean)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="mode none has no plans to substitute"):
        explore.main([str(root / "out" / "none"), "--plans", "mean"])


def test_scoring_in_shorter_windows_shows_the_lm_less(dirs, capsys):
    """The run's own window reproduces its figure; a shorter one scores every target once, with less
    of its document in sight: another figure. (Not necessarily a worse one: this LM, trained
    briefly, scores better in 8-token windows than in its own 64, as the wiki LMs do at 32 tokens
    against 128.)"""
    _, root = dirs
    own, same, short = (evaluation.evaluate(root / "out" / "none", window=w) for w in (None, 64, 8))
    assert same["perplexity"] == own["perplexity"] and (own["window"], short["window"]) == (64, 8)
    assert (short["tokens"] == own["tokens"]
            and abs(short["perplexity"] / own["perplexity"] - 1) > 0.01)
    with pytest.raises(SystemExit, match="trained on windows of 64 tokens .*give at most 64"):
        evaluation.main([str(root / "out" / "none"), "--window", "65"])
    evaluation.main([str(root / "out" / "none"), "--window", "8"])
    assert "scored in windows of 8 tokens" in capsys.readouterr().out


def test_label_baselines_count_what_they_say():
    split = lambda labels, doc_sent: type("S", (), {"labels": np.array(labels),
                                                    "doc_sent": np.array(doc_sent)})()
    corpus = type("C", (), {"codebook": np.zeros((3, 2)), "splits": {
        # after 0 comes 1 (3 of 4 times), after 1 comes 0
        "train": split([0, 1, 0, 1, 0, 2, 0, 1], [0, 5, 8]),
        "val": split([0, 1, 0, 2, 2], [0, 3, 5])}})()
    out = explore.label_baselines(corpus, "val")
    assert out["majority_top1"] == 2 / 5  # label 0 everywhere
    # bigram: both training documents open with 0 (val: hit for the first document, miss for the
    # second); after 0 comes 1 (hit), after 1 comes 0 (hit), after 2 comes 0
    # (seen once in train: miss)
    assert out["bigram_top1"] == 3 / 5 and out["bigram_top5"] == 1.0 and out["majority_top5"] == 1.0
    # the majority's distribution is the training labels' frequencies (4, 3, 1 of 8, smoothed)
    prior = np.array([4, 3, 1]) + 1e-3
    assert out["majority_ce"] == pytest.approx(-np.mean(np.log(prior[[0, 1, 0, 2, 2]]
                                                               / prior.sum())))
    assert 0 < out["bigram_ce"] < out["majority_ce"]


def test_labels_made_by_the_pretrained_lm_end_to_end(tiny_out):
    """--embedder lm: the LM stage the TF-IDF runs share, then labels in its space, a planner on
    them, fine-tuning; evaluation, sampling and --resume read those labels back from the cache, the
    LM stage gone; the cache gone, one line says how to make them again, and --resume does."""
    flags, root = tiny_out
    out, pretrain = root / "out", root / "out" / "pretrain"
    run(flags + ["--mode", "soft", "--planner", "frozen", "--embedder", "lm", "--run", "lm-soft"])
    assert len(list(pretrain.glob("lm-*"))) == 1  # the TF-IDF runs' own LM
    assert len(list(pretrain.glob("planner-*"))) == 2  # a planner on each kind of labels
    net, ck, corpus = evaluation.load_run(out / "lm-soft")
    assert corpus.meta["embedder"] == "lm" and ck["identity"]["labels"] == corpus.meta["key"]
    tfidf = evaluation.load_run(out / "soft-joint")[2]
    assert not np.array_equal(corpus.splits["val"].labels, tfidf.splits["val"].labels)
    logged = runtime.read_log(out / "lm-soft")[-1]
    pretrain.rename(root / "moved")
    try:
        # the planner's accuracy on the labels it was trained on, as training measured it
        assert evaluation.evaluate(out / "lm-soft")["planner_top1"] == logged["planner_top1"]
        assert len(sampling.sample(net, corpus, 2, force=[1, 2])) == 2
        run(flags + ["--mode", "soft", "--planner", "frozen", "--embedder", "lm",
                     "--run", "lm-soft", "--resume"])
        assert not list(pretrain.glob("lm-*"))  # no LM trained again to remake the labels
    finally:
        shutil.rmtree(pretrain, ignore_errors=True)
        (root / "moved").rename(pretrain)
    labels = corpora.cache_file(root / "data", "synthetic", corpus.meta["key"])
    labels.unlink()
    with pytest.raises(data.DataError, match="not in .*: run the run's train.py command again "
                                             "with --resume"):
        evaluation.load_run(out / "lm-soft")
    run(flags + ["--mode", "soft", "--planner", "frozen", "--embedder", "lm", "--run", "lm-soft",
                 "--resume"])  # made again by the pretrained LM, the same labels
    assert labels.exists()
    assert evaluation.evaluate(out / "lm-soft")["planner_top1"] == logged["planner_top1"]

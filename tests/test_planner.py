"""Tests for planner.py: causality, padding, learning, the codebook head, accuracy."""
import pytest
import torch

from planner import Planner, PlannerConfig, accuracy, planner_loss


def _planner(seed=0, codebook=None, **kw):
    torch.manual_seed(seed)
    return Planner(PlannerConfig(**{**dict(n_labels=6, embed_dim=8, n_layer=2, n_head=2, n_embd=16),
                                    **kw}), codebook)


def test_row_s_sees_only_earlier_sentences():
    planner = _planner()
    emb = torch.randn(2, 7, 8)
    base = planner(emb)
    for s in range(7):
        changed = emb.clone()
        changed[:, s] += torch.randn(8)
        out = planner(changed)
        torch.testing.assert_close(out[:, :s + 1], base[:, :s + 1], rtol=0, atol=0)
        if s + 1 < 7:
            assert not torch.allclose(out[:, s + 1], base[:, s + 1])


def test_padding_never_changes_real_rows():
    planner = _planner()
    emb = torch.randn(1, 4, 8)
    labels = torch.tensor([[1, 2, 3, 4]])
    padded = [torch.cat([emb, torch.randn(1, 3, 8) * 9], 1) for _ in range(2)]
    a, b = planner(padded[0]), planner(padded[1])
    torch.testing.assert_close(a[:, :4], planner(emb), rtol=0, atol=1e-6)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-6)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    junk = [torch.cat([labels, torch.randint(0, 6, (1, 3))], 1) for _ in range(2)]
    torch.testing.assert_close(planner_loss(a, junk[0], mask), planner_loss(b, junk[1], mask))
    torch.testing.assert_close(planner_loss(a, junk[0], mask),
                               planner_loss(planner(emb), labels,
                                            torch.ones(1, 4, dtype=torch.bool)))


def test_documents_longer_than_max_sentences():
    """Sentences past max_sentences share its last position embedding, and the planner stays
    causal there."""
    planner = _planner(max_sentences=4)
    emb = torch.randn(2, 10, 8)
    changed = emb.clone()
    changed[:, 8] += 1.0
    a, b = planner(emb), planner(changed)
    assert a.shape == (2, 10, 6)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=0)  # row s reads sentences < s only
    assert not torch.allclose(a[:, 9], b[:, 9])


def test_tiny_planner_learns_a_deterministic_label_sequence():
    codebook = torch.nn.functional.normalize(
        torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.tensor([[2, 0, 5, 1, 4, 3, 2, 0, 5, 1]]).repeat(4, 1)
    emb = codebook[labels]
    mask = torch.ones_like(labels, dtype=torch.bool)
    mask[:, 0] = False  # the first label has nothing before it to predict from
    planner = _planner(codebook=codebook)
    opt = torch.optim.AdamW(planner.parameters(), lr=1e-2)
    assert accuracy(planner(emb), labels, mask)["top1"] < 0.5
    for _ in range(80):
        loss = planner_loss(planner(emb), labels, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy(planner(emb), labels, mask)["top1"] == 1.0


def test_head_starts_from_the_codebook():
    codebook = torch.randn(6, 8)
    planner = _planner(codebook=codebook)
    assert torch.equal(planner.head.weight, codebook) and not planner.head.bias.any()


def test_accuracy():
    logits = torch.tensor([[[5., 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [0, 0, 9, 0, 0, 0]]])
    labels = torch.tensor([[0, 0, 1]])
    mask = torch.tensor([[True, True, False]])
    assert accuracy(logits, labels, mask, ks=(1, 5)) == {"top1": 0.5, "top5": 0.5}
    assert accuracy(logits, labels, mask, ks=(1, 6)) == {"top1": 0.5, "top6": 1.0}
    three = logits[..., :3]  # K = 3 < 5: the top 5 hold every label
    assert accuracy(three, labels, mask, ks=(1, 5)) == {"top1": 0.5, "top5": 1.0}


def test_a_label_bigram_in_the_planners_place(tiny_out):
    """The bigram planner reads the previous sentence's label off its embedding (the nearest
    centroid, as the labels were made), plans a document's first sentence from the first
    sentences' labels, scores as the label bigram baseline, and runs as a frozen planner through
    train.py and eval.py."""
    import data
    import eval as evaluation
    import explore
    import train
    from planner import BigramPlanner, planner_metrics
    flags, root = tiny_out
    corpus = data.load("synthetic", 8, 16, 0, 300, 16, data_dir=root / "data")
    train_split = corpus.splits["train"]
    bigram = BigramPlanner.fit(corpus.codebook, train_split.labels, train_split.doc_sent)
    sd = data.SplitData(corpus, "val", "cpu")
    b = sd.planner_batch(torch.arange(4))
    logits = bigram(b["emb"])
    assert torch.equal(logits[:, 0], bigram.log_probs[-1].expand(4, -1))  # nothing before it
    prev = b["labels"][:, :-1]
    assert torch.equal(logits[:, 1:][b["mask"][:, 1:]], bigram.log_probs[prev][b["mask"][:, 1:]])
    assert torch.allclose(logits.exp().sum(-1), torch.ones(4, logits.shape[1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training: the same labels
        assert torch.equal(bigram(b["emb"]), logits)
    base = explore.label_baselines(corpus, "val")
    assert planner_metrics(bigram, sd)["planner_top1"] == pytest.approx(base["bigram_top1"])
    train.main(flags + ["--mode", "soft", "--planner", "bigram"])
    result = evaluation.evaluate(root / "out" / "soft-bigram")
    assert result["planner"] == "bigram" and result["planner_top1"] == pytest.approx(
        base["bigram_top1"])

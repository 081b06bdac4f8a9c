"""Tests for data.py: tokenizer, sentences, splits, embeddings, labels, cache, corpora, bad
input."""
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

import corpora
import data
import explore
from model import GPT, GPTConfig


@pytest.fixture
def synthetic(tmp_path):
    """A small synthetic corpus built into a fresh cache folder."""
    return data.load("synthetic", n_labels=16, embed_dim=32, seed=0, synthetic_docs=300,
                     data_dir=tmp_path)


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip():
    enc = data.tokenizer()
    for s in ["Hello world", "naïve café — 東京 🙂", "  spaces\n\nand\ttabs ",
              "U.S. $3.14 isn't 'quoted'"]:
        assert enc.decode(enc.encode_ordinary(s)) == s


def test_known_gpt2_ids():
    enc = data.tokenizer()
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode_ordinary(" the") == [262]
    assert enc.encode_ordinary("\n") == [198]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [data.EOT] == [50256]
    assert enc.n_vocab == data.VOCAB_SIZE


def test_ranks_file_hash_is_checked(tmp_path, monkeypatch):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(corpora.GPT2_RANKS.read_bytes().replace(b"IQ== 0", b"IQ== 1"))
    monkeypatch.setattr(corpora, "GPT2_RANKS", bad)
    data.tokenizer.cache_clear()
    try:
        with pytest.raises(data.DataError, match="sha256"):
            data.tokenizer()
    finally:
        data.tokenizer.cache_clear()


def test_the_synthetic_words_are_the_wiki_words_the_docstring_names():
    """assets/synthetic-words.txt, derived again from the wiki corpus: lowercase words of 4-9
    letters seen 20+ times, one GPT-2 token after a space, none an abbreviation after which the
    sentence splitter would not end a sentence (a synthetic sentence ends with its last word and
    a '.')."""
    text = " ".join(corpora.wiki_documents())
    counts = Counter(re.findall(r"(?<![\w'-])[a-z]{4,9}(?![\w'-])", text))
    enc, abbreviations = data.tokenizer(), corpora.NEVER_FINAL | corpora.MAYBE_FINAL
    expected = tuple(sorted(w for w, n in counts.items() if n >= 20 and w not in abbreviations
                            and len(enc.encode_ordinary(" " + w)) == 1))
    assert corpora.english_words() == expected and len(expected) > 2000


def test_the_synthetic_words_file_is_checked(tmp_path, monkeypatch):
    bad = tmp_path / "synthetic-words.txt"
    bad.write_text(corpora.SYNTHETIC_WORDS.read_text().replace("able\n", "ablr\n"))
    monkeypatch.setattr(corpora, "SYNTHETIC_WORDS", bad)
    corpora.english_words.cache_clear()
    try:
        with pytest.raises(data.DataError, match="synthetic-words.txt is missing or changed"):
            corpora.synthetic_corpus(10, 4)
    finally:
        corpora.english_words.cache_clear()


# ----------------------------------------------------------------------------- sentences

@pytest.mark.parametrize("doc, expected", [
    ("The U.S. Army was there. It won.", ["The U.S. Army was there.", " It won."]),
    ("He moved to the U.S. The war began.", ["He moved to the U.S.", " The war began."]),
    ("Dr. Smith met Mr. Jones. They talked.", ["Dr. Smith met Mr. Jones.", " They talked."]),
    ("Spices, e.g. pepper, were sold. Trade grew.",
     ["Spices, e.g. pepper, were sold.", " Trade grew."]),
    ("J. R. R. Tolkien wrote it. It sold well.", ["J. R. R. Tolkien wrote it.", " It sold well."]),
    ("Pi is 3.14 or so. E is 2.72.", ["Pi is 3.14 or so.", " E is 2.72."]),
    ('He said "Stop." Then he left!', ['He said "Stop."', " Then he left!"]),
    ('"Why?" she asked. Nobody knew.', ['"Why?" she asked.', " Nobody knew."]),
    ("Built c. 1850 by No. 5 company. Gone now?",
     ["Built c. 1850 by No. 5 company.", " Gone now?"]),
    ("no terminal punctuation at all", ["no terminal punctuation at all"]),
    ("Wait... What happened?  Nothing.", ["Wait...", " What happened?", "  Nothing."]),
])
def test_split_sentences(doc, expected):
    assert data.split_sentences(doc) == expected


def test_sentences_tokenize_like_the_document():
    enc = data.tokenizer()
    for doc in corpora.wiki_documents()[:300]:
        sents = data.split_sentences(doc)
        assert "".join(sents) == doc
        assert [t for s in sents for t in enc.encode_ordinary(s)] == enc.encode_ordinary(doc)


def test_token_to_sentence_alignment(tmp_path):
    docs = [f"Doc {i} starts here. Dr. Who said {i}.5 things! And then? It ended"
            for i in range(40)]
    (tmp_path / "c.txt").write_text("\n\n".join(docs))
    corpus = data.load(str(tmp_path / "c.txt"), n_labels=3, embed_dim=4, data_dir=tmp_path)
    enc = data.tokenizer()
    for name, doc_ids in data.split_documents(len(docs), 0).items():
        sp = corpus.splits[name]
        expected = [s for d in doc_ids for s in data.split_sentences(docs[d])]
        assert [corpus.sentence_text(name, s) for s in range(len(sp.sent_len))] == expected
        for s, text in enumerate(expected):  # tok_sent marks exactly the tokens of sentence s
            assert enc.decode(sp.tokens[sp.tok_sent == s].tolist()) == text
        starts = sp.tokens[np.flatnonzero(sp.tok_sent == -1)]
        assert (starts == data.EOT).all() and len(starts) == len(doc_ids)
        assert sp.doc_sent[-1] == len(sp.sent_len) == len(expected)


# ----------------------------------------------------------------------------- splits

def test_splits_deterministic_and_disjoint():
    a, b, c = (data.split_documents(1000, 0), data.split_documents(1000, 0),
               data.split_documents(1000, 1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], c["val"])
    ids = np.concatenate(list(a.values()))
    assert len(ids) == len(set(ids.tolist())) == 1000
    assert len(a["val"]) == len(a["test"]) == 50


def test_no_document_straddles_splits(synthetic):
    docs = corpora.synthetic_corpus(300, 16, 0)[0]
    for name, doc_ids in data.split_documents(len(docs), 0).items():
        sp = synthetic.splits[name]
        assert len(sp.doc_sent) - 1 == len(doc_ids)
        assert (data.tokenizer().decode(sp.tokens.tolist())
                == "".join("<|endoftext|>" + docs[d] for d in doc_ids))


# ---------------------------------------------------------------------------- embeddings and labels

def test_kmeans_recovers_blobs():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 2000)
    x = rng.normal(size=(5, 8))[truth] * 10 + rng.normal(size=(2000, 8)) * 0.1
    _, assign, _ = data.kmeans(x, 5, seed=0)
    pairs = Counter(zip(truth.tolist(), assign.tolist()))
    assert len(pairs) == 5 and len({a for _, a in pairs}) == 5  # a one-to-one match of clusters


def test_embeddings_normalised_and_labels_nearest(synthetic):
    for sp in synthetic.splits.values():
        assert np.allclose(np.linalg.norm(sp.emb, axis=1), 1, atol=1e-5)
        d = ((sp.emb[:, None, :] - synthetic.codebook[None]) ** 2).sum(-1)
        assert np.array_equal(sp.labels, d.argmin(1))
    # The kept embedder labels new text like the pipeline labelled the training sentences.
    texts = [synthetic.sentence_text("train", s) for s in range(50)]
    emb = synthetic.embedder.embed_texts(texts)
    assert np.allclose(emb, synthetic.splits["train"].emb[:50], atol=1e-5)
    assert np.array_equal(synthetic.label(emb), synthetic.splits["train"].labels[:50])


def test_labels_deterministic_for_a_seed(tmp_path):
    kw = dict(n_labels=8, embed_dim=16, synthetic_docs=150)
    a = data.load("synthetic", seed=3, data_dir=tmp_path / "a", **kw)
    b = data.load("synthetic", seed=3, data_dir=tmp_path / "b", **kw)
    c = data.load("synthetic", seed=4, data_dir=tmp_path / "c", **kw)
    assert np.array_equal(a.splits["train"].labels, b.splits["train"].labels)
    assert np.array_equal(a.codebook, b.codebook)
    assert a.meta["key"] != c.meta["key"]


# ----------------------------------------------------------------------------- cache

def test_cache_reused_and_invalidated_when_k_changes(tmp_path):
    kw = dict(embed_dim=16, synthetic_docs=150, data_dir=tmp_path)
    first = data.load("synthetic", n_labels=8, **kw)
    again = data.load("synthetic", n_labels=8, **kw)
    assert "load_seconds" in again.meta and again.meta["cache"] == first.meta["cache"]
    assert np.array_equal(again.splits["val"].tokens, first.splits["val"].tokens)
    other = data.load("synthetic", n_labels=9, **kw)
    assert "load_seconds" not in other.meta and other.meta["cache"] != first.meta["cache"]
    assert other.codebook.shape[0] == 9
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_failed_cache_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(data.np, "savez", broken)
    with pytest.raises(OSError):
        data.load("synthetic", n_labels=4, embed_dim=8, synthetic_docs=60, data_dir=tmp_path)
    assert list((tmp_path / "cache").iterdir()) == []


# ----------------------------------------------------------------------------- labels from the LM

def test_lm_sentence_states_average_each_sentence_read_alone_a_block_at_a_time():
    """Against the plain way: each sentence alone, in pieces of block_size tokens, through the LM
    one piece at a time; batches of pieces (padded) must not change a state."""
    torch.manual_seed(0)
    lm = GPT(GPTConfig(vocab_size=300, block_size=8, n_layer=1, n_head=2, n_embd=16, plan_dim=4))
    lengths = np.array([3, 8, 11, 1, 17])  # 11 and 17: more than one piece
    tokens = np.random.default_rng(0).integers(0, 300, lengths.sum())
    got = data.LMEmbedder(data.encoder_copy(lm), None, None).states(tokens, lengths, batch=3)
    first = np.concatenate([[0], np.cumsum(lengths)])
    with torch.no_grad():
        for s, n in enumerate(lengths):
            sentence = torch.as_tensor(tokens[first[s]:first[s] + n].astype(np.int64))
            h = torch.cat([lm.features(piece[None])[0] for piece in sentence.split(8)])
            assert torch.allclose(got[s].float(), h.mean(0), atol=1e-5)


def test_labels_made_by_the_lm_are_cached_and_keyed_by_its_weights(synthetic, tmp_path,
                                                                   monkeypatch):
    torch.manual_seed(0)
    lm = GPT(GPTConfig(vocab_size=len(synthetic.vocab), block_size=16, n_layer=1, n_head=2,
                       n_embd=48, plan_dim=32))
    labelled = data.lm_labelled(synthetic, lm, tmp_path)
    assert labelled.codebook.shape == synthetic.codebook.shape
    for sp in labelled.splits.values():
        assert np.allclose(np.linalg.norm(sp.emb, axis=1), 1, atol=1e-5)
        assert np.array_equal(sp.labels, labelled.label(sp.emb))
    proj = labelled.embedder.proj
    assert np.allclose(proj.T @ proj, np.eye(32), atol=1e-5)  # principal directions: orthonormal
    # other labels of the same tokens: a planner or a run must not take them for the TF-IDF ones,
    # but the LM stage (keyed by the tokens) is the same
    assert not np.array_equal(labelled.splits["train"].labels, synthetic.splits["train"].labels)
    assert labelled.identity()["labels"] != synthetic.identity()["labels"]
    assert labelled.identity(labels=False) == synthetic.identity(labels=False)
    # new text is labelled as the pipeline labelled the training sentences
    texts = [labelled.sentence_text("train", s) for s in range(20)]
    assert np.allclose(labelled.embedder.embed_texts(texts), labelled.splits["train"].emb[:20],
                       atol=1e-5)
    # fine-tuning moves the LM afterwards: the labels' embedder keeps the weights that made them
    made_by = {k: v.clone() for k, v in lm.state_dict().items()}
    with torch.no_grad():
        lm.wte.weight.add_(1.0)
    assert np.allclose(labelled.embedder.embed_texts(texts), labelled.splits["train"].emb[:20],
                       atol=1e-5)

    def fitted_again(*a, **k):
        raise AssertionError("fitted again instead of read from the cache")
    monkeypatch.setattr(data.LMEmbedder, "fit", fitted_again)
    lm.load_state_dict(made_by)
    for again in (data.lm_labelled(synthetic, lm, tmp_path),
                  data.lm_labelled_from_cache(synthetic, labelled.meta["key"], tmp_path)):
        assert np.array_equal(again.codebook, labelled.codebook)
        assert np.array_equal(again.splits["val"].labels, labelled.splits["val"].labels)
        assert again.vocab == synthetic.vocab
        assert np.allclose(again.embedder.embed_texts(texts), labelled.splits["train"].emb[:20],
                           atol=1e-5)
    with torch.no_grad():  # another LM: other labels
        lm.wte.weight.mul_(2.0)
    with pytest.raises(AssertionError, match="fitted again"):
        data.lm_labelled(synthetic, lm, tmp_path)
    with pytest.raises(data.DataError, match="not in .*: run the run's train.py command again "
                                             "with --resume"):
        data.lm_labelled_from_cache(synthetic, "0123456789abcdef", tmp_path)
    assert data.lm_labelled_from_cache(synthetic, "0123456789abcdef", tmp_path,
                                       missing_ok=True) is None
    # the TF-IDF labels are no LM's
    assert data.lm_labelled_from_cache(synthetic, synthetic.meta["key"], tmp_path,
                                       missing_ok=True) is None
    # one file of the LM's weights, shared by every K and D of its labels, read only when needed
    encoders = list((tmp_path / "cache").glob("synthetic-lm-*.npz"))
    assert len(encoders) == 1 and again.embedder._lm is not None  # read by embed_texts
    assert data.lm_labelled_from_cache(synthetic, labelled.meta["key"],
                                       tmp_path).embedder._lm is None


def test_the_lm_that_made_the_labels_missing_or_damaged_is_one_line(synthetic, tmp_path):
    """New text is labelled by the LM's weights kept beside the labels: gone or of another shape,
    one line names the file and the fix."""
    lm = GPT(GPTConfig(vocab_size=len(synthetic.vocab), block_size=16, n_layer=1, n_head=2,
                       n_embd=48, plan_dim=32))
    key = data.lm_labelled(synthetic, lm, tmp_path).meta["key"]
    encoder = next((tmp_path / "cache").glob("synthetic-lm-*.npz"))
    with np.load(encoder) as a:
        weights = dict(a)
    encoder.unlink()
    with pytest.raises(data.DataError, match="the LM that made these labels is not in .*--resume"):
        data.lm_labelled_from_cache(synthetic, key, tmp_path).embedder.embed_texts(["A cat."])
    # --resume (train.lm_labels) takes the labels from the cache only with the weights beside them,
    # else the LM makes them again: the weights file with them
    assert data.lm_labelled_from_cache(synthetic, key, tmp_path, missing_ok=True) is None
    data.lm_labelled(synthetic, lm, tmp_path)
    assert data.lm_labelled_from_cache(synthetic, key, tmp_path, missing_ok=True) is not None
    del weights["lm/wte.weight"]
    corpora.write_cache(encoder, weights)
    with pytest.raises(data.DataError, match="weights do not fit its shape .*wte.weight"):
        data.lm_labelled_from_cache(synthetic, key, tmp_path).embedder.embed_texts(["A cat."])
    encoder.write_bytes(encoder.read_bytes()[:100])
    with pytest.raises(data.DataError, match="is damaged .*delete it and run the run's train.py"):
        data.lm_labelled_from_cache(synthetic, key, tmp_path).embedder.embed_texts(["A cat."])


def test_lm_labels_no_wider_than_the_lm(synthetic, tmp_path):
    lm = GPT(GPTConfig(vocab_size=len(synthetic.vocab), block_size=16, n_layer=1, n_head=2,
                       n_embd=16, plan_dim=32))
    with pytest.raises(data.DataError, match="--embed-dim 32 is wider than the LM's 16"):
        data.lm_labelled(synthetic, lm, tmp_path)


# ----------------------------------------------------------------------------- corpora

def test_synthetic_deterministic_and_types_recoverable():
    docs, types = corpora.synthetic_corpus(400, 16, seed=5)
    again, types_again = corpora.synthetic_corpus(400, 16, seed=5)
    assert docs == again and all(np.array_equal(a, b) for a, b in zip(types, types_again))
    assert docs != corpora.synthetic_corpus(400, 16, seed=6)[0]
    # Learn word -> type from 300 documents; read the types of the other 100 off their words alone.
    sents = [(s, t) for d, ts in zip(docs, types) for s, t in zip(data.split_sentences(d), ts)]
    assert len(sents) == sum(map(len, types))
    n_fit = sum(map(len, types[:300]))
    votes = defaultdict(Counter)
    for s, t in sents[:n_fit]:
        for w in s.lower().strip(" .").split():
            votes[w][t] += 1
    owner = {w: c.most_common(1)[0][0] for w, c in votes.items()
             if c.most_common(1)[0][1] > 0.9 * sum(c.values())}
    guess = [Counter(owner[w] for w in s.lower().strip(" .").split() if w in owner).most_common(1)
             for s, _ in sents[n_fit:]]
    acc = np.mean([bool(g) and g[0][0] == t for g, (_, t) in zip(guess, sents[n_fit:])])
    assert acc > 0.97


def test_synthetic_types_have_long_range_structure():
    """Given the theme (the document's earlier transitions), the next type is far more
    predictable."""
    _, types = corpora.synthetic_corpus(2000, 16, seed=0)
    pair = Counter((a, b) for ts in types for a, b in zip(ts, ts[1:]))
    top_pair = (sum(max(c for (a, _), c in pair.items() if a == x) for x in range(16))
                / sum(pair.values()))
    assert top_pair < 0.5  # the last type alone leaves the next one open among the themes
    triple = Counter((a, b, c) for ts in types for a, b, c in zip(ts, ts[1:], ts[2:]))
    top_triple = sum(max(n for k, n in triple.items() if k[:2] == ab)
                     for ab in {k[:2] for k in triple})
    assert top_triple / sum(triple.values()) > 0.75  # one earlier transition reveals the theme


def test_wiki_corpus_size():
    docs = corpora.wiki_documents()
    assert 9000 < len(docs) < 11000
    assert 4_000_000 < sum(map(len, docs)) < 6_000_000


def test_path_corpus_file_and_folder(tmp_path):
    (tmp_path / "one.txt").write_text("First doc. Two sentences.\n\n\nSecond doc here.\n  \nThird.")
    assert corpora.path_documents(tmp_path / "one.txt") == ["First doc. Two sentences.",
                                                            "Second doc here.", "Third."]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Alpha.\n\nStill alpha.")
    (folder / "b.txt").write_text("Beta.")
    (folder / "c.TXT").write_text("Gamma.")  # a name made on another system: read too
    (folder / "d.md").write_text("Not a document.")
    assert corpora.path_documents(folder) == ["Alpha. Still alpha.", "Beta.", "Gamma."]


WIKITEXT_FIXTURE = """
 = Valkyria Chronicles = 

 Senjō no Valkyria is a tactical role @-@ playing game . It sold 1 @,@ 000 copies ( in Japan ) . 

 = = Gameplay = = 

 The game 's battles are turn @-@ based . It costs 3 @.@ 5 dollars . 

 = Tower Building = 

 The tower is tall . 
"""


def test_wikitext_parser():
    assert corpora.parse_wikitext(WIKITEXT_FIXTURE) == [
        "Senjō no Valkyria is a tactical role-playing game. It sold 1,000 copies (in Japan). "
        "The game's battles are turn-based. It costs 3.5 dollars.",
        "The tower is tall.",
    ]


# ----------------------------------------------------------------------------- bad input

def test_wikitext_offline_fails_at_once_with_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "WIKITEXT_SOURCES",
                        [("nowhere", "zip", "http://127.0.0.1:9/wikitext-103-raw-v1.zip")])
    with pytest.raises(data.DataError, match=f"put it at {tmp_path}"):
        data.load("wikitext103", data_dir=tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: (p / "empty.txt").write_text("") and None or p / "empty.txt", "holds no text"),
    (lambda p: (p / "blank.txt").write_text(" \n\n \n") and None or p / "blank.txt",
     "holds no text"),
    (lambda p: (p / "two.txt").write_text("One.\n\nTwo.") and None or p / "two.txt", "at least 3"),
    (lambda p: (p / "emptydir").mkdir() or p / "emptydir", "no .txt files"),
])
def test_bad_paths(tmp_path, make, message):
    with pytest.raises(data.DataError, match=message):
        data.load(str(make(tmp_path)), data_dir=tmp_path)


def test_k_larger_than_training_sentences(tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(f"Doc {i}. More." for i in range(20)))
    with pytest.raises(data.DataError,
                       match="--n-labels 64 is larger than the 36 training sentences"):
        data.load(str(tmp_path / "c.txt"), n_labels=64, embed_dim=4, data_dir=tmp_path)


def test_undecodable_bytes_are_replaced_and_reported(tmp_path, capsys):
    (tmp_path / "c.txt").write_bytes(b"Caf\xe9 one. Ok.\n\n"
                                     + b"\n\n".join(b"Doc %d. Fine." % i for i in range(10)))
    docs = corpora.path_documents(tmp_path / "c.txt")
    assert docs[0] == "Caf\ufffd one. Ok."
    assert "not valid UTF-8" in capsys.readouterr().err
    assert data.load(str(tmp_path / "c.txt"), n_labels=2, embed_dim=2,
                     data_dir=tmp_path).splits["train"].tokens.size


def test_unknown_dataset_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        explore.main(["--dataset", "wikipedia"])
    assert str(e.value).startswith("error: unknown dataset 'wikipedia': use one of wiki, synthetic")
    assert "\n" not in str(e.value)


def test_tokenizing_by_document_equals_the_plain_way():
    docs = corpora.wiki_documents()[:1500]
    sentences = [s for d in docs for s in data.split_sentences(d)]
    plain, fast = data.tokenize_sentences(sentences), corpora.tokenize_by_document(docs, sentences)
    assert np.array_equal(plain[0], fast[0]) and np.array_equal(plain[1], fast[1])
    # a cut inside a token
    assert corpora.tokenize_by_document(["Hello world."], ["Hel", "lo world."])[1] is None


def theme_of(seq, successor, second):
    """The theme under which a document's transitions are most often a planned successor."""
    return int(np.argmax([sum(n in (successor[th, p], second[th, p]) for p, n in zip(seq, seq[1:]))
                          for th in range(len(successor))]))


@pytest.mark.parametrize("ambiguity", [0.0, 0.5])
def test_the_ambiguity_knob_splits_successors_as_it_says(ambiguity):
    """At a = 0.5 a type's planned transitions go to its two successors about equally; at a = 0 only
    to the first. The printed ceiling (expected best accuracy) matches a direct count of the Bayes
    guesses."""
    seed, n_types = 3, 8
    _, types = corpora.synthetic_corpus(1500, n_types, seed, ambiguity)
    successor = corpora.synthetic_plan(np.random.default_rng(seed), n_types)[2]
    second = corpora.second_successor(successor, seed)
    assert (second != successor).all()
    first = again = 0
    for seq in types:
        th = theme_of(seq, successor, second)
        first += sum(n == successor[th, p] for p, n in zip(seq, seq[1:]))
        again += sum(n == second[th, p] for p, n in zip(seq, seq[1:]))
    share = again / (first + again)
    # random jumps (10%) land there rarely
    assert (0.45 < share < 0.55) if ambiguity else share < 0.02
    expected, counted = corpora.next_type_ceiling(types, n_types, seed, ambiguity)
    assert abs(expected - counted) < 0.02
    assert (expected < 0.45) if ambiguity else (expected > 0.6)


def test_the_synthetic_vocabulary_holds_every_token_the_generator_writes():
    for seed, ambiguity in ((0, 0.0), (5, 0.5)):
        vocab = corpora.synthetic_vocab(data.tokenizer(), data.EOT, seed, 16)
        docs, _ = corpora.synthetic_corpus(800, 16, seed, ambiguity)
        written = (set(np.concatenate([data.tokenizer().encode_ordinary(d) for d in docs]).tolist())
                   | {data.EOT})
        assert written <= set(vocab) and len(vocab) < 1000 and list(vocab) == sorted(vocab)
        # no more than the generator can write: nearly all of it is written
        assert len(written) > 0.8 * len(vocab)


def test_a_closed_vocabulary_maps_ids_to_rows_and_back(tmp_path):
    """The synthetic corpus's LM reads and predicts rows of its closed vocabulary; other corpora's
    LMs read GPT-2 ids as they are."""
    corpus = data.load("synthetic", 4, 8, 0, 60, 4, data_dir=tmp_path)
    assert corpus.vocab == corpora.synthetic_vocab(data.tokenizer(), data.EOT, 0, 4)
    sd = data.SplitData(corpus, "train", "cpu")
    ids = corpus.splits["train"].tokens
    assert sd.tokens.max() < len(corpus.vocab) and sd.tokens.min() >= 0
    assert np.array_equal(corpus.to_ids(sd.tokens.numpy()), ids)
    assert [corpus.vocab[r] for r in sd.tokens[:20]] == ids[:20].tolist()
    with pytest.raises(data.DataError, match="outside this corpus's closed vocabulary"):
        corpus.to_rows([data.EOT, 4])
    (tmp_path / "c.txt").write_text("\n\n".join(f"Doc {i}. More." for i in range(20)))
    text = data.load(str(tmp_path / "c.txt"), 2, 2, data_dir=tmp_path)
    assert text.vocab is None and np.array_equal(text.to_rows([5, 50256]), [5, 50256])


def test_the_unigram_reference_in_a_corpus_summary(synthetic, capsys):
    """explore.py's summary scores val with add-one train token frequencies over the LM's
    vocabulary (the closed one of the synthetic corpus), counted here the slow way."""
    counts = Counter(synthetic.splits["train"].tokens.tolist())
    total, vocab = sum(counts.values()), len(synthetic.vocab)
    val = synthetic.splits["val"].tokens[1:].tolist()
    nll = -sum(np.log((counts[t] + 1) / (total + vocab)) for t in val) / len(val)
    assert explore.unigram_perplexity(synthetic, "val") == pytest.approx(np.exp(nll), rel=1e-9)
    assert f"on val: perplexity {np.exp(nll):,.1f}" in explore.summary(synthetic)

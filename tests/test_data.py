"""The data stage: verified raw files, safe extraction, resumable downloads, the prepared corpora
with the paper's counts, batching, and the copy-memory task. No test touches the internet: the
mirror is the repository's ../shared/data, and downloads go to a server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import re
import shutil
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from deq.data import (
    CHECKSUMS, DATASETS, MIRROR_ENV, MissingDataError, batchify, copy_memory_splits, fetch,
    make_copy_memory, prepare, segments,
)
from deq.data import corpus as corpus_module
from deq.data.download import extract

from conftest import MIRROR, require_mirror

needs_mirror = pytest.mark.usefixtures("mirror")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def no_mirror_from_the_environment(monkeypatch):
    """Every test here names its mirror (the network is closed for every test: tests/conftest.py)."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)


def copy_mirror(dest: Path, dataset: str = "ptb") -> Path:
    shutil.copytree(MIRROR / dataset, dest / dataset)
    return dest


# --- fetch: verification --------------------------------------------------------------------------

def test_unknown_dataset_names_it_and_the_allowed_ones(tmp_path):
    # A typo in a config must fail at once, saying what would have been accepted.
    with pytest.raises(ValueError, match=r"'ptb2'.*'ptb', 'wikitext-2', 'wikitext-103', 'copy-memory'"):
        fetch("ptb2", tmp_path)
    assert DATASETS == ("ptb", "wikitext-2", "wikitext-103", "copy-memory")


@needs_mirror
def test_tampered_mirror_file_is_rejected_and_deleted(tmp_path):
    # One flipped byte changes the data a model is trained and scored on; it must never be used,
    # and the bad copy must not stay behind where a later run could pick it up.
    mirror = copy_mirror(tmp_path / "mirror")
    bad = mirror / "ptb" / "ptb.valid.txt"
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0x01
    bad.write_bytes(data)
    root = tmp_path / "root"
    with pytest.raises(ValueError) as info:
        fetch("ptb", root, mirror=mirror)
    message = str(info.value)
    assert "ptb/ptb.valid.txt" in message
    assert CHECKSUMS["ptb"][1].sha256 in message and sha256(bytes(data)) in message
    assert not (root / "ptb" / "ptb.valid.txt").exists()
    assert [p.name for p in (root / "ptb").iterdir() if "valid" in p.name] == []  # no temporary left
    assert bad.exists()  # the mirror is the user's: reported, not deleted


@needs_mirror
def test_truncated_mirror_file_is_rejected(tmp_path):
    # An interrupted copy is the commonest corruption; it must not pass as the file.
    mirror = copy_mirror(tmp_path / "mirror")
    short = mirror / "ptb" / "ptb.test.txt"
    short.write_bytes(short.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"ptb/ptb\.test\.txt.*expected dd65dff3.*449,845 bytes, expected 449,945"):
        fetch("ptb", tmp_path / "root", mirror=mirror)
    assert not (tmp_path / "root" / "ptb" / "ptb.test.txt").exists()


@needs_mirror
def test_mirror_from_environment_variable_is_used(tmp_path, monkeypatch):
    # The mirror is named once per machine (DEQ_DATA_MIRROR) when a config does not name one.
    monkeypatch.setenv(MIRROR_ENV, str(MIRROR))
    paths = fetch("ptb", tmp_path)
    assert {s: sha256(p.read_bytes()) for s, p in paths.items()} == {f.split: f.sha256 for f in CHECKSUMS["ptb"]}


@needs_mirror
def test_missing_file_without_mirror_or_network_says_how_to_provide_it(tmp_path):
    # Offline clusters are common; the error must say which file, from where, and the exact layout
    # of a mirror that would fix it (the autouse fixture makes every URL fail with URLError).
    with pytest.raises(MissingDataError) as info:
        fetch("ptb", tmp_path)
    message = str(info.value)
    for part in ("ptb/ptb.train.txt", CHECKSUMS["ptb"][0].source.url, "<mirror>/<dataset>/<original file names>",
                 "<mirror>/ptb/ptb.train.txt", MIRROR_ENV, "data_mirror"):
        assert part in message, f"{part!r} not in:\n{message}"


def fake_dataset(monkeypatch, tmp_path: Path, dataset: str, files: dict[str, bytes], per_file_digests: bool
                 ) -> tuple[Path, bytes]:
    """Point CHECKSUMS[dataset] at a zip of ``files`` (split -> content) in a mirror; return (mirror, zip)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for split, data in files.items():
            zf.writestr(f"{dataset}/wiki.{split}.tokens", data)
        zf.writestr(f"{dataset}/README", b"not needed")
    archive = buffer.getvalue()
    source = dataclasses.replace(CHECKSUMS[dataset][0].source, sha256=sha256(archive), size=len(archive))
    entries = tuple(dataclasses.replace(
        f, source=source, sha256=sha256(files[f.split]) if per_file_digests else None,
        size=len(files[f.split]) if per_file_digests else None) for f in CHECKSUMS[dataset])
    monkeypatch.setitem(CHECKSUMS, dataset, entries)
    mirror = tmp_path / "mirror"
    (mirror / dataset).mkdir(parents=True)
    (mirror / dataset / source.name).write_bytes(archive)
    return mirror, archive


def test_archive_without_file_digests_is_verified_through_the_zip(tmp_path, monkeypatch):
    # WikiText-103 publishes only the zip's digest: files extracted from a verified zip are trusted,
    # their digests recorded, and a later change to them is caught and repaired from the zip.
    files = {s: f" = {s} = \n a b c \n".encode() for s in ("train", "valid", "test")}
    mirror, _ = fake_dataset(monkeypatch, tmp_path, "wikitext-103", files, per_file_digests=False)
    root = tmp_path / "root"
    paths = fetch("wikitext-103", root, mirror=mirror)
    assert {s: p.read_bytes() for s, p in paths.items()} == files
    assert sorted(p.name for p in (root / "wikitext-103").iterdir()) == \
        ["SHA256SUMS", "wiki.test.tokens", "wiki.train.tokens", "wiki.valid.tokens"]  # not the README
    fetch("wikitext-103", root)  # present and verified by the recorded digests: no mirror, no network
    paths["train"].write_bytes(b"changed\n")
    with pytest.warns(UserWarning, match="does not match"):
        fetch("wikitext-103", root, mirror=mirror)
    assert paths["train"].read_bytes() == files["train"]


def test_vocabulary_size_mismatch_names_both_numbers(tmp_path, monkeypatch):
    # A corpus with the wrong vocabulary is a different corpus; the paper's numbers would not apply.
    files = {s: b" a b c \n a b \n" for s in ("train", "valid", "test")}
    mirror, _ = fake_dataset(monkeypatch, tmp_path, "wikitext-103", files, per_file_digests=False)
    with pytest.raises(ValueError, match=r"vocabulary of 4 tokens, expected 267,735"):
        prepare("wikitext-103", tmp_path / "root", mirror=mirror)
    monkeypatch.setitem(corpus_module.VOCAB_SIZES, "wikitext-103", 4)
    corpus = prepare("wikitext-103", tmp_path / "root", mirror=mirror)
    assert corpus.vocab == ["<eos>", "a", "b", "c"] and corpus.train.tolist() == [1, 2, 3, 0, 1, 2, 0]


# --- archive extraction ---------------------------------------------------------------------------

def test_zip_member_escaping_the_target_is_refused(tmp_path):
    # A crafted archive must not write outside the data folder ("zip slip"), even beside the
    # members we asked for.
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("wikitext-2/wiki.train.tokens", b"fine\n")
        zf.writestr("../evil", b"pwned\n")
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(ValueError, match=r"'\.\./evil' escapes"):
        extract(archive, target, ["wikitext-2/wiki.train.tokens"])
    assert not (tmp_path / "evil").exists()
    assert list(target.rglob("*")) == []  # refused before anything was written


def test_tar_member_with_absolute_path_is_refused(tmp_path):
    # An absolute member name would be written wherever it points.
    outside = tmp_path / "outside" / "evil"
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name in ("ptb/ptb.train.txt", str(outside)):
            info = tarfile.TarInfo(name)
            info.size = 5
            tf.addfile(info, io.BytesIO(b"data\n"))
    with tarfile.open(archive) as tf:
        assert str(outside) in tf.getnames()  # the archive really holds the absolute name
    target = tmp_path / "target"
    with pytest.raises(ValueError, match=re.escape(repr(str(outside))) + " escapes"):
        extract(archive, target, ["ptb/ptb.train.txt"])
    assert not outside.exists() and not target.exists()


def test_extract_writes_only_the_wanted_members(tmp_path):
    # Extraction is limited to the files the dataset needs (the WikiText-103 zip is 540 MB unpacked).
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        for name in ("d/keep.txt", "d/skip.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(name[2:5].encode()))
    paths = extract(archive, tmp_path / "t", ["d/keep.txt"])
    assert paths == {"d/keep.txt": tmp_path / "t" / "d" / "keep.txt"}
    assert [p.name for p in (tmp_path / "t" / "d").iterdir()] == ["keep.txt"]
    assert paths["d/keep.txt"].read_bytes() == b"kee"


@needs_mirror
def test_wikitext2_files_come_from_a_mirrored_zip_and_are_verified(tmp_path, monkeypatch):
    # A mirror may hold the original archive instead of the files; the zip and each member are
    # checked against their own digests, and only the three needed members are written.
    files = {f.split: (MIRROR / f.path).read_bytes() for f in CHECKSUMS["wikitext-2"]}
    mirror, _ = fake_dataset(monkeypatch, tmp_path, "wikitext-2", files, per_file_digests=True)
    paths = fetch("wikitext-2", tmp_path / "root", mirror=mirror)
    assert {s: p.read_bytes() for s, p in paths.items()} == files
    assert not (tmp_path / "root" / "wikitext-2" / "README").exists()


# --- download over HTTP ---------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path, monkeypatch):
    """A file server on 127.0.0.1 that honours ``Range: bytes=N-`` unless told not to."""
    served = tmp_path / "served"
    served.mkdir()
    log: list[tuple[str | None, int]] = []  # (Range header, status) per request
    options = {"honour_range": True}

    class RangeHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = served / urllib.parse.unquote(self.path.lstrip("/"))
            if not path.is_file():
                log.append((None, 404))
                return self.send_error(404)
            data, header = path.read_bytes(), self.headers.get("Range")
            match = re.fullmatch(r"bytes=(\d+)-", header or "")
            if match and options["honour_range"] and int(match[1]) < len(data):
                start = int(match[1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                data = data[start:]
            else:
                self.send_response(200)
            log.append((header, 206 if match and options["honour_range"] else 200))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield {"dir": served, "url": f"http://127.0.0.1:{httpd.server_port}", "log": log, "options": options}
    httpd.shutdown()
    thread.join()


def serve_ptb(monkeypatch, server) -> None:
    """Serve the mirror's PTB files and point the checksum table at them."""
    entries = []
    for f in CHECKSUMS["ptb"]:
        shutil.copy(MIRROR / f.path, server["dir"] / f.name)
        source = dataclasses.replace(f.source, url=f"{server['url']}/{f.name}")
        entries.append(dataclasses.replace(f, source=source))
    monkeypatch.setitem(CHECKSUMS, "ptb", tuple(entries))


@needs_mirror
def test_download_resumes_a_partial_file_and_verifies_it(tmp_path, monkeypatch, server):
    # A 190 MB download cut at 90% must not start over; the resumed bytes must still make the file
    # whose digest is published.
    serve_ptb(monkeypatch, server)
    root = tmp_path / "root"
    (root / "ptb").mkdir(parents=True)
    train = (MIRROR / "ptb" / "ptb.train.txt").read_bytes()
    (root / "ptb" / "ptb.train.txt.part").write_bytes(train[:1_000_000])
    paths = fetch("ptb", root)
    assert server["log"][0] == ("bytes=1000000-", 206)  # the train file resumed, the others fresh
    assert [status for _, status in server["log"]] == [206, 200, 200]
    assert paths["train"].read_bytes() == train
    assert not list((root / "ptb").glob("*.part"))


@needs_mirror
def test_download_falls_back_to_the_whole_file_when_range_is_ignored(tmp_path, monkeypatch, server):
    # A server that answers a Range request with 200 sends the whole file: appending it to the
    # partial one would corrupt it, so the partial file must be overwritten.
    serve_ptb(monkeypatch, server)
    server["options"]["honour_range"] = False
    root = tmp_path / "root"
    (root / "ptb").mkdir(parents=True)
    train = (MIRROR / "ptb" / "ptb.train.txt").read_bytes()
    (root / "ptb" / "ptb.train.txt.part").write_bytes(train[:1_000_000])
    paths = fetch("ptb", root)
    assert server["log"][0] == ("bytes=1000000-", 200)
    assert paths["train"].read_bytes() == train


@needs_mirror
def test_download_with_wrong_content_is_rejected_and_deleted(tmp_path, monkeypatch, server):
    # A server (or proxy) handing out different bytes must not be trusted, and the bad download
    # must not be resumed from next time.
    serve_ptb(monkeypatch, server)
    (server["dir"] / "ptb.valid.txt").write_bytes(b"something else\n")
    root = tmp_path / "root"
    with pytest.raises(ValueError, match=r"ptb\.valid\.txt.*expected c9fe6985.*got " + sha256(b"something else\n")):
        fetch("ptb", root)
    assert not list((root / "ptb").glob("ptb.valid.txt*"))


# --- prepared corpora -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wikitext2(tmp_path_factory):
    """WikiText-2 prepared once for the module (the slowest preparation here, about a second)."""
    require_mirror("wikitext-2")
    return prepare("wikitext-2", tmp_path_factory.mktemp("data"), mirror=MIRROR)


def frequencies(corpus, splits) -> np.ndarray:
    return np.bincount(np.concatenate([getattr(corpus, s) for s in splits]), minlength=len(corpus.vocab))


@needs_mirror
def test_ptb_has_the_papers_token_counts_and_vocabulary(tmp_path):
    # PAPER.md's PTB: 929,589 / 73,760 / 82,430 tokens (one <eos> per line), vocabulary 10,000,
    # <eos> first and words by descending frequency over all splits (adaptive softmax cutoffs rely on it).
    corpus = prepare("ptb", tmp_path, mirror=MIRROR)
    assert corpus.counts == {"train": 929_589, "valid": 73_760, "test": 82_430}
    assert [len(corpus.train), len(corpus.valid), len(corpus.test)] == [929_589, 73_760, 82_430]
    assert len(corpus.vocab) == 10_000 and corpus.vocab[0] == "<eos>" and "<unk>" in corpus.vocab
    assert all(w == w.lower() for w in corpus.vocab)
    counts = frequencies(corpus, ("train", "valid", "test"))
    assert np.all(np.diff(counts[1:]) <= 0)
    assert isinstance(corpus.train, np.memmap) and corpus.train.dtype == np.int32


def test_wikitext2_has_the_papers_token_counts_and_vocabulary(wikitext2):
    # PAPER.md's WikiText-2: 2,088,628 / 217,646 / 245,569 tokens, vocabulary 33,278; case kept,
    # words ordered by train frequency.
    assert wikitext2.counts == {"train": 2_088_628, "valid": 217_646, "test": 245_569}
    assert len(wikitext2.vocab) == 33_278 and wikitext2.vocab[0] == "<eos>"
    assert np.all(np.diff(frequencies(wikitext2, ("train",))[1:]) <= 0)
    assert "The" in wikitext2.vocab and "the" in wikitext2.vocab


def test_wikitext2_encoding_decodes_back_to_the_text(wikitext2):
    # The ids must spell the file exactly (words in order, <eos> at each line end), or the model
    # is trained on something else than the benchmark.
    lines = (MIRROR / "wikitext-2" / "wiki.test.tokens").read_text(encoding="utf-8").splitlines()
    expected = [w for line in lines[:200] for w in [*line.split(), "<eos>"]]
    assert [wikitext2.vocab[i] for i in wikitext2.test[:len(expected)]] == expected


@needs_mirror
def test_prepared_cache_is_reused(tmp_path):
    # Re-running a rule must not rewrite its inputs' cache (Snakemake would see them as newer).
    prepare("ptb", tmp_path, mirror=MIRROR)
    folder = tmp_path / "ptb" / "prepared"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert set(before) == {"train.npy", "valid.npy", "test.npy", "vocab.txt", "meta.json"}
    corpus = prepare("ptb", tmp_path)  # no mirror needed: the files are present and verified
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert corpus.counts["train"] == 929_589


@needs_mirror
def test_prepared_cache_is_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    # A cache built from other source files must never be served: here the PTB train file's first
    # two lines are swapped (same words, different digest) and published as the new version.
    prepare("ptb", tmp_path / "root", mirror=MIRROR)
    train_npy = tmp_path / "root" / "ptb" / "prepared" / "train.npy"
    before = train_npy.stat().st_mtime_ns
    lines = (MIRROR / "ptb" / "ptb.train.txt").read_bytes().splitlines(keepends=True)
    swapped = b"".join([lines[1], lines[0], *lines[2:]])
    mirror = tmp_path / "mirror"
    (mirror / "ptb").mkdir(parents=True)
    (mirror / "ptb" / "ptb.train.txt").write_bytes(swapped)
    entries = list(CHECKSUMS["ptb"])
    entries[0] = dataclasses.replace(entries[0], sha256=sha256(swapped))
    monkeypatch.setitem(CHECKSUMS, "ptb", tuple(entries))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old present train file no longer matches: re-fetched
        corpus = prepare("ptb", tmp_path / "root", mirror=mirror)
    assert train_npy.stat().st_mtime_ns != before
    first = lines[1].decode().lower().split() + ["<eos>"]  # PTB is lower-cased
    assert [corpus.vocab[i] for i in corpus.train[:len(first)]] == first


def test_copy_memory_is_not_a_text_corpus(tmp_path):
    # The synthetic task has nothing to fetch or prepare; asking for it says where it comes from.
    assert fetch("copy-memory", tmp_path) == {}
    with pytest.raises(ValueError, match="copy_memory_splits"):
        prepare("copy-memory", tmp_path)


# --- batching -------------------------------------------------------------------------------------

def test_batchify_makes_contiguous_rows_and_drops_the_tail():
    # Each row must read as running text (row b is the b-th chunk), or the memory carried across
    # segments would join unrelated text.
    streams = batchify(np.arange(23, dtype=np.int32), 4)
    assert streams.shape == (4, 5) and streams.dtype == torch.int64
    assert streams.tolist() == [list(range(5 * b, 5 * b + 5)) for b in range(4)]
    with pytest.raises(ValueError, match="batch_size=24"):
        batchify(np.arange(23), 24)


def test_segments_shift_targets_by_one_and_cover_the_streams():
    # Each target is the next token of its input, and the segments tile the streams exactly once,
    # the last one shorter.
    streams = batchify(np.arange(2 * 11), 2)  # (2, 11)
    parts = list(segments(streams, tgt_len=4))
    assert [(pos, x.shape[1]) for pos, x, _ in parts] == [(0, 4), (4, 4), (8, 2)]
    for _, x, y in parts:
        assert x.shape == y.shape and torch.equal(y, x + 1)  # the streams count up by one
    assert torch.equal(torch.cat([x for _, x, _ in parts], dim=1), streams[:, :-1])
    assert torch.equal(torch.cat([y for _, _, y in parts], dim=1), streams[:, 1:])


def test_segments_resume_from_a_position_continues_exactly():
    # Training resumed mid-epoch must see exactly the segments it would have seen next.
    streams = batchify(np.random.default_rng(0).integers(0, 100, 1000), 3)
    full = list(segments(streams, tgt_len=7))
    resumed = list(segments(streams, tgt_len=7, start=full[5][0]))
    assert len(resumed) == len(full) - 5
    for (p, x, y), (q, u, v) in zip(full[5:], resumed):
        assert p == q and torch.equal(x, u) and torch.equal(y, v)


# --- copy memory ----------------------------------------------------------------------------------

@pytest.mark.parametrize("T,seed", [(1, 0), (5, 1), (30, 2), (400, 3)])
def test_copy_memory_matches_its_definition(T, seed):
    # PAPER.md: x = 10 digits in 1..8, T-1 zeros, a 9, 10 zeros; y = zeros but the last 10
    # positions repeat the digits. Any other layout is a different task and a different loss.
    x, y = make_copy_memory(64, T, seed)
    assert x.shape == y.shape == (64, T + 20) and x.dtype == y.dtype == torch.int64
    digits = x[:, :10]
    assert bool(((digits >= 1) & (digits <= 8)).all())
    assert bool((x[:, 10:T + 9] == 0).all()) and bool((x[:, T + 9] == 9).all()) and bool((x[:, T + 10:] == 0).all())
    assert bool((y[:, :T + 10] == 0).all()) and torch.equal(y[:, T + 10:], digits)


def test_copy_memory_is_deterministic_given_the_seed():
    # The Table 1 loss is compared across models, so every model must see the same samples.
    a, b = make_copy_memory(100, 50, seed=7), make_copy_memory(100, 50, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], make_copy_memory(100, 50, seed=8)[0])


def test_copy_memory_splits_are_disjoint_draws():
    # The test set must be new samples, not the first rows of the training set.
    splits = copy_memory_splits(T=20, seed=0, n_train=500, n_test=100)
    (xtr, _), (xte, _) = splits["train"], splits["test"]
    assert xtr.shape == (500, 40) and xte.shape == (100, 40)
    assert torch.equal(xtr, make_copy_memory(500, 20, seed=0)[0])
    assert not torch.equal(xte, xtr[:100])


def test_no_test_can_reach_the_network():
    # tests/conftest.py's no_network guard: a download a test forgot to point at 127.0.0.1 fails at once,
    # naming what it tried, instead of reaching (or waiting for) the internet.
    import socket

    with pytest.raises(OSError, match=r"tests may not use the network: looking up 'example\.org'"):
        urllib.request.urlopen("https://example.org/ptb.train.txt", timeout=5)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, \
            pytest.raises(OSError, match=r"tests may not use the network: connecting to \('192\.0\.2\.1', 80\)"):
        sock.connect(("192.0.2.1", 80))


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_mirror_fails_under_ci_and_is_skipped_elsewhere(tmp_path, monkeypatch, ci, outcome):
    # Under CI a missing corpus mirror must fail: skipped data tests would let CI pass having tested nothing.
    import conftest

    monkeypatch.setattr(conftest, "MIRROR", tmp_path)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=rf"local corpus mirror {re.escape(str(tmp_path))} lacks ptb, wikitext-2"):
        conftest.require_mirror()
    (tmp_path / "ptb").mkdir()
    (tmp_path / "wikitext-2").mkdir()
    assert conftest.require_mirror() == tmp_path

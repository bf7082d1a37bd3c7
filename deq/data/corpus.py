"""Word-level corpora as token-id streams, and the batching the language models train on.

Tokenisation follows the Transformer-XL / DEQ ``Corpus``: each line is split on whitespace and one
``<eos>`` is appended. The vocabulary puts the special ``<eos>`` first (id 0), then every word by
descending frequency, ties broken by first appearance (``Counter.most_common``, as the reference
code; the adaptive softmax cutoffs rely on this order).

- PTB: lower-cased (this maps the number token ``N`` to ``n``), counted over train+valid+test.
- WikiText-2 and -103: case kept, counted on train only; every valid/test token is in the train
  vocabulary for these corpora, and an unknown one is an error rather than a silent ``<unk>``.
  (Transformer-XL counts WikiText-2 over all three splits: the same 33,278 words; ids of words
  with the same train count may then differ from ours.)

:func:`prepare` encodes each split to ``<root>/<dataset>/prepared/<split>.npy`` (int32), with
``vocab.txt`` (one token per line, UTF-8) and ``meta.json`` (token counts, vocabulary size, the
source files' sha256, and the size and sha256 of each ``.npy`` and of ``vocab.txt``). It works in
two streaming passes (count, then encode chunk by chunk with plain file writes), so WikiText-103
(about 103M tokens) prepares in well under 4 GB of memory.

- Concurrency: ``prepare`` holds ``<root>/<dataset>/.prepare.lock`` (an ``flock``) while it fetches,
  checks and builds, so processes preparing one data root at once (every rank of a ``torchrun``)
  take turns and the later ones reuse the folder the first one built.
- Integrity: every file is written to a uniquely named temporary file in the same folder, fsynced,
  then renamed into place; ``meta.json`` comes last, so its presence says the folder is complete.
  Before the folder is reused, each file's size and sha256 are checked against ``meta.json``; a file
  that differs (edited in place, truncated, unreadable) is reported on stderr and the folder rebuilt.
- Full disk: after the counting pass the bytes needed are known and compared with the free space of
  the folder (``OSError(ENOSPC)`` naming the folder, the bytes needed and free); a write that still
  fails raises ``OSError`` naming the file and the bytes needed. No memmap is written (on a full
  disk that is a SIGBUS, not an exception), and no temporary file is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deq.data.download import VOCAB_SIZES, check_dataset, fetch, sha256_file, source_digests
from deq.io import default_file_mode, exclusive_lock

__all__ = ["SPLITS", "Corpus", "batchify", "prepare", "segments"]

SPLITS = ("train", "valid", "test")
EOS = "<eos>"
SPECIALS = (EOS,)  # ids 0.. in this order, before every word
FORMAT = 2  # of the prepared folder; bump when the layout or the vocabulary rule changes
ENCODE_CHUNK = 1 << 20  # tokens encoded before each write
DTYPE = np.dtype("<i4")  # int32, as stored in the .npy files
LOCK = ".prepare.lock"  # in <root>/<dataset>/


@dataclass(frozen=True)
class _Rule:
    lower_case: bool
    vocab_splits: tuple[str, ...]  # the splits whose words are counted


RULES = {
    "ptb": _Rule(lower_case=True, vocab_splits=SPLITS),
    "wikitext-2": _Rule(lower_case=False, vocab_splits=("train",)),
    "wikitext-103": _Rule(lower_case=False, vocab_splits=("train",)),
}


@dataclass(eq=False)
class Corpus:
    """A prepared corpus: the vocabulary and each split as a memory-mapped id stream."""

    vocab: list[str]  # id -> token; vocab[0] == "<eos>"
    train: np.ndarray  # (N_train,) int32, memory-mapped
    valid: np.ndarray  # (N_valid,) int32, memory-mapped
    test: np.ndarray  # (N_test,) int32, memory-mapped
    counts: dict[str, int]  # split -> tokens, one <eos> per line included


# --- the two passes -------------------------------------------------------------------------------

def _lines(path: Path, lower_case: bool) -> Iterator[list[str]]:
    """The words of each line of ``path``, without the <eos> appended to every line."""
    with open(path, encoding="utf-8") as file:
        for line in file:
            yield (line.lower() if lower_case else line).split()


def _count(paths: dict[str, Path], rule: _Rule) -> tuple[list[str], dict[str, int]]:
    """Pass 1: (vocabulary, tokens per split)."""
    counter: Counter[str] = Counter()  # insertion-ordered: most_common breaks ties by first appearance
    tokens = {}
    for split, path in paths.items():
        n = 0
        for words in _lines(path, rule.lower_case):
            n += len(words) + 1
            if split in rule.vocab_splits:
                counter.update(words)
        tokens[split] = n
    words = [w for w, _ in counter.most_common() if w not in SPECIALS]
    return [*SPECIALS, *words], tokens


def _encode(path: Path, n: int, stoi: dict[str, int], lower_case: bool, split: str) -> Iterator[bytes]:
    """Pass 2: the ids of ``path`` as int32 bytes, chunk by chunk; RuntimeError unless there are ``n``."""
    eos, done, buffer = stoi[EOS], 0, []
    for words in _lines(path, lower_case):
        try:
            buffer.extend([stoi[w] for w in words])
        except KeyError as error:
            raise ValueError(f"{path.name}: token {error.args[0]!r} of the {split} split is not in the "
                             f"vocabulary; the source file is not the expected corpus") from None
        buffer.append(eos)
        if len(buffer) >= ENCODE_CHUNK:
            done += len(buffer)
            yield np.array(buffer, dtype=DTYPE).tobytes()
            buffer = []
    done += len(buffer)
    if done != n:  # raised before the file is renamed into place
        raise RuntimeError(f"{path} changed while it was being prepared: {n:,} tokens counted, "
                           f"{done:,} encoded")
    yield np.array(buffer, dtype=DTYPE).tobytes()


# --- the prepared folder --------------------------------------------------------------------------

def _meta(dataset: str, sources: dict[str, str], vocab_size: int, tokens: dict[str, int],
          files: dict[str, dict]) -> dict:
    rule = RULES[dataset]
    return {"format": FORMAT, "dataset": dataset, "lower_case": rule.lower_case,
            "vocab_counted_on": list(rule.vocab_splits), "vocab_size": vocab_size, "tokens": tokens,
            "sources_sha256": sources, "files": files}


def _differs(folder: Path, files: dict[str, dict]) -> str | None:
    """How a prepared file differs from its record in ``meta.json`` (size, then sha256), or None."""
    for name, record in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
            if size != record["bytes"]:
                return f"{path}: {size:,} bytes, meta.json records {record['bytes']:,}"
            if sha256_file(path) != record["sha256"]:
                return f"{path}: sha256 differs from meta.json"
        except OSError as error:
            return f"{path}: unreadable ({error.strerror or error})"
    return None


def _load(folder: Path, dataset: str, sources: dict[str, str]) -> Corpus | None:
    """The cached corpus if ``meta.json`` says it was built from exactly ``sources`` and every file
    still has its recorded size and sha256; else None (a file that differs is reported on stderr)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta["format"] != FORMAT or meta["dataset"] != dataset or meta["sources_sha256"] != sources:
            return None
        if set(meta["files"]) != {*(f"{s}.npy" for s in SPLITS), "vocab.txt"}:
            return None
        if (problem := _differs(folder, meta["files"])) is not None:
            print(f"deq.data.prepare: {problem}; rebuilding", file=sys.stderr)
            return None
        vocab = (folder / "vocab.txt").read_bytes().decode("utf-8").split("\n")[:-1]
        arrays = {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in SPLITS}
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None  # missing or unreadable: rebuild
    if len(vocab) != meta["vocab_size"] or any(arrays[s].shape != (meta["tokens"][s],) for s in SPLITS):
        return None
    return Corpus(vocab, **arrays, counts=dict(meta["tokens"]))


def _npy_header(n: int) -> bytes:
    """The ``.npy`` (version 1.0) header of an int32 array of ``n`` elements."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": (n,)})
    return buffer.getvalue()


def _check_space(folder: Path, needed: int) -> None:
    """OSError(ENOSPC) naming ``folder`` unless its file system has ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"not enough free space to prepare {folder}: {needed:,} bytes needed, "
                                    f"{free:,} bytes free")


def _write(dest: Path, *parts: Iterable[bytes], size: int) -> dict:
    """Write the chunks of ``parts`` to ``dest`` through a unique temporary file in its folder (fsynced,
    then renamed); return {"bytes", "sha256"} of what was written.

    An OSError is raised again naming ``dest``, the ``size`` it needed and the cause; the temporary
    file is removed whatever happens.
    """
    digest, written, tmp = hashlib.sha256(), 0, None
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), default_file_mode())  # mkstemp makes 0600
            for part in parts:
                for chunk in part:
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except OSError as error:
        message = f"cannot write {dest} ({size:,} bytes needed): {error.strerror or error}"
        raise (OSError(error.errno, message) if error.errno else OSError(message)) from error
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # gone already once renamed
    return {"bytes": written, "sha256": digest.hexdigest()}


def _build(folder: Path, dataset: str, paths: dict[str, Path], sources: dict[str, str]) -> None:
    rule = RULES[dataset]
    (folder / "meta.json").unlink(missing_ok=True)  # the old cache is invalid from here on
    vocab, tokens = _count(paths, rule)
    if len(vocab) != VOCAB_SIZES[dataset]:
        raise ValueError(f"{dataset}: vocabulary of {len(vocab):,} tokens, expected "
                         f"{VOCAB_SIZES[dataset]:,}; the source files are not the expected corpus")
    headers = {s: _npy_header(tokens[s]) for s in SPLITS}
    sizes = {s: len(headers[s]) + tokens[s] * DTYPE.itemsize for s in SPLITS}  # of each .npy
    vocab_bytes = "".join(f"{w}\n" for w in vocab).encode("utf-8")
    folder.mkdir(parents=True, exist_ok=True)
    _check_space(folder, sum(sizes.values()) + len(vocab_bytes))  # before the long encoding pass
    stoi = {w: i for i, w in enumerate(vocab)}
    files = {}
    for split in SPLITS:
        chunks = _encode(paths[split], tokens[split], stoi, rule.lower_case, split)
        files[f"{split}.npy"] = _write(folder / f"{split}.npy", [headers[split]], chunks, size=sizes[split])
    files["vocab.txt"] = _write(folder / "vocab.txt", [vocab_bytes], size=len(vocab_bytes))
    # meta.json last: its presence says the folder is complete
    meta = json.dumps(_meta(dataset, sources, len(vocab), tokens, files), indent=1).encode()
    _write(folder / "meta.json", [meta], size=len(meta))


def prepare(dataset: str, root: str | Path, mirror: str | Path | None = None) -> Corpus:
    """Fetch ``dataset`` (see :func:`deq.data.fetch`), encode it once, and return it memory-mapped.

    The prepared folder is reused while its ``meta.json`` names the same source digests and its
    files match their recorded sizes and digests, and rebuilt otherwise. Processes preparing the
    same root take turns (``<root>/<dataset>/.prepare.lock``); a data root where the lock cannot be
    created (read-only) is used without it.
    """
    check_dataset(dataset)
    if dataset not in RULES:
        raise ValueError(f"{dataset!r} is not a text corpus; choose from {list(RULES)} "
                         f"(copy-memory is generated: deq.data.copy_memory_splits)")
    root = Path(root)
    with contextlib.ExitStack() as turns:
        try:
            turns.enter_context(exclusive_lock(root / dataset / LOCK, what=f"the {dataset} data in {root}"))
        except OSError as error:  # a read-only data root: nobody can write there, so only read it
            if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
        paths = fetch(dataset, root, mirror)
        sources = source_digests(dataset, root)
        folder = root / dataset / "prepared"
        corpus = _load(folder, dataset, sources)
        if corpus is None:
            _build(folder, dataset, paths, sources)
            corpus = _load(folder, dataset, sources)
            assert corpus is not None, f"{folder} unreadable right after it was written"
    return corpus


# --- batching -------------------------------------------------------------------------------------

def batchify(tokens: np.ndarray, batch_size: int) -> torch.Tensor:
    """Cut a token stream into ``batch_size`` contiguous streams, (B, N) int64; the tail is dropped.

    Row b is the b-th contiguous chunk, so each row reads as running text.

    >>> batchify(np.arange(10, dtype=np.int32), 3)
    tensor([[0, 1, 2],
            [3, 4, 5],
            [6, 7, 8]])
    """
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be one stream (N,), got shape {tuple(tokens.shape)}")
    if not 1 <= batch_size <= len(tokens):
        raise ValueError(f"batch_size must be in 1..{len(tokens)} (the stream's length), got {batch_size=}")
    n = len(tokens) // batch_size
    return torch.from_numpy(np.asarray(tokens[:n * batch_size], dtype=np.int64)).view(batch_size, n)


def segments(streams: torch.Tensor, tgt_len: int, start: int = 0
             ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (position, inputs (B, T), targets (B, T)) from token offset ``start`` to the end.

    Targets are the inputs shifted by one token; the last segment may be shorter than ``tgt_len``.
    ``start`` is the position to resume at (a previous segment's position plus its length).

    >>> for pos, x, y in segments(batchify(np.arange(8), 2), tgt_len=2):
    ...     print(pos, x.tolist(), y.tolist())
    0 [[0, 1], [4, 5]] [[1, 2], [5, 6]]
    2 [[2], [6]] [[3], [7]]
    """
    if streams.ndim != 2:
        raise ValueError(f"streams must be (B, N), got shape {tuple(streams.shape)}")
    if tgt_len < 1 or start < 0:
        raise ValueError(f"need tgt_len >= 1 and start >= 0, got {tgt_len=}, {start=}")
    n = streams.size(1)
    for pos in range(start, n - 1, tgt_len):
        length = min(tgt_len, n - 1 - pos)
        yield pos, streams[:, pos:pos + length], streams[:, pos + 1:pos + 1 + length]  # (B, T) each

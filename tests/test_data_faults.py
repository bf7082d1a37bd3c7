"""Data preparation under faults: a full disk (refused up front, or a write that fails in the kernel),
several processes preparing one data root at once, and prepared arrays changed after the fact. Each
test injects the fault and checks the outcome: a Python OSError naming the path and the bytes (never
a signal), nothing half-written left behind, and arrays equal to a pristine preparation."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import numpy as np
import pytest

from deq.data import SPLITS, fetch, prepare

from conftest import MIRROR

REPO = Path(__file__).resolve().parents[1]
needs_mirror = pytest.mark.usefixtures("mirror")
PTB_TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}
OSERROR_EXIT = 3  # what the child scripts below exit with on an OSError


@pytest.fixture(autouse=True)
def no_mirror_from_the_environment(monkeypatch):
    monkeypatch.delenv("DEQ_DATA_MIRROR", raising=False)


def leftovers(folder: Path) -> list[str]:
    """Temporary files (ours: ``.<name>.<random>.tmp``; the old code's ``.<split>.npy.tmp``) in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) if folder.is_dir() else []


def run_child(script: str, root: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (``root`` is ``sys.argv[1]``) in a fresh interpreter; an OSError exits OSERROR_EXIT."""
    body = textwrap.dedent(script) + textwrap.dedent(f"""
        from deq.data import prepare
        try:
            prepare("ptb", sys.argv[1])
        except OSError as error:
            print(f"{{type(error).__name__}}: {{error}}", file=sys.stderr)
            sys.exit({OSERROR_EXIT})
        """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DEQ_DATA_MIRROR", None)
    return subprocess.run([sys.executable, "-c", "import sys\n" + body, str(root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def exit_description(child: subprocess.CompletedProcess) -> str:
    how = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit {child.returncode}"
    return f"{how}; stderr:\n{child.stderr}"


# --- full disk ------------------------------------------------------------------------------------

@needs_mirror
def test_too_little_free_space_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    # The bytes the three arrays need are known after the counting pass; a disk without them must be
    # reported then (folder, bytes needed, bytes free), not found out by a crash half-way through.
    root = tmp_path / "root"
    fetch("ptb", root, MIRROR)
    folder = root / "ptb" / "prepared"
    real = shutil.disk_usage
    with monkeypatch.context() as patch, pytest.raises(OSError) as info:
        patch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1_000))  # as corpus looks it up
        prepare("ptb", root)
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert str(folder) in message and "1,000 bytes free" in message, message
    needed = int(message.split(" bytes needed")[0].rsplit(" ", 1)[-1].replace(",", ""))
    assert needed >= 4 * sum(PTB_TOKENS.values())  # the int32 arrays alone
    assert sorted(p.name for p in folder.iterdir()) == []  # nothing written, no temporary, no meta.json
    # space again: the folder counts as not prepared and is built
    assert prepare("ptb", root).counts == PTB_TOKENS


@needs_mirror
def test_a_write_failing_in_the_kernel_is_an_oserror_naming_the_file(tmp_path):
    # A real write error from the kernel (EFBIG: the file size limit, with SIGXFSZ ignored, as a
    # quota or a full disk gives ENOSPC): the process must end with a Python OSError naming the file
    # and the bytes it needed, and leave no temporary file and no meta.json behind.
    root = tmp_path / "root"
    fetch("ptb", root, MIRROR)  # the raw files are in place before the limit
    child = run_child("""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))  # train.npy needs 3.7 MB
        """, root)
    folder = root / "ptb" / "prepared"
    assert child.returncode == OSERROR_EXIT, exit_description(child)
    train = folder / "train.npy"
    assert f"OSError: [Errno {errno.EFBIG}] cannot write {train} (3,718,484 bytes needed): File too large" \
        in child.stderr, child.stderr
    assert leftovers(folder) == [] and not (folder / "meta.json").exists()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs mounted at a fresh folder (root only); unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    where = tmp_path / "tmpfs"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield where
    if subprocess.run(["umount", str(where)]).returncode != 0:
        subprocess.run(["umount", "-l", str(where)])


@needs_mirror
@pytest.mark.parametrize("space_check", ["on", "faked away"])
def test_a_full_tmpfs_is_an_oserror_not_a_sigbus(tmp_path, tiny_tmpfs, space_check):
    # The reported fault: a memmap written on a full file system gets the process killed by SIGBUS
    # (exit 135, empty log, a temporary file left). On a 1 MiB tmpfs as the prepared folder, the
    # free-space check refuses at once; with the check faked away, the kernel's ENOSPC on write()
    # must still surface as an OSError naming train.npy.
    root = tmp_path / "root"
    fetch("ptb", root, MIRROR)
    folder = root / "ptb" / "prepared"
    folder.symlink_to(tiny_tmpfs, target_is_directory=True)
    fake = "" if space_check == "on" else """
        import shutil
        real = shutil.disk_usage
        shutil.disk_usage = lambda path: real(path)._replace(free=1 << 40)  # 1 TiB "free"
        """
    child = run_child(fake, root)
    assert child.returncode == OSERROR_EXIT, exit_description(child)
    if space_check == "on":
        assert f"not enough free space to prepare {folder}" in child.stderr and "bytes free" in child.stderr
    else:
        assert f"cannot write {folder / 'train.npy'} (3,718,484 bytes needed): No space left on device" \
            in child.stderr, child.stderr
    assert leftovers(tiny_tmpfs) == [] and not (tiny_tmpfs / "meta.json").exists()


# --- concurrent preparation -----------------------------------------------------------------------

def digest_of(corpus) -> str:
    digest = hashlib.sha256("\n".join(corpus.vocab).encode())
    for split in SPLITS:
        digest.update(np.ascontiguousarray(getattr(corpus, split)).tobytes())
    return digest.hexdigest()


def prepare_at_once(root: Path, barrier, results, rank: int) -> None:
    """One of several processes: wait for all, prepare, report (rank, digest or traceback)."""
    try:
        barrier.wait(timeout=60)
        results.put((rank, "ok", digest_of(prepare("ptb", root, MIRROR))))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


@needs_mirror
def test_processes_preparing_one_fresh_root_at_once_take_turns(tmp_path):
    # Every rank of torchrun prepares the data root at once. With a shared temporary name they
    # truncated and renamed each other's files (4 of 6 trials crashed); under the lock they take
    # turns, the later ones reuse the prepared folder, and all see the same arrays.
    root, n = tmp_path / "root", 6
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(n), context.Queue()
    processes = [context.Process(target=prepare_at_once, args=(root, barrier, results, rank)) for rank in range(n)]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=240) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    errors = [text for _, status, text in outcomes if status != "ok"]
    assert errors == [], "\n".join(errors)
    assert len({text for _, _, text in outcomes}) == 1  # identical arrays and vocabulary in every process
    assert [p.exitcode for p in processes] == [0] * n
    assert digest_of(prepare("ptb", root)) == outcomes[0][2]
    assert leftovers(root / "ptb") == [] and leftovers(root / "ptb" / "prepared") == []


# --- prepared arrays changed after the fact -------------------------------------------------------

def flip_one_token(path: Path, n: int, vocab_size: int) -> None:
    """Change token 1000 of the int32 .npy at ``path`` in place (same size, same inode)."""
    offset = path.stat().st_size - 4 * n + 4 * 1000
    with open(path, "r+b") as file:
        file.seek(offset)
        token = int.from_bytes(file.read(4), "little")
        file.seek(offset)
        file.write(((token + 1) % vocab_size).to_bytes(4, "little"))


@needs_mirror
@pytest.mark.parametrize("damage", ["one token flipped in place", "truncated to 0 bytes"])
def test_a_damaged_prepared_array_is_reported_and_rebuilt(tmp_path, capsys, damage):
    # An edited train.npy was used silently (a model trained on other data than it reports), and an
    # empty one crashed with EOFError; both must be caught against meta.json and rebuilt.
    root = tmp_path / "root"
    corpus = prepare("ptb", root, MIRROR)
    pristine = {s: np.array(getattr(corpus, s)) for s in SPLITS}
    vocab = corpus.vocab
    del corpus  # its memmaps
    capsys.readouterr()
    train = root / "ptb" / "prepared" / "train.npy"
    if damage == "truncated to 0 bytes":
        train.write_bytes(b"")
        what = f"{train}: 0 bytes, meta.json records 3,718,484; rebuilding"
    else:
        flip_one_token(train, PTB_TOKENS["train"], len(vocab))
        assert not np.array_equal(np.load(train, mmap_mode="r"), pristine["train"])  # really damaged
        what = f"{train}: sha256 differs from meta.json; rebuilding"
    corpus = prepare("ptb", root)
    for split in SPLITS:
        assert np.array_equal(getattr(corpus, split), pristine[split]), split
    assert corpus.vocab == vocab
    assert what in capsys.readouterr().err
    prepare("ptb", root)  # rebuilt and recorded: reused from now on, quietly
    assert capsys.readouterr().err == ""


@needs_mirror
def test_a_read_only_data_root_is_read_without_the_lock(tmp_path, monkeypatch):
    # A shared, already prepared, read-only data root (a cluster's dataset folder): the lock file cannot
    # be created there, and preparing must still return the corpus.
    import deq.data.corpus as corpus_module

    expected = digest_of(prepare("ptb", tmp_path, MIRROR))

    def read_only(path, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(corpus_module, "exclusive_lock", read_only)
    assert digest_of(prepare("ptb", tmp_path, MIRROR)) == expected

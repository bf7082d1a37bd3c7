"""Output files are never half-written."""

import pytest

from deq.io import atomic_write_text


def test_atomic_write_creates_folders_and_leaves_no_temporary(tmp_path):
    # A rule's output must appear complete under its final name, with nothing beside it.
    target = tmp_path / "results" / "benchmarks" / "table.csv"
    atomic_write_text(target, "a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    # If writing fails midway, the last complete version must survive (Snakemake would otherwise
    # see a truncated output as up to date).
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(TypeError):
        atomic_write_text(target, object())  # not text: the write itself raises
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_exclusive_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    # Two processes on one folder must not both proceed; the refusal says who holds it.
    import multiprocessing as mp

    from deq.io import LockedError, exclusive_lock

    lock = tmp_path / ".lock"
    ready, release = mp.Event(), mp.Event()
    holder = mp.get_context("fork").Process(target=_hold, args=(lock, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LockedError, match=rf"pid {holder.pid}\b.*{lock.name}"):
            with exclusive_lock(lock, wait=False):
                pass
    finally:
        release.set()
        holder.join(30)
    with exclusive_lock(lock, wait=False):  # released when the holder let go
        pass


def _hold(lock, ready, release):
    from deq.io import exclusive_lock

    with exclusive_lock(lock):
        ready.set()
        release.wait(30)

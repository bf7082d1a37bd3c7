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

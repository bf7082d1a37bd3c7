"""deq/report/readme.py: README's Performance numbers are the committed reference CSVs, rendered by one command."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from deq.report import readme

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / readme.REFERENCE


@pytest.fixture(scope="module")
def blocks() -> dict[str, str]:
    return readme.render_blocks(REFERENCE)


def test_readme_equals_the_generator(blocks):
    # Every measured number of the Performance section is rendered from a committed CSV; a number typed
    # into the README (or a CSV remeasured without rerendering) would leave the two apart.
    text = (ROOT / "README.md").read_text()
    assert readme.stale_blocks(text, blocks) == [], "rerun: python -m deq.report.readme (make readme)"


def test_a_number_edited_by_hand_is_named_and_rerendered(blocks, tmp_path, capsys):
    # --check must fail on a hand edit and say which block; rendering again restores the README exactly.
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- depth:start -->")
    digit = re.compile(r"\d").search(text, start).start()
    edited = text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1:]
    path = tmp_path / "README.md"
    path.write_text(edited)
    assert readme.main(["--check", "--readme", str(path)]) == 1
    assert "stale generated block(s) ['depth']" in capsys.readouterr().err
    assert readme.main(["--readme", str(path)]) == 0
    assert path.read_text() == readme.rewrite(text, blocks)


def test_every_block_must_be_marked_once(blocks):
    # A deleted or doubled marker would silently stop a block from being checked.
    text = (ROOT / "README.md").read_text()
    without = re.sub(r"<!-- runtime:start -->.*?<!-- runtime:end -->", "", text, flags=re.S)
    with pytest.raises(ValueError, match=r"missing \['runtime'\]"):
        readme.rewrite(without, blocks)
    with pytest.raises(ValueError, match=r"repeated \['runtime'\]"):
        readme.rewrite(text + "\n" + blocks["runtime"], blocks)


@pytest.mark.parametrize("csv, column", [("depth", "total_bytes"), ("solvers", "round_walls_ms"),
                                         ("memory_paper", "fit_error")])
def test_a_csv_missing_a_column_is_refused_naming_it(tmp_path, csv, column):
    # A benchmark that renames a column must fail the README's rendering loudly, not render blanks.
    shutil.copytree(REFERENCE, tmp_path, dirs_exist_ok=True)
    pd.read_csv(REFERENCE / f"{csv}.csv").drop(columns=[column]).to_csv(tmp_path / f"{csv}.csv", index=False)
    with pytest.raises(ValueError, match=rf"{csv}\.csv lacks column\(s\) \['{column}'\] .* remake it with: "):
        readme.render_blocks(tmp_path)


@pytest.mark.parametrize("name", readme.BENCHMARKS)
def test_each_reference_csv_says_when_where_and_how_it_was_measured(name):
    # A committed measurement is only as good as what it can be traced to: date, revision, libraries,
    # machine and the exact command (which `measure` reruns).
    frame = pd.read_csv(REFERENCE / f"{name}.csv", dtype=str)
    for column in readme.PROVENANCE:
        assert column in frame and frame[column].notna().all() and frame[column].nunique() == 1, column
    row = frame.iloc[0]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row.date) and re.fullmatch(r"[0-9a-f]{7,40}", row.revision)
    assert row.command == " ".join(readme.bench_command(name)) == f"python -m deq.bench {name} --preset cpu"
    assert float(row.wall_s) > 0 and row.torch and row.machine


def test_the_paper_width_csv_says_when_where_and_how_it_was_measured():
    # README renders it too (make paper-memory writes it with the benchmark's own provenance columns).
    frame = pd.read_csv(REFERENCE / "memory_paper.csv", dtype=str)
    for column in ("date", "revision", "torch", "device", "command", "method"):
        assert column in frame and frame[column].notna().all() and frame[column].nunique() == 1, column


def test_a_revision_of_digits_only_is_rendered_as_written(tmp_path):
    # A short hash can be all digits, with a leading zero: read as a number it would lose it in the README.
    shutil.copytree(REFERENCE, tmp_path, dirs_exist_ok=True)
    frame = pd.read_csv(REFERENCE / "lean_widths.csv", dtype=str).assign(revision="0123456")
    frame.to_csv(tmp_path / "lean_widths.csv", index=False)
    assert "revision 0123456," in readme.render_blocks(tmp_path)["lean-widths"]


def test_provenance_is_complete_or_refused():
    fields = readme.provenance(ROOT, readme.bench_command("depth"), 12.34)
    assert tuple(fields) == readme.PROVENANCE and fields["wall_s"] == 12.3
    stamped = readme.with_provenance(pd.DataFrame({"x": [1, 2]}), fields)
    assert (stamped.command == "python -m deq.bench depth --preset cpu").all()
    with pytest.raises(ValueError, match=r"provenance lacks \['wall_s'\]"):
        readme.with_provenance(pd.DataFrame({"x": [1]}), {k: v for k, v in fields.items() if k != "wall_s"})
    with pytest.raises(ValueError, match=r"unknown benchmark 'speed'; choose from \['solvers', 'memory'"):
        readme.bench_command("speed")


def test_a_missing_csv_is_refused_naming_the_command_that_makes_it(tmp_path):
    shutil.copytree(REFERENCE, tmp_path, dirs_exist_ok=True)
    (tmp_path / "runtime.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"runtime\.csv is missing; make it with: python -m deq\.report\.readme "
                                                r"measure runtime"):
        readme.render_blocks(tmp_path)


def test_the_generator_reads_csvs_not_the_benchmarks():
    # The benchmarks and the row registry are rewritten freely as long as their CSV columns stay: the
    # generator must import neither them nor torch, only pandas and the CSVs (so it also runs fast).
    code = "import sys, deq.report.readme; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    imported = out.stdout.split()
    assert not [m for m in imported if m.startswith(("torch", "deq.bench", "deq.models", "deq.rows", "baselines"))]


def test_timing_the_quickstart_records_each_command_and_stops_at_a_failure(tmp_path, monkeypatch):
    # `time` runs the README's commands in a fresh clone: each row is one command with its wall time and
    # pytest's count of passed tests; a failing command names itself and its log, and writes nothing.
    monkeypatch.setattr(readme, "QUICKSTART", ("echo 3 failed, 12 passed in 1s", "git status --short"))
    out = tmp_path / "out"
    out.mkdir()
    frame = pd.read_csv(readme.time_quickstart(parent=tmp_path, out_dir=out), dtype=readme.TEXT)
    assert list(frame.command) == ["echo 3 failed, 12 passed in 1s", "git status --short"]
    assert frame.passed.iloc[0] == 12 and pd.isna(frame.passed.iloc[1])
    assert (frame.wall_s >= 0).all() and set(readme.PROVENANCE) <= set(frame.columns)
    assert not frame.revision.str.endswith("+dirty").any()  # a fresh clone of HEAD, its logs untracked
    monkeypatch.setattr(readme, "QUICKSTART", ("true", "exit 3"))
    (out / "quickstart.csv").unlink()
    with pytest.raises(RuntimeError, match=r"`exit 3` failed \(exit 3\)"):
        readme.time_quickstart(parent=tmp_path, out_dir=out)
    assert not (out / "quickstart.csv").exists()

"""deq.provenance: the revision a measurement names."""

import subprocess

from deq.provenance import revision


def test_revision_is_dirty_for_changed_code_but_not_for_rewritten_results(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "table.csv").write_text("a\n1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    clean = revision(tmp_path)
    assert len(clean) >= 7 and not clean.endswith("+dirty")
    (tmp_path / "results" / "table.csv").write_text("a\n2\n")  # a command rewrote its committed output
    assert revision(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert revision(tmp_path) == clean + "+dirty"

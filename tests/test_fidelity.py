"""docs/fidelity.md: its measured effects come from the committed CSV, which the code reproduces, and
every test it names as pinning a behaviour exists."""

import re
from pathlib import Path

import pandas as pd
import pytest

from deq.report.fidelity import CSV, DOC, EFFECTS, END, START, measure, render_table

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_effects_are_what_the_code_measures_now():
    # A change to a solver, a cell or the driver that moves an effect must be re-measured
    # (python -m deq.report.fidelity), not left standing in the docs.
    committed = pd.read_csv(ROOT / CSV).set_index("key")["value"]
    assert list(committed.index) == list(EFFECTS)
    for key, value in measure().items():
        assert committed[key] == pytest.approx(value, rel=1e-6), key


def test_the_page_shows_the_committed_csv():
    text = (ROOT / DOC).read_text()
    shown = START + text.split(START, 1)[1].split(END, 1)[0] + END
    assert shown == render_table(pd.read_csv(ROOT / CSV)), "rerun: python -m deq.report.fidelity"


def test_every_test_the_page_names_exists():
    # "pinned by" must point at a real test: a renamed or deleted test would leave a claim unguarded.
    text = (ROOT / DOC).read_text()
    named = set(re.findall(r"`(tests/test_\w+\.py)::(\w+)`", text))
    assert len(named) >= 12
    for path, name in named:
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{path}::{name}"
    for path in set(re.findall(r"`(tests/test_\w+\.py)`", text)):
        assert (ROOT / path).exists(), path

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


def test_the_v1_cosine_offset_the_page_quotes_is_the_schedules():
    # The official v1 DEQ-Transformer cosine counts from step 0; ours from the end of warm-up. At the end
    # of the 16k warm-up steps of 300k the official rate is the page's fraction of ours.
    import math

    from deq.engine.config import TrainConfig
    from deq.train import lr_lambda

    config = TrainConfig("wt103-deq-transformer-medium", max_steps=300_000, warmup_steps=16_000, lr=2.5e-4)
    ours = lr_lambda(config)(16_000)
    official = 0.5 * (1 + math.cos(math.pi * 16_000 / 300_000))
    assert f"({official / ours:.3f}x the\n  rate at 16k steps)" in (ROOT / DOC).read_text()

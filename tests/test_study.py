"""The study plan (deq/study.py): what each preset trains, each run a valid config, the rest said why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deq.engine.config import lm_row
from deq.presets import PRESETS
from deq.rows.configs import COPY_CONFIGS, CONFIGS
from deq.rows.params import count_config
from deq.study import FIGURE2_RUNS, PAIR, dataset_of, not_trained, size_sweep, study


@pytest.mark.parametrize("preset", ["smoke", "paper"])
def test_smoke_and_paper_train_every_row_of_tables_1_to_3(preset):
    runs = study(preset)
    assert list(runs) == [*COPY_CONFIGS, *CONFIGS] and not_trained(preset) == {}
    for name, run in runs.items():
        assert run.config.model == run.row == name and run.config.preset == preset
        assert run.table == (1 if name in COPY_CONFIGS else CONFIGS[name].paper_table)


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_paper_runs_read_their_tables_corpus_and_smaller_presets_ptb_for_wikitext_103(preset):
    # The corpus is in each row's name (Table 2: ptb-*, Table 3: wt103-*); only the paper preset can
    # afford WikiText-103, the others read Penn Treebank in its place; copy memory is generated.
    for name, run in study(preset).items():
        family = run.row.split("-")[0]
        expected = {"copy": None, "ptb": "ptb", "wt103": "wikitext-103" if preset == "paper" else "ptb"}[family]
        assert dataset_of(run) == expected, (preset, name)


def test_cpu_trains_the_pair_at_every_width_and_says_why_it_trains_nothing_else():
    runs, widths = study("cpu"), PRESETS["cpu"].training.widths
    assert [run.row for run in runs.values()] == [*PAIR] * len(widths)
    assert set(runs) == {name if width == 128 else f"{name}-w{width}" for width in widths for name in PAIR}
    for name, run in runs.items():  # each run's model is at the width its name says (no suffix: 128)
        width = re.search(r"-w(\d+)$", name)
        assert lm_row(run.config).d_model == (int(width[1]) if width else 128), name
    reasons = not_trained("cpu")
    assert set(reasons) == (set(COPY_CONFIGS) | set(CONFIGS)) - set(PAIR)
    assert all(why.startswith("not trained at preset cpu") for why in reasons.values())
    # The paper's budgets, by hand: copy memory 50 epochs of 20,000 sequences in batches of 32 of T + 20 =
    # 420 symbols; the official WikiText-103 scripts 300,000 steps (TrellisNet: batch 49 x 100 tokens).
    assert "31,250 steps of 32 sequences of 420 symbols" in reasons["copy-lstm"]
    assert "300,000 steps of 49 x 100 tokens" in reasons["wt103-deq-trellisnet"]
    assert "300,000 steps of 56 x 150 tokens" in reasons["wt103-deq-transformer-medium"]


@pytest.mark.parametrize("width", PRESETS["cpu"].training.widths)
def test_each_cpu_pair_is_one_cell_with_equal_parameters_at_its_width(width):
    # Same cell, same parameters: the DEQ and its weight-tied stack differ only in the driver.
    deq, tied = (next(r for r in study("cpu").values() if r.row == name and (r.config.width or 128) == width)
                 for name in PAIR)
    deq_row, tied_row = lm_row(deq.config), lm_row(tied.config)
    assert deq_row.cell == tied_row.cell and deq_row.d_model == width
    assert count_config(deq_row) == count_config(tied_row)
    assert (deq_row.driver, tied_row.driver, tied_row.n_layer) == ("deq", "weight_tied", 16)
    assert deq_row.mem_len == tied_row.mem_len == 0 and deq.config.max_steps == tied.config.max_steps


def test_deq_runs_pretrain_for_part_of_their_budget_and_explicit_runs_not_at_all():
    for preset in ("smoke", "cpu"):
        for name, run in study(preset).items():
            if CONFIGS.get(run.row) is not None and CONFIGS[run.row].driver == "deq":
                assert 0 < run.config.pretrain_steps < run.config.max_steps, (preset, name)
            elif run.row in CONFIGS:
                assert run.config.pretrain_steps is None, (preset, name)


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_figure_runs_exist_and_keep_an_early_checkpoint_after_pretraining(preset):
    runs = study(preset)
    assert PRESETS[preset].evaluation.figure3_run in runs and CONFIGS[runs[PRESETS[preset].evaluation.figure3_run].row].driver == "deq"
    deq_run = runs[FIGURE2_RUNS[0]]
    pretrain = deq_run.config.pretrain_steps or CONFIGS[FIGURE2_RUNS[0]].pretrain_steps
    for name in FIGURE2_RUNS:
        run = runs[name]
        assert run.early_step in run.config.keep_steps and pretrain < run.early_step < run.config.max_steps


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_size_sweep_pairs_a_deq_with_its_explicit_counterpart_at_two_sizes_per_family(preset):
    runs, points = study(preset), size_sweep(preset)
    families = {family for family, *_ in points}
    assert all(sum(family == f for f, *_ in points) == 2 for family in families)
    for _, _, deq_run, explicit_run in points:
        deq, explicit = CONFIGS[runs[deq_run].row], CONFIGS[runs[explicit_run].row]
        assert deq.driver == "deq" != explicit.driver and deq.family == explicit.family


def test_unknown_preset_names_the_allowed_ones():
    for function in (study, size_sweep):
        with pytest.raises(ValueError, match=r"'huge'.*\['smoke', 'cpu', 'paper'\]"):
            function("huge")


def test_official_code_reaches_every_lm_run_and_its_model():
    # config key official_code: v2 must give the DEQ-Transformers v2's solver in the runs that train them
    # (and say so in the run's config); nothing else changes; a bad value fails before any work.
    from deq.engine.config import TrainConfig

    v1, v2 = study("smoke"), study("smoke", official_code="v2")
    for name, row in CONFIGS.items():
        assert v1[name].config.official_code == "v1" and v2[name].config.official_code == "v2"
        solver = lm_row(v2[name].config).solver
        if row.driver == "deq":
            assert solver.code == ("v2" if row.family == "transformer" else "v1"), name
            assert lm_row(v1[name].config).solver.code == "v1"
        else:
            assert solver is None
    with pytest.raises(ValueError, match=r"unknown official_code 'v3'; choose from \['v1', 'v2'\]"):
        TrainConfig(model="ptb-deq-trellisnet", official_code="v3")


def test_the_config_schema_offers_exactly_the_presets():
    # The schema rejects a bad preset before any work (its error lists the allowed ones); it must allow
    # every preset deq/presets.py defines, and no other.
    import yaml

    from deq.rows.lm_config import PRESETS as ROW_PRESETS

    with open(Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml") as file:
        enum = yaml.safe_load(file)["properties"]["preset"]["enum"]
    assert enum == list(PRESETS) == list(ROW_PRESETS)
    assert all(name == record.name for name, record in PRESETS.items())

"""The study plan (deq/study.py): one run per row of Tables 1-3 at every preset, each a valid config."""

from __future__ import annotations

import pytest

from deq.models.configs import COPY_CONFIGS, CONFIGS
from deq.study import FIGURE2_RUNS, FIGURE3_RUN, STAND_IN, dataset_of, study


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_every_row_of_tables_1_to_3_has_one_run(preset):
    runs = study(preset)
    assert list(runs) == [*COPY_CONFIGS, *CONFIGS]
    for name, run in runs.items():
        assert run.config.model == name and run.config.preset == preset
        assert run.table == (1 if name in COPY_CONFIGS else CONFIGS[name].paper_table)


def test_cpu_preset_keeps_the_paper_task_definition_of_table_1_and_stands_in_for_wikitext_103():
    runs = study("cpu")
    for name in COPY_CONFIGS:
        assert runs[name].config.copy_T == 400 and runs[name].config.copy_n_train == 20_000
    for name, row in CONFIGS.items():
        assert dataset_of(runs[name]) == STAND_IN.get(row.dataset, row.dataset)
    assert all(dataset_of(run) == CONFIGS[name].dataset for name, run in study("paper").items() if name in CONFIGS)


def test_deq_runs_pretrain_for_part_of_their_budget_and_explicit_runs_not_at_all():
    for preset in ("smoke", "cpu"):
        for name, run in study(preset).items():
            if name in CONFIGS and CONFIGS[name].driver == "deq":
                assert 0 < run.config.pretrain_steps < run.config.max_steps, (preset, name)


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_figure_runs_exist_and_keep_an_early_checkpoint_after_pretraining(preset):
    runs = study(preset)
    assert FIGURE3_RUN in runs and CONFIGS[FIGURE3_RUN].driver == "deq"
    deq_run = runs[FIGURE2_RUNS[0]]
    pretrain = deq_run.config.pretrain_steps or CONFIGS[FIGURE2_RUNS[0]].pretrain_steps
    for name in FIGURE2_RUNS:
        run = runs[name]
        assert run.early_step in run.config.keep_steps and pretrain < run.early_step < run.config.max_steps


def test_unknown_preset_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'huge'.*\['smoke', 'cpu', 'paper'\]"):
        study("huge")


def test_official_code_reaches_every_lm_run_and_its_model():
    # config key official_code: v2 must give the DEQ-Transformers v2's solver in the runs that train them
    # (and say so in the run's config); nothing else changes; a bad value fails before any work.
    from deq.engine.config import TrainConfig, lm_row

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

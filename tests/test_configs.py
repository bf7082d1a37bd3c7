"""The registry of the paper's word-level rows, its presets, and the parameter counts in docs/params.md."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest
import torch

from deq.rows.build import build_model
from deq.rows.configs import CONFIGS, PRESETS, get_config
from deq.rows.params import count_parameters, measure, render_markdown

PARAMS_MD = Path(__file__).resolve().parents[1] / "docs" / "params.md"
NAMES = list(CONFIGS)

# (table, test ppl, memory GB) of every row of Tables 2-3 that the paper trains itself (PAPER.md).
PAPER_ROWS = sorted([(2, 57.0, 8.5), (2, 57.1, 1.2), (3, 29.2, 24.7), (3, 29.2, 5.2), (3, 29.0, 3.3),
                     (3, 24.3, 8.5), (3, 24.2, 2.7), (3, 23.6, 9.0), (3, 23.2, 3.7), (3, 35.8, 4.8),
                     (3, 34.9, 6.8), (3, 32.4, 1.1)])


@cache
def measured() -> dict:
    return {row.name: row for row in measure()}


@cache
def documented() -> dict[str, tuple[int, int]]:
    """{row: (params, non-embedding)} as printed in docs/params.md's table."""
    counts = {}
    for line in PARAMS_MD.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in CONFIGS:
            counts[cells[0]] = (int(cells[4].replace(",", "")), int(cells[7].replace(",", "")))
    return counts


def test_registry_holds_every_row_the_paper_trains_once():
    # A dropped or duplicated row would leave a hole (or a double) in the reproduced tables without
    # any error; the rows are identified by their reported perplexity and memory.
    assert sorted((c.paper_table, c.paper_ppl, c.paper_memory_gb) for c in CONFIGS.values()) == PAPER_ROWS
    assert all(key == cfg.name for key, cfg in CONFIGS.items())


@pytest.mark.parametrize("name", NAMES)
def test_every_row_builds_at_smoke_preset_and_runs_a_forward(name):
    # Every registered row must be constructible and runnable end to end (embedding, driver, adaptive
    # softmax, auxiliary readouts) before anyone spends GPU hours on its paper-scale version.
    cfg = get_config(name, preset="smoke")
    torch.manual_seed(0)
    model = build_model(cfg)
    tokens, targets = torch.randint(0, cfg.n_token, (2, 2, 6))
    out = model(tokens, targets)
    assert out.nll.shape == (2, 6) and torch.isfinite(out.loss)
    assert (out.aux_loss is not None) == (cfg.aux_every > 0)


@pytest.mark.parametrize("name", NAMES)
def test_documented_counts_equal_the_code(name):
    # docs/params.md is what readers cite; a change to a config or a cell that is not regenerated
    # into it would make the documented counts silently wrong.
    row = measured()[name]
    assert documented()[name] == (row.total, row.non_embedding), "rerun: python -m deq.rows.params"


# The official scripts' models, counted with the paper-time code (locuslab/deq v1, 3fba434, DEQModel/):
# DEQTransformerLM of run_wt103_deq_transformer.sh, DEQTrellisNetLM + SplitCrossEntropyLoss of
# run_wt103_deq_trellisnet.sh. The two rows built from a released script must be those models.
OFFICIAL_COUNTS = {"wt103-deq-transformer-medium-adaptive": 97_691_888, "wt103-deq-trellisnet": 174_168_738}


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_rows_with_an_official_script_count_exactly_what_it_builds(name):
    # A missing head projection, bias or cluster shows up here as a few hundred or thousand parameters.
    assert CONFIGS[name].official_params == OFFICIAL_COUNTS[name]
    assert measured()[name].total == OFFICIAL_COUNTS[name]
    assert {n for n, c in CONFIGS.items() if c.official_params} == set(OFFICIAL_COUNTS)


def test_docs_page_is_exactly_what_the_command_writes():
    # The notes and derivations on the page must also come from the registry, never be typed by hand.
    assert PARAMS_MD.read_text() == render_markdown(list(measured().values())), "rerun: python -m deq.rows.params"


@pytest.mark.parametrize("name", NAMES)
def test_paper_rows_match_the_paper_counts_or_say_why(name):
    # The registry claims to reproduce the paper's models: a row more than 3% off in either count is
    # a different model unless its note explains the gap; a note on a row that matches is stale.
    row = measured()[name]
    assert bool(row.note) != row.within_tolerance, (row.total, row.paper_total, row.non_embedding,
                                                    row.paper_non_embedding, row.note)


@pytest.mark.parametrize("name", NAMES)
def test_paper_scale_models_build_on_the_meta_device(name):
    # Counting 100M+ rows must allocate nothing: every constructor has to honour the default device.
    with torch.device("meta"):
        model = build_model(get_config(name))
    assert all(p.is_meta for p in model.parameters())


def test_tied_weights_count_once_and_non_embedding_is_the_driver():
    # The paper's "non-embedding" column is the network proper; counting the tied softmax weights
    # twice, or leaving projections in the non-embedding part, would shift every comparison.
    model = build_model(get_config("wt103-deq-transformer-medium-adaptive", preset="smoke"))
    total, non_embedding = count_parameters(model)
    every_use = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert total == sum({id(p): p.numel() for p in model.parameters()}.values()) < every_use
    assert non_embedding == sum(p.numel() for p in model.driver.parameters())


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
@pytest.mark.parametrize("name", NAMES)
def test_shrunk_presets_keep_the_row_and_shrink_the_width(name, preset):
    # A smoke or cpu run stands in for its paper row: it must be the same kind of model (family,
    # driver, vocabulary, softmax), only smaller, or its numbers say nothing about the row.
    paper, cfg = get_config(name), get_config(name, preset)
    keep = ("name", "paper_table", "dataset", "n_token", "family", "driver", "cutoffs", "div_val", "checkpoint")
    assert [getattr(cfg, k) for k in keep] == [getattr(paper, k) for k in keep]
    width = {"transformer": 32, "trellis": 16}[cfg.family] if preset == "smoke" else round(paper.d_model * 128 / 500)
    assert cfg.preset == preset and cfg.d_model == width
    assert cfg.n_layer <= paper.n_layer and (cfg.aux_every > 0) == (paper.aux_every > 0)
    if preset == "cpu":  # widths scaled, the paper's depth kept
        assert (cfg.n_layer, cfg.aux_every) == (paper.n_layer, paper.aux_every)


def test_the_memory_benchmarks_pairs_cover_every_row_once():
    # Tables 2-3's reductions come from PAIRS: a row missing there (or named twice) gets no reduction.
    from deq.bench.memory import PAIRS

    named = [n for deq_name, counterparts in PAIRS.items() for n in (deq_name, *counterparts)]
    assert sorted(named) == sorted(CONFIGS)


@pytest.mark.parametrize("width", [64, 128])
def test_cpu_preset_keeps_each_pairs_parameter_ratio(width):
    # One width factor for every row: a DEQ and its explicit counterpart keep the ratio of their
    # non-embedding parameters at the paper's widths (the old rule clipped d_inner and quartered the
    # depth, leaving the medium DEQ-Transformer 26% smaller than its Transformer-XL).
    from deq.bench.memory import PAIRS
    from deq.rows.params import count_config

    for deq_name, counterparts in PAIRS.items():
        for name in counterparts:
            paper = count_config(get_config(deq_name))[1] / count_config(get_config(name))[1]
            cpu = (count_config(get_config(deq_name, "cpu", width=width))[1]
                   / count_config(get_config(name, "cpu", width=width))[1])
            assert cpu == pytest.approx(paper, rel=0.03), (deq_name, name, width)


@pytest.mark.parametrize("name", [n for n in NAMES if CONFIGS[n].aux_every])
def test_cpu_preset_keeps_the_number_of_auxiliary_readouts(name):
    # The auxiliary loss is a sum over readouts (TrellisNet), so the cpu model must make as many
    # readouts as the paper's, and n_aux_readouts must be what the driver actually returns.
    cfg = get_config(name, preset="cpu")
    model = build_model(cfg)
    x = torch.randn(1, 3, cfg.d_model)
    assert len(model.driver(x).aux) == cfg.n_aux_readouts == get_config(name).n_aux_readouts > 0


@pytest.mark.parametrize(("name", "preset", "bad", "allowed"), [
    ("wt103-deq-transfomer-small", "paper", "wt103-deq-transfomer-small", NAMES),
    ("ptb-deq-trellisnet", "gpu", "gpu", PRESETS),
])
def test_unknown_name_or_preset_is_rejected_naming_the_choices(name, preset, bad, allowed):
    # A typo must fail at once, naming the bad value and the allowed ones, not fall back to a default.
    with pytest.raises(ValueError) as error:
        get_config(name, preset)
    assert all(repr(value) in str(error.value) for value in [bad, *allowed])


@pytest.mark.parametrize(("change", "message"), [
    (dict(solver=None), "solver"),  # a DEQ without solver settings
    (dict(family="transformer"), "TransformerCellConfig"),  # family disagrees with the cell
    (dict(dataset="wt2"), "'wt2'"),
    (dict(aux_every=3), "aux_every"),  # auxiliary readouts on a DEQ
    (dict(d_embed=2, div_val=4, cutoffs=(10, 20)), "d_embed"),  # an empty adaptive cluster
    (dict(cutoffs=(5_000, 20_000)), "cutoffs"),  # a cluster beyond the vocabulary
])
def test_inconsistent_rows_are_rejected_at_construction(change, message):
    # Config errors must surface when the row is made, naming the bad value, not deep inside a run.
    with pytest.raises(ValueError, match=re.escape(message)):
        replace(CONFIGS["ptb-deq-trellisnet"], **change)


def test_v1_rows_use_the_official_solver_settings():
    # The paper's numbers came from locuslab/deq v1: run_wt103_deq_transformer.sh (f_thres 30, b_thres 40,
    # subseq_len 75, pretrain_steps 16000) and run_wt103_deq_trellisnet.sh (45, 45, 50) through DEQFunc:
    # Broyden both ways keeping every pair, threshold + 1 evaluations, the whole batch's RMS residual
    # below 1e-6 forward and 2e-10 backward, the same solve at evaluation.
    expected = {"transformer": (31, 41, 75), "trellis": (46, 46, 50)}
    deq_rows = [row for row in CONFIGS.values() if row.driver == "deq"]
    assert len(deq_rows) == 5
    for row in deq_rows:
        s = row.solver
        assert (s.solver, s.backward_solver, s.eval_solver, s.backward) == ("broyden", "broyden", "broyden", "implicit")
        assert (s.max_iter, s.backward_max_iter, s.subseq_len) == expected[row.family], row.name
        assert s.eval_max_iter == s.max_iter and s.eval_tol == s.tol == 1e-6 and s.backward_tol == 2e-10
        assert s.stop_mode == "batch_rms" and s.code == "v1"
        assert not s.solver_options and not s.backward_options, "no bounded Broyden history"
    assert {r.pretrain_steps for r in deq_rows if r.family == "transformer"} == {16_000}
    assert {r.pretrain_steps for r in deq_rows if r.family == "trellis"} == {30_000}


@pytest.mark.parametrize("name", NAMES)
def test_v2_variant_changes_only_the_deq_transformers(name):
    row, v2 = get_config(name), get_config(name, code="v2")
    if row.driver == "deq" and row.family == "transformer":
        s = v2.solver
        assert (s.solver, s.max_iter, s.backward_solver, s.backward_max_iter, s.stop_mode, s.tol, s.backward_tol,
                s.subseq_len, s.code, v2.pretrain_steps) == ("anderson", 30, "broyden", 36, "rel", 1e-3, 1e-3, 0,
                                                             "v2", 32_000)
        assert replace(v2, solver=row.solver, pretrain_steps=row.pretrain_steps) == row
    else:
        assert v2 == row
    with pytest.raises(ValueError, match=r"unknown official code 'v3'; choose from \['v1', 'v2'\]"):
        get_config(name, code="v3")


def test_paper_depth_keeps_the_papers_layers_at_a_smaller_presets_widths():
    # The benchmarks measure the study's widths at the paper's depths (the depth ratio drives memory).
    name, paper = "wt103-transformer-xl-medium-16", get_config("wt103-transformer-xl-medium-16")
    for preset in ("smoke", "cpu"):
        deep, plain = get_config(name, preset, paper_depth=True), get_config(name, preset)
        assert (deep.n_layer, deep.aux_every) == (paper.n_layer, paper.aux_every)
        assert deep == replace(plain, n_layer=paper.n_layer, aux_every=paper.aux_every)
    assert get_config(name, "smoke").n_layer < paper.n_layer

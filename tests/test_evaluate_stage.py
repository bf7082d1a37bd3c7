"""The evaluate stage's analyses on a trained run: convergence curves (Figure 2) and the solver sweep (Figure 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deq.engine.config import config_from_dict
from deq.evaluate import convergence_curve, load_run, solver_sweep
from deq.train import train

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny runs that share a cell: the DEQ-Transformer small and its weight-tied stack."""
    if not (MIRROR / "wikitext-2").is_dir():
        pytest.skip(f"local corpus mirror {MIRROR / 'wikitext-2'} not present")
    root = tmp_path_factory.mktemp("runs")
    tokens = np.random.default_rng(0).integers(0, 33_278, size=4_000).astype(np.int32)
    folders = {}
    for name in ("wt103-deq-transformer-small", "wt103-transformer-xl-small-tied-16"):
        cfg = config_from_dict(dict(model=name, preset="smoke", dataset="wikitext-2", max_steps=2, batch_size=2,
                                    tgt_len=8, pretrain_steps=0 if "deq" in name else None, eval_max_tokens=32,
                                    test_max_tokens=32, eval_batch_size=2, eval_tgt_len=8,
                                    data_root=str(root / "data"), data_mirror=str(MIRROR)))
        train(cfg, root / name)
        folders[name] = root / name
    return folders, torch.as_tensor(tokens, dtype=torch.long)


def test_convergence_curve_has_one_residual_per_evaluation(trained):
    folders, tokens = trained
    for name, folder in folders.items():
        model, cfg, row, step = load_run(folder)
        assert step == 2 and cfg.model == name
        inputs, targets = tokens[:16].view(2, 8), tokens[1:17].view(2, 8)
        curve = convergence_curve(model, inputs, targets, n_evals=7)
        assert len(curve["rel_residual"]) == 7 == len(curve["abs_residual"])
        assert all(r >= 0 for r in curve["rel_residual"])
    # the driver's own settings are back after the measurement
    model, _, row, _ = load_run(folders["wt103-transformer-xl-small-tied-16"])
    convergence_curve(model, inputs, targets, n_evals=7)
    assert model.driver.n_layer == row.n_layer


def test_solver_sweep_tighter_tolerance_never_costs_fewer_evaluations(trained):
    folders, tokens = trained
    model, *_ = load_run(folders["wt103-deq-transformer-small"])
    before = model.driver.settings
    rows = solver_sweep(model, tokens.numpy(), batch_size=2, tgt_len=8, tols=[1e-1, 1e-6], caps=[1, 4], max_tokens=64)
    assert [r["sweep"] for r in rows] == ["tol", "tol", "max_iter", "max_iter"]
    assert all(np.isfinite(r["valid_ppl"]) and r["tokens"] == 64 for r in rows)
    assert rows[0]["mean_nfe"] <= rows[1]["mean_nfe"] and rows[2]["mean_nfe"] <= 1 < rows[3]["mean_nfe"] + 1
    assert model.driver.settings == before


def test_a_diverged_model_has_infinite_perplexity_not_an_error():
    # Right after pretraining a DEQ's evaluation solve can diverge; the run must record that (inf)
    # and go on, not crash in the middle of a long study.
    from types import SimpleNamespace

    from deq.evaluate import perplexity

    class Diverged(torch.nn.Module):
        driver = SimpleNamespace(mem_len=0)

        def forward(self, inputs, targets, memory):
            return SimpleNamespace(nll=torch.full(targets.shape, 1e4), memory=None, info=None)

    assert perplexity(Diverged(), np.arange(50), batch_size=2, tgt_len=8) == float("inf")

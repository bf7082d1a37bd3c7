"""The evaluate stage's analyses on a trained run: convergence curves (Figure 2) and the solver sweep (Figure 3)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from deq.engine.config import config_from_dict
from deq.evaluate import convergence_curve, load_run, solver_sweep
from deq.models.layers import weights_computed_once
from deq.train import train

from conftest import MIRROR, require_mirror



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny runs that share a cell: the DEQ-Transformer small and its weight-tied stack."""
    require_mirror("wikitext-2")
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


def test_convergence_curve_is_the_residual_of_each_evaluation(trained):
    # Figure 2 plots these numbers, so they must be ||f(z_k) - z_k|| (and that over ||f(z_k)||) at the
    # iterates the driver really visits, averaged over the batch, one per evaluation of f.
    folders, tokens = trained
    inputs, targets = tokens[:16].view(2, 8), tokens[1:17].view(2, 8)
    # The weight-tied stack's iterates are z_0 = 0, z_{l+1} = f(z_l): unrolled here by hand in float64.
    # 1e-5 covers float32 rounding through 7 layers (measured: 1e-7); a residual taken at the wrong
    # iterate, a max or a sum over the batch instead of its mean, or rel and abs swapped are off by far more.
    model, cfg, row, step = load_run(folders["wt103-transformer-xl-small-tied-16"])
    assert step == 2 and cfg.model == "wt103-transformer-xl-small-tied-16"
    curve = convergence_curve(model, inputs, targets, n_evals=7)
    reference = copy.deepcopy(model).double()
    cell, rel, abs_ = reference.driver.cell, [], []
    with torch.no_grad(), weights_computed_once(cell):
        injection = cell.inject(reference.embedding(inputs), None)
        z = cell.init_state(injection)
        for _ in range(7):
            fz = cell(z, injection, None)
            residual = (fz - z).flatten(1).norm(dim=1)  # (B,)
            abs_.append(residual.mean().item())
            rel.append((residual / fz.flatten(1).norm(dim=1)).mean().item())
            z = fz
    assert curve["rel_residual"] == pytest.approx(rel, rel=1e-5)
    assert curve["abs_residual"] == pytest.approx(abs_, rel=1e-5)
    assert model.driver.n_layer == row.n_layer  # the driver's own depth is back after the measurement
    # The DEQ starts at z0 = 0, where ||f(0) - 0|| / ||f(0)|| = 1 exactly; its solver (not a stack) must
    # then bring the residual down, and the cap, not the tolerance, ends the curve.
    model, _, row, _ = load_run(folders["wt103-deq-transformer-small"])
    before = model.driver.settings
    curve = convergence_curve(model, inputs, targets, n_evals=7)
    assert len(curve["rel_residual"]) == 7 == len(curve["abs_residual"])
    assert curve["rel_residual"][0] == pytest.approx(1, abs=1e-6)
    assert max(curve["rel_residual"][1:]) < 0.5
    assert model.driver.settings == before


def test_solver_sweep_stops_each_solve_at_the_tolerance_or_the_cap_it_is_given(trained):
    # Figure 3 puts each point at its tolerance or cap, so each must be the one the solves ran with.
    folders, tokens = trained
    model, *_ = load_run(folders["wt103-deq-transformer-small"])
    before = model.driver.settings
    tol, cap = before.eval_tol, before.eval_max_iter  # 1e-6 and 4 at the smoke preset
    rows = solver_sweep(model, tokens.numpy(), batch_size=2, tgt_len=8, tols=[1e3, tol], caps=[1, cap], max_tokens=64)
    assert [(r["sweep"], r["tol"], r["max_iter"]) for r in rows] == [
        ("tol", 1e3, cap), ("tol", tol, cap), ("max_iter", tol, 1), ("max_iter", tol, cap)]
    assert all(r["tokens"] == 64 for r in rows)
    # Counted by hand: the solve starts at z0 = 0, whose residual is the RMS of f(0), about 1 after the
    # cell's layer norm: a tolerance of 1e3 is met at the first evaluation; 1e-6 is not met by a model
    # trained for 2 steps within the cap, so it runs to it (every segment's solve, hence the mean).
    assert [r["mean_nfe"] for r in rows] == [1, cap, 1, cap]
    # A solve stopped after one evaluation by the tolerance and one stopped by a cap of 1 both return
    # z0: the same perplexity by two routes; the same point twice gives the same number; and the cap
    # changes the answer (else the sweep would show nothing).
    assert rows[0]["valid_ppl"] == rows[2]["valid_ppl"] != rows[1]["valid_ppl"] == rows[3]["valid_ppl"]
    assert all(np.isfinite(r["valid_ppl"]) for r in rows)
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

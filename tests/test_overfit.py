"""Each model family can fit one small batch: the cheapest end-to-end check that training works."""

import math

import pytest
import torch

from deq.models.cell_configs import TransformerCellConfig, TrellisCellConfig
from deq.models.drivers import DEQDriver
from deq.models.lm import LanguageModel
from deq.models.transformer import TransformerCell
from deq.models.trellis import TrellisCell
from deq.settings import SolverSettings

V, D = 50, 32


def cell(family):
    if family == "transformer":
        return TransformerCell(TransformerCellConfig(d_model=D, n_head=4, d_head=8, d_inner=64, dropout=0.0,
                                                     init_std=0.1))
    return TrellisCell(TrellisCellConfig(d_embed=D, d_hidden=48, d_out=D, dropout=0.0, init_std=0.1))


@pytest.mark.parametrize("family", ["transformer", "trellis"])
def test_fifty_steps_fit_one_batch(family):
    # Each sequence counts up by one (mod V) from a random start, so the next token is a function of
    # the current one, while any predictor that ignores its input stays at ln(V) (starts are random,
    # so every token is equally likely). Getting below half of ln(V) in 50 Adam steps needs the
    # input to reach the output through the equilibrium and the implicit gradient to train it.
    # Measured at this seed: transformer 0.32, trellis 0.81, against a threshold of 1.96 (div_val 1: no
    # adaptive projections, which slow this tiny fit and are not what it tests).
    torch.manual_seed(0)
    settings = SolverSettings(solver="anderson", tol=1e-3, max_iter=20, backward_solver="broyden",
                              backward_tol=1e-4, backward_max_iter=20)
    model = LanguageModel(V, D, D, DEQDriver(cell(family), settings, mem_len=8), cutoffs=(10,), div_val=1,
                          init_std=0.1)
    tokens = (torch.randint(0, V, (4, 1)) + torch.arange(17)) % V  # (4, 17)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        loss = model(inputs, targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * math.log(V), loss.item()

"""Explicit-depth baselines for the DEQ comparisons.

Drivers (weight-tied and untied stacks) of the same cells the DEQ solves to equilibrium, with their
configs: the weight-tied baseline applies one cell ``n_layer`` times, the untied baseline stacks
``n_layer`` cells. Built by the models issue. This package never holds a second copy of a cell.
"""

"""Cells (one per architecture), the DEQ driver and the language-model wrapper.

The explicit drivers of the same cells live in ``baselines/``.
"""

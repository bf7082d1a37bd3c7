"""The paper's rows: their type, their data, the presets that scale them, their parameter counts, and
how each becomes a model.

- :mod:`deq.rows.lm_config`: :class:`LMConfig`, one word-level row (Tables 2-3), checked on creation.
- :mod:`deq.rows.paper_configs`: the rows as the paper (and the official code) set them.
- :mod:`deq.rows.configs`: the registry the rest of the project reads (:data:`CONFIGS`, :func:`get_config`
  at a preset, Table 1's :data:`COPY_CONFIGS`). Torch-free, like the two above.
- :mod:`deq.rows.build`: a row's model (torch).
- :mod:`deq.rows.params`: measured parameter counts beside the paper's (``docs/params.md``).
"""

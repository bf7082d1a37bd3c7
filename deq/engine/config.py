"""The training run's configuration: one YAML file in, one typed, validated record out.

``python -m deq.train --config run.yaml --out runs/x`` reads the YAML with :func:`load_config`.
Every key is a field below (unknown keys are errors, naming the key and the allowed ones), and every
value is checked against the field's type before anything else (``lr: 1e-3`` and ``lr: 1.0e30``, which
YAML 1.1 reads as strings, are refused naming the key and the spelling it reads as a number; ``max_steps: 2.5`` and ``bf16: banana`` likewise); the
model itself is a named row of :mod:`deq.rows.configs` at a preset, so the YAML never restates
architecture. The resolved config is saved in the run folder and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from deq.rows.configs import COPY_CONFIGS, CONFIGS, DATASETS, PRESETS, LMConfig, get_config, on_dataset
from deq.rows.paper_configs import CODES

RUN_DATASETS = (*DATASETS, "copy-memory")


@dataclass(frozen=True)
class TrainConfig:
    model: str  # a row of deq.rows.configs.CONFIGS (language models) or COPY_CONFIGS (copy memory)
    preset: str = "cpu"  # scale of the model row: 'smoke', 'cpu' or 'paper'
    official_code: str = "v1"  # DEQ solver settings of the official code: 'v1' (the paper's) or 'v2'
    lean: bool = False  # DEQ rows: those settings in the lean memory mode (deq.settings.LEAN; README)
    dataset: str | None = None  # corpus; None: the row's own (copy-memory rows: 'copy-memory')
    width: int | None = None  # cpu preset only: the width of the 500-wide rows (None: 128; deq.rows.configs)
    data_root: str = "data"  # where datasets are downloaded and prepared
    data_mirror: str | None = None  # local mirror <mirror>/<dataset>/<files>; env DEQ_DATA_MIRROR if None
    seed: int = 0  # seeds torch, numpy and random; 0 <= seed < 2**32 (numpy's range)
    max_steps: int = 100  # optimiser steps
    batch_size: int = 16  # sequences per optimiser step (global, over all processes)
    grad_accum: int = 1  # micro-batches per step; batch_size must divide by grad_accum * world size
    tgt_len: int = 64  # tokens per training segment (language models)
    lr: float = 2.5e-4  # peak learning rate (Adam)
    warmup_steps: int = 0  # linear warm-up steps, then cosine decay to min_lr at max_steps
    min_lr: float = 0.0  # learning rate at the end of the cosine
    clip: float = 0.25  # gradient-norm clipping (0: off)
    pretrain_steps: int | None = None  # DEQ rows: steps run as the weight-tied stack; None: the row's
    eval_batch_size: int = 10  # streams at evaluation
    eval_tgt_len: int = 64  # tokens per evaluation segment
    mem_len: int | None = None  # segment memory (states kept from the previous segment); None: the row's mem_len
    eval_mem_len: int | None = None  # memory at evaluation; None: mem_len
    eval_every: int = 0  # validation every N steps (0: only at the end)
    eval_max_tokens: int | None = None  # cap on validation tokens per evaluation (None: the whole split)
    test_max_tokens: int | None = None  # cap on test tokens (None: the whole split, the paper's metric)
    log_every: int = 1  # metrics line every N steps
    trace_every: int = 10  # solver convergence traces every N steps (and at the first and last step)
    checkpoint_every: int = 50  # checkpoint every N steps (and at the end)
    keep_steps: tuple[int, ...] = ()  # steps whose checkpoint is also kept as checkpoint-step<N>.pt
    copy_T: int = 400  # copy memory: the blank length T (sequence length T + 20)
    copy_n_train: int = 20_000  # copy memory: training sequences
    copy_n_test: int = 2_000  # copy memory: test sequences
    bf16: bool = False  # bf16 autocast (CUDA only; ignored on CPU)
    device: str = "auto"  # 'auto' (CUDA when available, else CPU), 'cpu' or 'cuda'

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = _typed(field.name, getattr(self, field.name), _FIELD_TYPES[field.name])
            object.__setattr__(self, field.name, value)
        if self.model not in CONFIGS and self.model not in COPY_CONFIGS:
            raise ValueError(f"unknown model {self.model!r}; choose from {sorted([*CONFIGS, *COPY_CONFIGS])}")
        _choice("preset", self.preset, PRESETS)
        _choice("official_code", self.official_code, CODES)
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        if self.width is not None and (self.preset != "cpu" or self.is_copy_memory or isinstance(self.width, bool)
                                       or not isinstance(self.width, int) or self.width < 8):
            raise ValueError(f"width is set only for a language model at preset 'cpu', as an int >= 8; got "
                             f"width={self.width!r}, preset={self.preset!r}, model={self.model!r}")
        if self.dataset is not None:
            allowed = ("copy-memory",) if self.is_copy_memory else tuple(DATASETS)
            _choice("dataset", self.dataset, allowed)
        for name in ("max_steps", "batch_size", "grad_accum", "tgt_len", "eval_batch_size", "eval_tgt_len",
                     "log_every", "trace_every", "checkpoint_every", "copy_T", "copy_n_train", "copy_n_test"):
            _at_least(name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_every", "seed"):
            _at_least(name, getattr(self, name), 0)
        for name in ("pretrain_steps", "mem_len", "eval_mem_len", "eval_max_tokens", "test_max_tokens"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 0)
        if not isinstance(self.keep_steps, (list, tuple)) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= self.max_steps for s in self.keep_steps):
            raise ValueError(f"keep_steps must be a list of steps in [1, max_steps={self.max_steps}], "
                             f"got keep_steps={self.keep_steps!r}")
        object.__setattr__(self, "keep_steps", tuple(self.keep_steps))  # YAML gives a list
        if self.seed >= 2**32:
            raise ValueError(f"seed must be < 2**32 = {2**32} (numpy's seed range), got seed={self.seed!r}")
        for name in ("lr", "min_lr", "clip"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {name}={getattr(self, name)!r}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr!r}, min_lr={self.min_lr!r}")
        if self.clip < 0:
            raise ValueError(f"clip must be >= 0, got clip={self.clip!r}")
        if self.lean and (self.is_copy_memory or CONFIGS[self.model].driver != "deq"):
            raise ValueError(f"lean is a DEQ's solver mode; model {self.model!r} is not a DEQ language model "
                             f"(DEQ rows: {sorted(n for n, r in CONFIGS.items() if r.driver == 'deq')})")

    @property
    def is_copy_memory(self) -> bool:
        return self.model in COPY_CONFIGS


_FIELD_TYPES = typing.get_type_hints(TrainConfig)


def _typed(name: str, value: object, hint) -> object:
    """``value`` if it has the field's type (an int where a float is due becomes a float); else a
    ``ValueError`` naming the key, the value and the type allowed."""
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None and optional:
        return None
    if typing.get_origin(base) is tuple:  # keep_steps: checked with its bounds in __post_init__
        return value
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    allowed = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[base]
    hint_text = ""
    if isinstance(value, str) and base in (int, float):
        try:
            hint_text = f" (YAML 1.1 reads a number as text unless its mantissa has a dot and its exponent a sign: " \
                        f"write {_yaml_number(float(value), base)})"
        except ValueError:
            pass
    return _refuse(name, value, allowed + (" or null" if optional else "") + hint_text)


def _yaml_number(x: float, kind: type) -> str:
    """``x`` spelled so that YAML 1.1 (PyYAML) reads it as a ``kind``: 1000, 0.001, 1.0e+30."""
    if kind is int and x.is_integer():
        return str(int(x))
    text = repr(x)
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}{e}{exponent}" if e else text


def _refuse(name: str, value: object, allowed: str):
    raise ValueError(f"{name} must be {allowed}, got {name}={value!r} ({type(value).__name__})")


def _choice(name: str, value: object, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose from {list(allowed)}")


def _at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {name}={value!r}")


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a run's YAML; unknown keys raise ``ValueError`` naming them."""
    with open(path) as file:
        raw = yaml.safe_load(file) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict, source: str = "config") -> TrainConfig:
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; allowed keys are {fields}")
    if "model" not in raw:
        raise ValueError(f"{source}: the key 'model' is required")
    try:
        return TrainConfig(**raw)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def lm_row(cfg: TrainConfig) -> LMConfig:
    """The language-model row a run trains: the named row at its preset, on the run's corpus."""
    row = get_config(cfg.model, cfg.preset, cfg.official_code, cfg.width)
    if cfg.lean:
        row = dataclasses.replace(row, solver=row.solver.lean())
    if cfg.mem_len is not None:
        row = dataclasses.replace(row, mem_len=cfg.mem_len)
    dataset = cfg.dataset or row.dataset
    return row if dataset == row.dataset else on_dataset(row, dataset)


def to_dict(cfg: TrainConfig) -> dict:
    """Plain YAML/JSON values: tuples (keep_steps) as lists, so a config read back compares equal."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}

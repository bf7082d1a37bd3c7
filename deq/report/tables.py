"""The paper's Tables 1-4, measured, with the paper's values beside ours.

:func:`write_table` reads what the runs and benchmarks wrote and writes one of ``table1.csv`` ...
``table4.csv``; :func:`write_markdown` renders the four into ``tables.md``. Every number comes from a file a rule made; the paper's numbers
come from the model registry (:mod:`deq.rows.paper_configs`, :data:`deq.rows.configs.COPY_CONFIGS`)
and the runtime benchmark's pairs. Columns of Tables 1-3 (one row per model, the paper's order):

- ``model``: the paper's row name (registry key); ``preset``: the study's preset; ``dataset``: the
  corpus it trained on (small presets train WikiText-2 in place of WikiText-103, and say so here);
- ``params``: parameters of the model as built (measured); ``paper_params``: as printed in the paper;
  ``nonembedding_params``: ``params`` less the word embedding (tied with the softmax);
  ``paper_nonembedding_params``;
- ``metric``: ``test loss`` (Table 1: mean cross-entropy per position) or ``test perplexity``;
  ``value``: measured; ``paper_value``; ``test_tokens``: tokens (or positions) it was measured on;
  ``steps``: optimiser steps trained;
- ``peak_memory_mb``: peak training memory in MB (10^6 bytes), embeddings excluded, at the paper's
  protocol (sequence 150, batch 15) at the ``paper`` preset, at the preset's scale otherwise
  (``memory_scale``); ``memory_method`` names how it was measured (``cuda-max-allocated``:
  torch's allocator peak; ``cpu-allocator-peak``: the same from the profiler's record of the CPU
  allocator; both less the embedding state, see :mod:`deq.bench.memory`); Table 1 has no paper protocol, so it gives the training run's saved
  activations (``memory_method`` says so);
- ``paper_memory_gb``; ``memory_reduction``: for an explicit row, 1 - DEQ / this row, the DEQ being
  ``deq_counterpart`` measured at the same scale; ``paper_memory_reduction``: the same from the paper;
- ``solver_code``: DEQ rows only, the official code whose solver settings the run used (``v1``: the
  paper's, the default; ``v2``: the later release; config key ``official_code``, docs/fidelity.md);
- ``paper_width_memory_gb``: peak training memory of the row at the paper's exact widths and depth,
  sequence 150, batch 15, embeddings excluded, from the committed measurement
  ``results/reference/cpu/memory_paper.csv`` (:mod:`deq.bench.memory` at the paper preset; empty where it is absent);
  ``paper_width_memory_how``: measured at batch 15 or extrapolated from smaller batches, where and how;
  ``paper_width_memory_reduction``: for an explicit row, 1 - DEQ / this row at those widths (beside
  ``paper_memory_reduction``);
- ``lean_memory_mb`` / ``lean_memory_reduction``: the lean memory mode (:data:`deq.settings.LEAN`), the
  memory benchmark's ``<deq>@lean`` row: on a DEQ row its peak, on an explicit row 1 - lean DEQ / this row;
  ``paper_width_lean_memory_gb`` / ``paper_width_lean_reduction``: the same at the paper's widths (empty where
  a file lacks the lean rows);
- ``device``: where the run trained;
- ``nonembedding_ratio``: for an explicit row, its DEQ counterpart's non-embedding parameters over its
  own (as built); ``paper_nonembedding_ratio``: the same from the paper's counts. The ``cpu`` model
  preset scales every row's widths by one factor, so the two agree to a few percent;
- ``note``: empty for a trained row; for a row the preset does not train, why (its metric, steps and
  device are then empty; its parameters are counted on the model as built and its memory is still
  measured by the memory benchmark).

Table 4 (``table4.csv``): one row per (pair, weights, phase): ``weights`` ('random init', the runtime
benchmark's pairs at the preset's widths, or 'trained (N steps), DEQ tol t: ...', the study's trained pair
timed on its own checkpoints and corpus at the DEQ's loosest forward tolerance within 1% of its best
validation perplexity; :func:`deq.evaluate.run_trained_runtime`), ``deq_model``, ``explicit_model``, ``phase``
('train' or 'infer'), ``ratio`` (DEQ time / explicit time, median of interleaved rounds),
``ratio_q1``, ``ratio_q3``, ``matched_ratio`` (the DEQ capped at the explicit depth's number of
function evaluations), ``paper_ratio``, ``goal`` (the project's target), ``device``, ``preset``,
``tokens`` (batch x segment length timed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from deq.io import atomic_write_text
from deq.rows.build import build_copy_model
from deq.rows.configs import COPY_CONFIGS, CONFIGS

TABLE_TITLES = {
    1: "Table 1: copy memory (T = 400 at the paper's definition)",
    2: "Table 2: word-level Penn Treebank",
    3: "Table 3: WikiText-103",
    4: "Table 4: runtime, DEQ time / explicit time (> 1: the DEQ is slower)",
    "size sweep": "Size sweep: each DEQ beside its explicit counterpart at two sizes",
}
MODEL_COLUMNS = ("model", "preset", "dataset", "params", "paper_params", "nonembedding_params",
                 "paper_nonembedding_params", "metric", "value", "paper_value", "test_tokens", "steps",
                 "peak_memory_mb", "memory_method", "memory_scale", "paper_memory_gb", "deq_counterpart",
                 "memory_reduction", "paper_memory_reduction", "paper_width_memory_gb", "paper_width_memory_how",
                 "paper_width_memory_reduction", "lean_memory_mb", "lean_memory_reduction", "paper_width_lean_memory_gb",
                 "paper_width_lean_reduction", "solver_code", "device", "nonembedding_ratio",
                 "paper_nonembedding_ratio", "note")
RUNTIME_COLUMNS = ("weights", "deq_model", "explicit_model", "phase", "ratio", "ratio_q1", "ratio_q3", "matched_ratio",
                   "paper_ratio", "goal", "device", "preset", "tokens")


def write_table(number: int, runs: dict[str, Path], memory_csv: Path | None, runtime_csv: Path | None,
                out_csv: Path, preset: str, paper_memory_csv: Path | None = None,
                not_trained: dict[str, str] | None = None, trained_runtime_csv: Path | None = None,
                paper_runtime_csv: Path | None = None) -> pd.DataFrame:
    """Table ``number`` as CSV. ``runs``: row name -> run folder (config.yaml, result.json) of its trained
    rows; ``not_trained``: row name -> why the preset does not train it (:func:`deq.study.not_trained`;
    its metric is left empty and the reason is its ``note``). Tables 2-3 also read the memory benchmark's
    CSV and, where given, the paper-width memory measurement (``results/reference/cpu/memory_paper.csv``);
    Table 4 the runtime benchmark's (random init) and, where given, the trained pair's timing
    (:func:`deq.evaluate.run_trained_runtime`) and the committed paper-width CPU measurement
    (``results/reference/cpu/runtime_paper.csv``, ``make paper-runtime``)."""
    not_trained = not_trained or {}
    if number == 1:
        frame = copy_table(runs, preset, not_trained)
    elif number in (2, 3):
        paper_memory = pd.read_csv(paper_memory_csv).set_index("name") if paper_memory_csv else None
        frame = lm_table(number, runs, pd.read_csv(memory_csv).set_index("name"), preset, paper_memory, not_trained)
    elif number == 4:
        frames = [pd.read_csv(path) for path in (runtime_csv, trained_runtime_csv, paper_runtime_csv) if path]
        if paper_runtime_csv:  # its pairs are the random-init ones, at other widths: keep them apart
            frames[-1]["pair"] = frames[-1]["pair"] + " (paper widths)"
        frame = runtime_table(pd.concat(frames, ignore_index=True), preset)
    else:
        raise ValueError(f"unknown table {number!r}; choose from [1, 2, 3, 4]")
    atomic_write_text(out_csv, frame.to_csv(index=False))
    return frame


SIZE_SWEEP_COLUMNS = ("family", "size", "driver", "model", "run", "dataset", "params", "nonembedding_params", "steps",
                      "valid_ppl", "test_ppl", "test_tokens", "ppl_ratio", "train_step_peak_mb", "memory_reduction",
                      "device", "preset")


def write_size_sweep(points: list[tuple[str, str, str, str]], runs: dict[str, Path], out_csv: Path,
                     preset: str) -> pd.DataFrame:
    """``size_sweep.csv``: per (family, size) point of :func:`deq.study.size_sweep` one DEQ row and one
    explicit row, each from its run: parameters, validation and test perplexity, and the allocator's
    peak over the run's last training step (``train_step_peak_mb``; forward and backward with the
    weights and Adam moments excluded, :class:`~deq.engine.memory.AllocatorPeak`). On the DEQ row:
    ``ppl_ratio`` = DEQ test perplexity / explicit, ``memory_reduction`` = 1 - DEQ peak / explicit peak."""
    rows = []
    for family, size, deq_run, explicit_run in points:
        pair = []
        for run in (deq_run, explicit_run):
            config, result = _run(runs[run])
            model = config["model"]
            pair.append({
                "family": family, "size": size, "driver": CONFIGS[model].driver, "model": model, "run": run,
                "dataset": config.get("dataset") or CONFIGS[model].dataset, "params": result["params"],
                "nonembedding_params": result["params_nonembedding"], "steps": result.get("steps"),
                "valid_ppl": _finite(result.get("valid_ppl")), "test_ppl": _finite(result.get("test_ppl")),
                "test_tokens": result.get("test_tokens"), "ppl_ratio": None,
                "train_step_peak_mb": _mb(result.get("train_step_peak_bytes")), "memory_reduction": None,
                "device": result.get("device"), "preset": preset,
            })
        deq, explicit = pair
        if deq["test_ppl"] and explicit["test_ppl"]:
            deq["ppl_ratio"] = deq["test_ppl"] / explicit["test_ppl"]
        if deq["train_step_peak_mb"] and explicit["train_step_peak_mb"]:
            deq["memory_reduction"] = 1 - deq["train_step_peak_mb"] / explicit["train_step_peak_mb"]
        rows += pair
    frame = pd.DataFrame(rows, columns=SIZE_SWEEP_COLUMNS)
    atomic_write_text(out_csv, frame.to_csv(index=False))
    return frame


def write_markdown(table_csvs: list[Path], out_md: Path, preset: str) -> None:
    """``tables.md`` from the four tables' CSVs, in order, then the size sweep's."""
    tables = {number: pd.read_csv(path) for number, path in zip((1, 2, 3, 4, "size sweep"), table_csvs)}
    atomic_write_text(out_md, render_markdown(tables, preset))


# ---- one frame per table ----------------------------------------------------------------------------

def copy_table(runs: dict[str, Path], preset: str, not_trained: dict[str, str]) -> pd.DataFrame:
    rows = []
    for name, row in COPY_CONFIGS.items():
        if name in not_trained:
            params = sum(p.numel() for p in build_copy_model(name).parameters())
            rows.append({"model": name, "preset": preset, "dataset": "copy memory", "params": params,
                         "paper_params": row.paper_params, "nonembedding_params": None, "metric": "test loss",
                         "paper_value": row.paper_loss, "steps": 0, "note": not_trained[name]})
            continue
        config, result = _run(runs[name])
        rows.append({
            "model": name, "preset": preset, "dataset": f"copy memory T={config['copy_T']}",
            "params": result["params"], "paper_params": row.paper_params,
            "nonembedding_params": result["params_nonembedding"], "paper_nonembedding_params": None,
            "metric": "test loss", "value": result["test_loss"], "paper_value": row.paper_loss,
            "test_tokens": config["copy_n_test"] * (config["copy_T"] + 20), "steps": config["max_steps"],
            "peak_memory_mb": _mb(result.get("saved_activation_bytes_excl_embedding")
                                  or result.get("saved_activation_bytes")),
            "memory_method": "training run: bytes saved for backward (no paper protocol for Table 1)",
            "memory_scale": f"batch {config['batch_size']}, length {config['copy_T'] + 20}",
            "paper_memory_gb": None, "deq_counterpart": None, "memory_reduction": None,
            "paper_memory_reduction": None, "device": result.get("device"), "note": "",
        })
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def lm_table(number: int, runs: dict[str, Path], memory: pd.DataFrame, preset: str,
             paper_memory: pd.DataFrame | None = None, not_trained: dict[str, str] | None = None) -> pd.DataFrame:
    not_trained, rows = not_trained or {}, []
    for name, row in CONFIGS.items():
        if row.paper_table != number:
            continue
        if name in not_trained:
            config, result = _untrained_lm(name, preset), {}
        else:
            config, result = _run(runs[name])
        measured = memory.loc[name]
        dataset = config.get("dataset") or row.dataset
        rows.append({
            "model": name, "preset": preset,
            "dataset": dataset if dataset == row.dataset else f"{dataset} (standing in for {row.dataset})",
            "params": result.get("params", config.get("params")), "paper_params": row.paper_params,
            "nonembedding_params": result.get("params_nonembedding", config.get("params_nonembedding")),
            "paper_nonembedding_params": row.paper_nonembedding_params,
            "metric": "test perplexity", "value": _finite(result.get("test_ppl")), "paper_value": row.paper_ppl,
            "test_tokens": result.get("test_tokens"), "steps": result.get("steps", 0),
            "peak_memory_mb": _mb(measured["memory_bytes"]), "memory_method": measured["method"],
            "memory_scale": measured["scale"], "paper_memory_gb": row.paper_memory_gb,
            "deq_counterpart": _text(measured.get("deq")), "memory_reduction": _number(measured.get("reduction")),
            "paper_memory_reduction": _number(measured.get("paper_reduction")),
            **_paper_width(paper_memory, name),
            "lean_memory_mb": _mb(_lean(memory, name)), "lean_memory_reduction": _number(measured.get("lean_reduction")),
            "paper_width_lean_memory_gb": _lean(paper_memory, name, 1e9),
            "paper_width_lean_reduction": None if paper_memory is None or name not in paper_memory.index
            else _number(paper_memory.loc[name].get("lean_reduction")),
            "solver_code": config.get("official_code", "v1") if row.driver == "deq" else None,
            "device": result.get("device"), "nonembedding_ratio": None,
            "paper_nonembedding_ratio": None, "note": not_trained.get(name, ""),
        })
    by_name = {r["model"]: r for r in rows}
    for r in rows:  # an explicit row's parameters relative to its DEQ counterpart, ours and the paper's
        deq = by_name.get(r["deq_counterpart"])
        if deq is not None and r["nonembedding_params"] and deq["nonembedding_params"]:
            r["nonembedding_ratio"] = deq["nonembedding_params"] / r["nonembedding_params"]
            r["paper_nonembedding_ratio"] = deq["paper_nonembedding_params"] / r["paper_nonembedding_params"]
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def runtime_table(runtime: pd.DataFrame, preset: str) -> pd.DataFrame:
    rows = []
    for (pair, phase), group in runtime.groupby(["pair", "phase"], sort=False):
        entries = group.set_index("entry")
        deq, explicit = entries.loc["deq"], entries.loc["explicit"]
        matched = entries.loc["deq_matched"]["ratio"] if "deq_matched" in entries.index else None
        is_trained = _number(deq.get("deq_tol")) is not None
        rows.append({
            "weights": (f"trained ({deq['trained_steps']:.0f} steps), DEQ tol {deq['deq_tol']:g}: valid ppl "
                        f"{deq['deq_valid_ppl']:.2f} (best {deq['best_valid_ppl']:.2f})") if is_trained else
                       f"random init, paper widths, batch {deq['batch']:.0f} on a CPU" if pair.endswith("(paper widths)")
                       else "random init",
            "deq_model": deq["model"], "explicit_model": explicit["model"], "phase": phase,
            "ratio": deq["ratio"], "ratio_q1": deq["ratio_q1"], "ratio_q3": deq["ratio_q3"],
            "matched_ratio": matched, "paper_ratio": deq["paper_ratio"], "goal": deq["goal"],
            "device": deq["device"], "preset": preset, "tokens": int(deq["batch"] * deq["tgt_len"]),
        })
    return pd.DataFrame(rows, columns=RUNTIME_COLUMNS)


# ---- Markdown ---------------------------------------------------------------------------------------

def render_markdown(tables: dict[int, pd.DataFrame], preset: str) -> str:
    lines = [f"# The paper's tables, measured (preset `{preset}`)", "",
             "Measured values beside the paper's. Small presets train scaled-down models for minutes, so "
             "their metrics are not comparable with the paper's; memory is measured at the paper's "
             "protocol where the row fits (the scale column says what ran). Columns: "
             "`deq/report/tables.py`.", ""]
    for number in (1, 2, 3):
        lines += [f"## {TABLE_TITLES[number]}", "",
                  "| model | params (paper) | non-emb. (paper) | metric | measured | paper | steps | "
                  "peak memory MB (scale, method) | reduction | at paper widths: GB (paper GB) | "
                  "reduction (paper) | lean mode: peak MB or reduction (paper widths) | device |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in tables[number].to_dict("records"):
            note = _text(r.get("note"))  # a row the preset does not train: the reason where the metric would be
            lines.append(
                f"| {r['model']} ({r['dataset']}{'' if note else _solver(r.get('solver_code'))}) | "
                f"{_m(r['params'])} ({_m(r['paper_params'])}) | "
                f"{_m(r['nonembedding_params'])} ({_m(r['paper_nonembedding_params'])}) | {r['metric']} | "
                f"{note or _g(r['value'])} | {_g(r['paper_value'])} | {r['steps']} | "
                f"{_g(r['peak_memory_mb'])} ({r['memory_scale']}, {r['memory_method']}) | {_pct(r['memory_reduction'])} | "
                f"{_g(r.get('paper_width_memory_gb'))}{_star(r.get('paper_width_memory_how'))} "
                f"({_g(r['paper_memory_gb'])}) | {_pct(r.get('paper_width_memory_reduction'))} "
                f"({_pct(r['paper_memory_reduction'])}) | {_lean_cell(r)} | {'–' if note else r['device']} |")
        lines.append("")
        lines.append("At paper widths: sequence 150, batch 15, embeddings excluded, measured by "
                     "`make paper-memory` (results/reference/cpu/memory_paper.csv); * extrapolated to batch 15 "
                     "from smaller batches (peak = a + b x batch). Empty where that file is absent. Lean mode: "
                     "the DEQ with deq.settings.LEAN's solvers (README, Models), its peak on a DEQ row, the "
                     "reduction of the lean DEQ against an explicit row.")
        lines.append("")
    lines += [f"## {TABLE_TITLES[4]}", "",
              "| weights | DEQ | explicit | phase | ratio [q1, q3] | at matched f calls | paper | goal | device | tokens |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in tables[4].to_dict("records"):
        lines.append(f"| {r['weights']} | {r['deq_model']} | {r['explicit_model']} | {r['phase']} | {_g(r['ratio'])} "
                     f"[{_g(r['ratio_q1'])}, {_g(r['ratio_q3'])}] | {_g(r['matched_ratio'])} | {_g(r['paper_ratio'])} | "
                     f"<= {_g(r['goal'])} | {r['device']} | {r['tokens']} |")
    lines += ["", "The paper's ratios are its Table 4's (WikiText-103, trained medium models, its GPUs); the trained rows "
              "time this study's trained pair at its DEQ's loosest forward tolerance that keeps validation "
              "perplexity within 1% of its best.", ""]
    if tables[4]["weights"].astype(str).str.contains("paper widths").any():
        from deq.report.benchmarks import PAPER_WIDTH_CPU_NOTE

        lines += [f"Paper widths on a CPU: {PAPER_WIDTH_CPU_NOTE}", ""]
    if "size sweep" in tables:
        lines += ["## Size sweep: DEQ vs explicit counterpart across sizes", "",
                  "| family | size | model (run) | params | non-emb. | steps | valid ppl | test ppl | DEQ / explicit ppl | "
                  "peak MB, last training step | memory reduction | device |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in tables["size sweep"].to_dict("records"):
            lines.append(f"| {r['family']} | {r['size']} | {r['model']} ({r['run']}, {r['dataset']}) | {_m(r['params'])} | "
                         f"{_m(r['nonembedding_params'])} | {r['steps']} | {_g(r['valid_ppl'])} | {_g(r['test_ppl'])} | "
                         f"{_g(r['ppl_ratio'])} | {_g(r['train_step_peak_mb'])} | {_pct(r['memory_reduction'])} | "
                         f"{r['device']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# ---- helpers ----------------------------------------------------------------------------------------

def _run(folder: Path) -> tuple[dict, dict]:
    import yaml

    folder = Path(folder)
    with open(folder / "config.yaml") as file:
        config = yaml.safe_load(file)
    return config, json.loads((folder / "result.json").read_text())


def _untrained_lm(name: str, preset: str) -> dict:
    """What a row the preset does not train would have been trained as: its corpus and parameter counts
    (the model built on the meta device)."""
    from deq.engine.config import TrainConfig, lm_row
    from deq.rows.params import count_config
    from deq.study import STAND_IN

    dataset = CONFIGS[name].dataset
    dataset = dataset if preset == "paper" else STAND_IN.get(dataset, dataset)
    total, nonembedding = count_config(lm_row(TrainConfig(model=name, preset=preset, dataset=dataset)))
    return {"dataset": dataset, "params": total, "params_nonembedding": nonembedding}


def _paper_width(paper_memory: pd.DataFrame | None, name: str) -> dict:
    """The row's memory at the paper's widths (measured or extrapolated to batch 15) and its reduction."""
    if paper_memory is None or name not in paper_memory.index:
        return {"paper_width_memory_gb": None, "paper_width_memory_how": None, "paper_width_memory_reduction": None}
    r = paper_memory.loc[name]
    how = (f"extrapolated from batches {r['fit_batches']}" if bool(r["extrapolated"]) else
           f"measured at batch {r['batch']}")
    return {"paper_width_memory_gb": float(r["memory_bytes"]) / 1e9,
            "paper_width_memory_how": f"{how} on {r['device']} ({r['method']}, {r['revision']})",
            "paper_width_memory_reduction": _number(r.get("reduction"))}


def _lean(memory: pd.DataFrame | None, name: str, unit: float = 1.0) -> float | None:
    """The peak of DEQ row ``name`` in the lean mode (its ``<name>@lean`` row) in ``unit`` bytes, where measured."""
    lean = f"{name}@lean"
    return None if memory is None or lean not in memory.index else float(memory.loc[lean, "memory_bytes"]) / unit


def _lean_cell(r: dict) -> str:
    if _number(r.get("lean_memory_mb")) is not None:
        return f"{_g(r['lean_memory_mb'])} MB ({_g(r.get('paper_width_lean_memory_gb'))} GB)"
    if _number(r.get("lean_memory_reduction")) is not None:
        return f"{_pct(r['lean_memory_reduction'])} ({_pct(r.get('paper_width_lean_reduction'))})"
    return "–"


def _star(how) -> str:
    return "*" if isinstance(how, str) and how.startswith("extrapolated") else ""


def _solver(code) -> str:
    """', v1 solver' for a DEQ row's solver_code, '' for other rows."""
    return f", {code} solver" if isinstance(code, str) and code else ""


def _finite(value) -> float | None:
    """A measured metric, or None where the run wrote none."""
    value = _number(value)
    if value is not None and not math.isfinite(value):
        raise ValueError(f"a run reported a non-finite metric ({value}); a diverged evaluation is a failure, "
                         f"not a result")
    return value


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _text(value) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or value == "" else str(value)


def _mb(value) -> float | None:
    value = _number(value)
    return None if value is None else round(value / 1e6, 3)


def _g(value) -> str:
    value = _number(value) if not isinstance(value, str) else value
    return "–" if value is None else value if isinstance(value, str) else f"{value:.4g}"


def _m(value) -> str:
    value = _number(value)
    return "–" if value is None else f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value / 1e3:.1f}K"


def _pct(value) -> str:
    value = _number(value)
    return "–" if value is None else f"{100 * value:.1f}%"

"""Run directories → tidy pandas DataFrames: one call per table.

A run directory (SPEC §6) holds `config.yaml`, `summary.json`, `metrics.parquet` and
`positions.parquet`; a directory is a run iff it holds `config.yaml` and `summary.json` or
`metrics.parquet`. Runs are found at any depth under the paths given.

File names, columns, statuses and kinds of run come from `probes.schema`, the schema the
trainers write. The kinds share that format and are told apart by `run_kind` (the runs table's
`kind` column, from summary.json's `kind`): `probe` (`probes train`: config keys model, n, layout,
lr, init, seed; `position` is the target's position 0..N-1 in the context), `vlm` (`probes vlm
train`: config keys model, encoder, connector, scan, layout, lr, seed, no `n`; `position` is the
row-major cell, 0..8, of a 3×3 grid over the image that holds the target box's centre) and
`pretrain` (no positions). Runs written before summaries named their kind are told apart by
their config keys (a VLM config names an encoder or a connector).

    runs = load_runs("runs/")            # one row per run: flattened config + summary
    metrics = load_metrics("runs/")      # one row per run × evaluation
    positions = load_positions("runs/")  # one row per run × evaluation × target position

Every table carries `run` (a unique id: the run's path relative to the runs' common parent) and
the run's config fields as columns (nested keys flattened with dots: `tokens.eos_target`), so
seaborn can consume it directly. `pct` is the percent of training, `step / max_steps * 100`.
Loaders read files only: this package never imports the training code or torch.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import yaml

from probes.errors import UserError
from probes.schema import (  # noqa: F401 - PRETRAIN, RUN_KINDS, STATUSES: offered to analysis users
    CONFIG_FILE,
    LOADED_PREFIXES,
    METRICS_FILE,
    POSITIONS_FILE,
    PRETRAIN,
    PROBE,
    RUN_KINDS,
    RUNNING,
    STATUSES,
    SUMMARY_FILE,
    VLM,
    VLM_GRID,
)

SEED_KEYS = ("init_seed", "order_seed", "data_seed")  # each null (or absent: older runs) means `seed`
GRID_KEYS = ("model", "n", "layout", "lr", "init", "seed", *SEED_KEYS)  # probes.config.GRID_KEYS: one cell each
VLM_CONFIG_KEYS = ("encoder", "connector")  # config keys only a VLM run has (runs without `kind`)
_SKIP_DIRS = {"checkpoint", "checkpoints", "__pycache__", ".git", ".ipynb_checkpoints"}

PathLike = str | os.PathLike


class NoRunsError(UserError):
    """None of the paths given holds a run directory."""


class DamagedRunWarning(UserWarning):
    """A run directory that cannot be read (a damaged config.yaml): skipped, the others load."""


# === Finding runs ===


def is_run_dir(path: PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and ((path / SUMMARY_FILE).is_file() or (path / METRICS_FILE).is_file())


def find_runs(*paths: PathLike) -> list[Path]:
    """Every run directory at any depth under `paths` (a path may itself be a run), sorted and
    without duplicates. A path that does not exist is a `NoRunsError`; so is finding no run."""
    if not paths:
        raise NoRunsError("no run directory given")
    found: set[Path] = set()
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.exists():
            raise NoRunsError(f"{raw}: no such directory")
        if not root.is_dir():
            raise NoRunsError(f"{raw}: not a directory (expected run directories under it)")
        for here, dirs, _files in os.walk(root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            if is_run_dir(here):
                found.add(Path(here).resolve())
                dirs[:] = []  # a run's own sub-directories are not runs
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise NoRunsError(
            f"no run directories under {where} (a run directory holds {CONFIG_FILE} and {SUMMARY_FILE} "
            f"or {METRICS_FILE}; make one with `probes train` or `probes sweep`)"
        )
    return sorted(found)


def run_ids(dirs: list[Path]) -> list[str]:
    """Unique short ids: each run's path relative to the common parent of all runs."""
    if len(dirs) == 1:
        return [dirs[0].name]
    common = Path(os.path.commonpath([str(d) for d in dirs]))
    return [d.relative_to(common).as_posix() for d in dirs]


def _resolve(paths: tuple) -> list[Path]:
    """Accept paths, or the `runs` table itself (its `run_dir` column), as the source of runs."""
    if len(paths) == 1 and isinstance(paths[0], pd.DataFrame):
        return [Path(p) for p in paths[0]["run_dir"]]
    return find_runs(*paths)


# === Reading one run ===


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"tokens": {"eos_target": True}} → {"tokens.eos_target": True}; lists become tuples
    (hashable, so they survive groupby)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = tuple(value)
        else:
            flat[name] = value
    return flat


def read_config(run_dir: PathLike) -> dict[str, Any]:
    """The run's config.yaml, flattened with dots."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the run's config ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys")
    return flatten(data)


def read_summary(run_dir: PathLike) -> dict[str, Any]:
    """The run's summary.json; a run without one (still starting) is `running`."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return {"status": RUNNING}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        warnings.warn(f"{path}: unreadable summary ({err}); treating the run as running", DamagedRunWarning,
                      stacklevel=2)
        return {"status": RUNNING}
    return flatten(data) if isinstance(data, dict) else {"status": RUNNING}


def _read_table(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - a half-written file of a live run: skip it, say so
        warnings.warn(f"{path}: unreadable ({type(err).__name__}: {err}); skipped", stacklevel=3)
        return None


# === Model names ===

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([mb])\b", re.IGNORECASE)


def model_family(name: str) -> str:
    """ "pythia", "mamba" or "other", from a model name (`pythia-160m`, `hf:state-spaces/mamba-130m-hf`)."""
    low = str(name).lower()
    if "mamba" in low:
        return "mamba"
    if "pythia" in low or "neox" in low:
        return "pythia"
    return "other"


def model_size(name: str) -> float:
    """Parameters implied by the name (`1.4b` → 1.4e9); tiny presets sort first (0), unknown last."""
    low = str(name).lower()
    if "tiny" in low:
        return 0.0
    m = _SIZE.search(low)
    if not m:
        return math.inf
    return float(m.group(1)) * (1e6 if m.group(2) == "m" else 1e9)


def model_order(models: Iterable[str]) -> list[str]:
    """Pythia first, then Mamba, then others; by size within a family."""
    rank = {"pythia": 0, "mamba": 1, "other": 2}
    return sorted(set(models), key=lambda m: (rank[model_family(m)], model_size(m), str(m)))


# === Kinds of run ===


def run_kind(record: dict[str, Any]) -> str:
    """The run's kind (`probes.schema.RUN_KINDS`) from one run's flattened config and summary (a row
    of `load_runs`): summary.json's `kind`. A run written before summaries named their kind, or one
    still starting (no summary yet), is `vlm` if its config names an `encoder` or a `connector`
    (only a VLM config has them), else `probe`."""
    if record.get("kind") in RUN_KINDS:
        return record["kind"]
    return VLM if any(_given(record.get(key)) for key in VLM_CONFIG_KEYS) else PROBE


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def is_vlm(table: pd.DataFrame) -> pd.Series:
    """Per row of a table of `load_runs`, `load_metrics` or `load_positions` (or one built by
    hand with the runs' columns): True where the row belongs to a VLM run."""
    if "kind" in table:
        return table["kind"].eq(VLM)
    return pd.Series([run_kind(r) == VLM for r in table.to_dict("records")], index=table.index, dtype=bool)


def kind_of(table: pd.DataFrame) -> str:
    """The one kind of run (`probes.schema.RUN_KINDS`) in a table of `load_runs`, `load_metrics` or
    `load_positions`; a `UserError` if it mixes kinds (their figures differ: select one with
    `table[table.kind == "vlm"]`). An empty table is `"probe"`."""
    kinds = table["kind"] if "kind" in table else pd.Series([run_kind(r) for r in table.to_dict("records")],
                                                             dtype=object)
    found = sorted(set(kinds))
    if len(found) > 1:
        raise UserError(
            f"the table mixes runs of kinds {', '.join(found)}, whose figures differ: "
            "select one kind (e.g. table[table.kind == 'vlm'], or `probes plot --only kind=vlm`)"
        )
    return found[0] if found else PROBE


# === Tables ===


def load_runs(*paths: PathLike) -> pd.DataFrame:
    """One row per run: `run`, `run_dir`, the flattened config, then the summary's fields
    (`status`, `step_reached`, `examples_to_threshold`, `final_accuracy`, ...), `kind` (probe, vlm or
    pretrain: `run_kind`), `family` (pythia, mamba, other) and `label` (the model; for a VLM run
    model+connector/scan: figures colour by it).
    Where summary and config share a key (`threshold`, `max_steps`), the summary wins: it records
    what the run did."""
    dirs = _resolve(paths)
    rows = []
    for run, run_dir in zip(run_ids(dirs), dirs):
        row = {"run": run, "run_dir": str(run_dir)}
        try:
            config = read_config(run_dir)
        except UserError as err:  # one damaged run does not hide the others
            warnings.warn(f"skipped {run_dir}: {err}", DamagedRunWarning, stacklevel=2)
            continue
        row.update(_unreserved(config, "config"))
        summary = _unreserved(read_summary(run_dir), "summary")
        row.update({k: v for k, v in summary.items() if v is not None or k not in row})
        rows.append(_with_seeds(row))
    if not rows:
        raise NoRunsError(f"every run directory found is damaged ({len(dirs)} skipped)")
    runs = pd.DataFrame(rows)
    for col in ("model", "status", "step_reached", "examples_to_threshold", "max_steps", "threshold"):
        if col not in runs:
            runs[col] = None
    runs["kind"] = [run_kind(row) for row in runs.to_dict("records")]
    runs["family"] = runs["model"].map(model_family) if "family" not in runs else runs["family"]
    short = short_model_names(runs["model"].dropna().unique())
    runs["label"] = [_label(row, short) for row in runs.to_dict("records")]
    for col in (
        "step_reached",
        "examples_to_threshold",
        "final_accuracy",
        "max_steps",
        "threshold",
        "wall_seconds",
        "batch_size",
    ):
        if col in runs:
            runs[col] = pd.to_numeric(runs[col], errors="coerce")
    first = ["run", "kind", "model", "label", "family", "n", "layout", "lr", "init", "seed", *SEED_KEYS, "status"]
    cols = [c for c in first if c in runs] + [c for c in runs if c not in first]
    return runs[cols].reset_index(drop=True)


def select_runs(runs: pd.DataFrame, only: dict[str, Any] | None) -> pd.DataFrame:
    """The runs whose columns match every `only` item ({"n": 10, "layout": "suffix"}); values
    are compared as text, and a list value matches any of its items (`--only` of `probes plot`
    and `probes runs`)."""
    for key, want in (only or {}).items():
        if key not in runs:
            raise UserError(
                f"cannot select on '{key}': the runs have no such column "
                f"(some are: {', '.join(c for c in runs.columns[:12])})"
            )
        wanted = {_text(w) for w in (want if isinstance(want, (list, tuple)) else [want])}
        runs = runs[runs[key].map(_text).isin(wanted)]
    if not len(runs):
        shown = [
            f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in only.items()
        ]
        raise NoRunsError(f"no run matches {' '.join(shown)}")
    return runs


def relabel_runs(runs: pd.DataFrame, labels: dict[str, str] | None) -> pd.DataFrame:
    """The runs with every model that matches a GLOB of `labels` ({GLOB: NAME}; `fnmatch` on the
    `model` column; the first GLOB that matches wins) renamed NAME in `model` and `label`, the model
    as loaded kept in `source_model`. Runs of one recipe from different directories (a model
    pretrained again in each GPU window: `hf:/root/w10/pretrain/mamba-20m/model`,
    `hf:/root/w12/...`) are then one model in every figure and summary (`probes plot --label`).
    A GLOB that matches no run's model is a UserError naming the models there are."""
    if not labels:
        return runs
    models = runs["model"].map(str)
    renamed = pd.Series(None, index=runs.index, dtype=object)
    for glob, name in labels.items():
        hit = models.map(lambda m, g=glob: fnmatch.fnmatchcase(m, g))
        if not hit.any():
            raise UserError(f"label '{glob}={name}': no run's model matches '{glob}' "
                            f"(models: {', '.join(sorted(models.unique()))})")
        renamed[hit & renamed.isna()] = name
    runs = runs.copy()
    hit = renamed.notna()
    runs.insert(runs.columns.get_loc("model") + 1, "source_model", runs["model"])
    runs.loc[hit, "model"] = renamed[hit]
    runs.loc[hit, "label"] = [_label(row, {row["model"]: row["model"]}) for row in runs[hit].to_dict("records")]
    return runs


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _with_seeds(row: dict[str, Any]) -> dict[str, Any]:
    """A probe run's row with init_seed, order_seed and data_seed resolved as the trainer resolves
    them (null or absent: `seed`), so runs differing only in one of them stay apart in every table
    and runs written before those keys existed match the new ones."""
    if "seed" not in row or run_kind(row) != PROBE:
        return row
    return row | {key: row["seed"] if row.get(key) is None else row[key] for key in SEED_KEYS}


def short_model_names(models: Iterable[str]) -> dict[str, str]:
    """A short name for each model given by path (`hf:PATH`, `config:PATH`): its path's last two parts,
    more where two models would share a name or the family would be lost
    (`hf:/root/w10/pretrain/mamba-20m/model` → `hf:…/mamba-20m/model`). Figures name the model, not the
    machine's directories; presets and short hub ids (`hf:EleutherAI/pythia-160m`) stay as they are."""
    models = sorted({str(m) for m in models})
    parts = {m: _path_parts(m) for m in models}
    keep = dict.fromkeys(models, 2)

    def name(m: str) -> str:
        prefix, path = parts[m] if parts[m] else (None, ())
        if prefix is None or keep[m] >= len(path):
            return m
        return f"{prefix}:…/{'/'.join(path[-keep[m]:])}"

    while True:
        names = {m: name(m) for m in models}
        taken: dict[str, list[str]] = {}
        for m, n in names.items():
            taken.setdefault(n, []).append(m)
        longer = [m for m in models if names[m] != m and (
            len(taken[names[m]]) > 1 or model_family(names[m]) != model_family(m))]
        if not longer:
            return names
        for m in longer:
            keep[m] += 1


def _path_parts(model: str) -> tuple[str, tuple[str, ...]] | None:
    """("hf", ("root", "w10", "model")) for `hf:/root/w10/model`; None for a preset name."""
    prefix = next((p for p in LOADED_PREFIXES if model.startswith(p)), None)
    if prefix is None:
        return None
    return prefix[:-1], tuple(p for p in model[len(prefix):].split("/") if p)


def _label(row: dict[str, Any], short: dict[str, str]) -> str:
    """What the figures colour by: the model (shortened by `short_model_names`), plus the connector
    (and scan) of a VLM run (`mamba-tiny+vss-l2/csm`), so different architectures on one backbone
    stay apart."""
    model = row.get("model")
    label = short.get(str(model), str(model))
    connector = row.get("connector")
    if isinstance(connector, str) and connector:
        label += f"+{connector}"
        scan = row.get("scan")
        if isinstance(scan, str) and scan:
            label += f"/{scan}"
    return label


def _unreserved(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Keep the loader's own `run` / `run_dir` columns: a file's `run` (the training code's run
    name) becomes `run_name`, anything else reserved is prefixed with its source."""
    out = {}
    for key, value in data.items():
        if key == "run":
            key = "run_name"
        elif key == "run_dir":
            key = f"{source}.{key}"
        out[key] = value
    return out


def _per_run_table(paths: tuple, filename: str) -> pd.DataFrame:
    runs = paths[0] if len(paths) == 1 and isinstance(paths[0], pd.DataFrame) else load_runs(*paths)
    frames = []
    for run, run_dir in zip(runs["run"], runs["run_dir"]):
        table = _read_table(Path(run_dir) / filename)
        if table is not None and len(table):
            frames.append(table.assign(run=run))
    if not frames:
        raise NoRunsError(f"none of the {len(runs)} runs has a readable {filename} yet")
    data = pd.concat(frames, ignore_index=True)
    # A grid key keeps the run's value (metrics.parquet logs `lr` per step, which warmup changes:
    # that one becomes `lr_at_step`); any other clash keeps the measurement.
    data = data.rename(columns={c: f"{c}_at_step" for c in GRID_KEYS if c in data.columns and c in runs})
    measured = set(data.columns) - {"run"}
    run_cols = [c for c in runs.columns if c not in measured]
    data = data.merge(runs[run_cols], on="run", how="left", validate="many_to_one")
    if "step" in data and "max_steps" in data:
        data["pct"] = data["step"] / data["max_steps"] * 100.0
    lead = ["run", "model", "label", "n", "layout", "lr", "init", "seed", *SEED_KEYS, "step", "pct"]
    cols = [c for c in lead if c in data] + [c for c in data if c not in lead]
    return data[cols]


def load_metrics(*paths: PathLike) -> pd.DataFrame:
    """One row per run × evaluation: the metrics.parquet columns (`step`, `examples_seen`,
    `loss`, `accuracy`, ...) plus `pct` and every run-level column of `load_runs` (a logged
    per-step learning rate is `lr_at_step`; `lr` stays the run's grid value).
    Accepts paths or a `load_runs` table (to load a filtered selection)."""
    return _per_run_table(paths, METRICS_FILE)


def load_positions(*paths: PathLike) -> pd.DataFrame:
    """One row per run × evaluation × target position (`step`, `position` 0-based, `accuracy`,
    `count`) plus `pct` and every run-level column of `load_runs`."""
    return _per_run_table(paths, POSITIONS_FILE)


class Tables(NamedTuple):
    runs: pd.DataFrame
    metrics: pd.DataFrame
    positions: pd.DataFrame


def at_step(tables: Tables, step: int) -> Tables:
    """The runs as they stood at training step `step`, as if every one had been stopped there: evaluations after it
    are dropped, and a run that had not finished by then (its `final_step` is later, or it is still running) becomes
    `running`, with `final_step`, `final_accuracy` and `best_accuracy` from its evaluations up to `step`, and
    `step_reached` / `examples_to_threshold` only if it had reached its threshold by then (it is then `reached`).
    Runs that finished by `step` are unchanged. For comparing runs that different windows stopped at different
    steps, at the same step (`probes plot --until STEP`)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"at_step: step must be a whole number of steps >= 0, got {step!r}")
    metrics, positions = (t[t["step"] <= step] if "step" in t else t for t in (tables.metrics, tables.positions))
    runs = tables.runs.copy()
    ends = tables.metrics.groupby("run")["step"].max() if "step" in tables.metrics else pd.Series(dtype=float)
    final = runs["run"].map(ends)  # a summary without final_step (older runs): the last evaluation
    if "final_step" in runs:
        final = pd.to_numeric(runs["final_step"], errors="coerce").fillna(final)
    cut = runs["status"].eq(RUNNING) | ~(final <= step)
    upto = pd.DataFrame(columns=["final_step", "final_accuracy", "best_accuracy"], dtype=float)
    if {"step", "accuracy"} <= set(metrics.columns):  # each run's evaluations up to `step`
        evals = metrics.dropna(subset=["accuracy"]).sort_values("step").groupby("run")
        upto = evals.agg(final_step=("step", "last"), final_accuracy=("accuracy", "last"),
                         best_accuracy=("accuracy", "max"))
    runs.loc[cut, "status"] = RUNNING
    for col in upto.columns:
        if col in runs or col != "best_accuracy":  # best_accuracy only where the summaries have it
            runs.loc[cut, col] = runs.loc[cut, "run"].map(upto[col])
    late = cut & ~(pd.to_numeric(runs["step_reached"], errors="coerce") <= step)
    runs.loc[late, ["step_reached", "examples_to_threshold"]] = float("nan")
    runs.loc[cut & ~late, "status"] = "reached"  # reached by `step` and went on training: reached, as of then
    return Tables(runs, metrics, positions)


def load(*paths: PathLike) -> Tables:
    """All three tables at once, reading each run's config and summary only once."""
    runs = load_runs(*paths)

    def optional(loader) -> pd.DataFrame:
        try:
            return loader(runs)
        except NoRunsError:  # e.g. runs that log no per-position table
            return pd.DataFrame()

    return Tables(runs, optional(load_metrics), optional(load_positions))

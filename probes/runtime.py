"""Where and how a run computes: device, precision, CPU threads, batch order, Mamba scan, RNG, timing.

Every trainer (probes.engine and its kinds: probes.train, probes.vlm.train, probes.pretrain) and
the benchmark take these from here, so a run of any kind resolves them the same way:

    device = resolve_device("auto")                  # cuda when available, else cpu
    dtype = resolve_precision("auto", device)        # bf16 autocast on CUDA, None (fp32) elsewhere
    with autocast(device, dtype): ...                # the one autocast helper
    with torch_threads(run_threads(cfg, run, state), cfg.device, [cfg.model]) as threads: ...
    rows = BatchOrder(size, batch_size, seed).rows(step)
    state = rng_state(device); set_rng_state(state, device)   # CPU, CUDA, numpy and python RNGs
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes import rundir
from probes.errors import UserError

# === Device and precision ===


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked but CUDA is not available here (allowed: cpu, auto)")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast at `dtype` on `device`'s type, or nothing when dtype is None (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def precision_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype is not None else "fp32"


def quiet_transformers() -> None:
    """No download / loading progress bars from transformers inside a run's own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


# === CPU threads ===


def resolve_threads(threads: int | str, device: str, models: Sequence[str],
                    environ: Mapping[str, str] = os.environ) -> int | None:
    """The torch CPU thread count a run uses, None to leave torch's own (config key `threads`).

    A count is used as given; 0 is torch's default. "auto" is 1 on a CPU run whose `models`
    (backbone, and a VLM's encoders) are all tiny presets: they run fastest on one thread, and many
    times slower on two when other jobs share the CPU; larger models keep torch's default, which
    their matmuls use. On a GPU, where the CPU only feeds it, "auto" leaves torch's count too. An
    OMP_NUM_THREADS in the environment is the user's choice: "auto" then leaves torch's count,
    which follows it. One thread also makes a CPU run's floats independent of the core count.
    """
    if threads != "auto":
        return int(threads) or None
    if environ.get("OMP_NUM_THREADS"):
        return None
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device.split(":")[0]
    return 1 if kind == "cpu" and all(name.endswith("-tiny") for name in models) else None


@contextlib.contextmanager
def torch_threads(threads: int | str, device: str, models: Sequence[str]) -> Iterator[int]:
    """Run the block with resolve_threads(threads, device, models) torch threads; torch's count
    before is restored afterwards. Yields the count in effect."""
    count = resolve_threads(threads, device, models)
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        if count is not None:
            torch.set_num_threads(before)


def run_threads(cfg: Any, run: Path, state: str, default: int | None = None) -> int | str:
    """The `threads` setting a run uses (then resolved by torch_threads): the config's when it names
    one; else, on resume, the count config.yaml records (exact resume: float sums depend on it);
    else `default` (a sweep worker's share) or "auto". A resume with another count than the
    recorded one shows in summary.json (threads_used, bit_reproducible: false)."""
    if cfg.threads != "auto":
        return cfg.threads
    recorded = rundir.recorded_threads(run) if state == "resume" else None
    return recorded or default or "auto"


def with_threads(cfg: Any, threads: int | None) -> Any:
    """`cfg` with `threads` CPU threads where it leaves them to "auto" (a sweep worker's share)."""
    return cfg.model_copy(update={"threads": threads}) if threads and cfg.threads == "auto" else cfg


# === Batch order ===


class BatchOrder:
    """Rows of each training step: epoch e is the permutation drawn from (seed, e).

    rows(step) depends only on (seed, step, batch size, training-set size): a resumed run sees
    exactly the batches an uninterrupted one would; state() is what a checkpoint records of it.
    """

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._perms[epoch]

    def rows(self, step: int) -> np.ndarray:
        idx = step * self.batch_size + np.arange(self.batch_size)
        epochs, pos = np.divmod(idx, self.size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            mask = epochs == e
            out[mask] = self._perm(int(e))[pos[mask]]
        return out

    def state(self) -> dict[str, int]:
        return {"size": self.size, "batch_size": self.batch_size, "seed": self.seed}


# === Mamba selective scan ===


def choose_scan_backend(model: torch.nn.Module, backend: str) -> str:
    """Give every Mamba mixer in `model` the chosen selective scan (probes.kernels); the name chosen.

    A backend this machine cannot run (triton without CUDA, mamba-ssm not installed) is a UserError.
    """
    from probes.kernels.mamba_mixer import set_scan_backend

    try:
        return set_scan_backend(model, backend)
    except (ValueError, RuntimeError, ImportError) as err:
        raise UserError(f"scan_backend {backend!r}: {err}") from None


# Scan backends whose CUDA backward sums dB and dC over channels with float atomics, in whatever order the programs
# finish (probes.kernels.selective_scan; mamba-ssm's selective_scan_bwd_kernel): a rerun differs in the last bits
ATOMIC_SCANS = frozenset({"triton", "mamba-ssm"})


def same_bits_each_run(scan_backend: str | None, device: str) -> bool:
    """Whether a run's kernels give the same bits every time it is run: not so for a scan in ATOMIC_SCANS on CUDA.

    `scan_backend` as choose_scan_backend / scan_backends name it (None: no Mamba; "torch,triton": several)."""
    if scan_backend is None or not str(device).startswith("cuda"):
        return True
    return not set(scan_backend.split(",")) & ATOMIC_SCANS


def scan_backends(modules: Sequence[torch.nn.Module], backend: str) -> str | None:
    """choose_scan_backend for each of `modules` holding a Mamba mixer: the names chosen, joined by
    commas; None when none holds one."""
    from transformers.models.mamba.modeling_mamba import MambaMixer

    parts = [m for m in modules if any(isinstance(x, MambaMixer) for x in m.modules())]
    if not parts:
        return None
    return ",".join(sorted({choose_scan_backend(m, backend) for m in parts}))


# === RNG state ===


def rng_state(device: torch.device) -> dict:
    """Every RNG a run may draw from, for a checkpoint: torch CPU, torch CUDA (on a CUDA device),
    numpy's and python's global ones (as plain lists, loadable with torch.load(weights_only=True))."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    np_state = np.random.get_state()
    return {"cpu": torch.get_rng_state(), "cuda": cuda,
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": _plain(random.getstate())}


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def set_rng_state(state: dict | torch.Tensor, device: torch.device) -> None:
    """Restore rng_state(...); a bare tensor (old VLM checkpoints: the CPU state only) also works."""
    if isinstance(state, torch.Tensor):
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    if state.get("numpy") is not None:
        name, key, *rest = state["numpy"]
        np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


# === Timing ===


def end_train_interval(rec: dict, device: torch.device, t_train: float, steps: int, examples: int) -> float:
    """Seconds of training since `t_train` (once the GPU's queued work is done), added with `steps`
    and `examples` to the run record's totals: the interval an evaluation closes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.monotonic() - t_train
    rec["train_seconds"] += seconds
    rec["train_steps"] += steps
    rec["train_examples"] = rec.get("train_examples", 0) + examples
    return seconds

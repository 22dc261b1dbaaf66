"""One sweep run in this process: `python -m probes.sweeps.worker --kind text|vlm --json CONFIG`.

The local backend starts one such process per run; the Ray backend calls `run_job` in its task.
Prints the run's summary as JSON; a user error (a busy or damaged run) is one `error: ...` line
and exit code 2; a failed run exits 1, one stopped by SIGTERM 143 (resumable), one that ran out of GPU
memory (other runs packed on the card, say) `error: out of GPU memory: ...` and OUT_OF_MEMORY_EXIT
(resumable; the local backend starts it again, as it does a worker killed by a signal).
"""

from __future__ import annotations

import argparse
import json

from probes.config import validate
from probes.console import STOPPED_EXIT
from probes.errors import UserError, first_line
from probes.sweeps.kinds import KINDS, get_kind

OUT_OF_MEMORY_EXIT = 75  # EX_TEMPFAIL: the run may well succeed when started again


class GPUOutOfMemory(Exception):
    """A run that ran out of GPU memory, as the Ray backend raises it so that Ray retries the task."""


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is the GPU running out of memory: torch's OutOfMemoryError, or the forms that a
    full card takes in CUDA and cuBLAS calls (a RuntimeError naming it)."""
    import torch

    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text))


def run_job(kind: str, cfg_json: str, threads: int | None, overwrite: bool = False) -> dict:
    """Train (or resume) one run of `kind` from its config as JSON; returns its summary.
    `threads`: CPU threads of a new run whose config says auto (a resume keeps its recorded count)."""
    run_kind = get_kind(kind)
    cfg = validate(run_kind.run_config, json.loads(cfg_json))
    return run_kind.train(cfg, overwrite, threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m probes.sweeps.worker", description="Train one sweep run.")
    parser.add_argument("--kind", choices=list(KINDS), default="text")
    parser.add_argument("--json", required=True, help="the run config as JSON")
    parser.add_argument("--overwrite", action="store_true", help="start a finished run again")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of a new run where the config says auto (a resume keeps its count)")
    args = parser.parse_args(argv)
    from probes.locks import die_with_parent

    die_with_parent()  # a sweep worker: killed with its sweep, so a rerun never meets it still writing
    try:
        summary = run_job(args.kind, args.json, args.threads, args.overwrite)
    except UserError as err:
        print(f"error: {err}", flush=True)
        return 2
    except Exception as err:
        if not out_of_memory(err):
            raise
        print(f"error: out of GPU memory: {first_line(err)}", flush=True)
        return OUT_OF_MEMORY_EXIT
    print(json.dumps(summary), flush=True)
    return {"failed": 1, "running": STOPPED_EXIT}.get(summary["status"], 0)  # running: stopped by SIGTERM


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

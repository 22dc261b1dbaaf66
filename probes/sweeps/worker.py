"""One sweep run in this process: `python -m probes.sweeps.worker --kind text|vlm --json CONFIG`.

The local backend starts one such process per run; the Ray backend calls `run_job` in its task.
Prints the run's summary as JSON; a user error (a busy or damaged run) is one `error: ...` line
and exit code 2; a failed run exits 1, one stopped by SIGTERM 143 (resumable).
"""

from __future__ import annotations

import argparse
import json

from probes.config import validate
from probes.console import STOPPED_EXIT
from probes.errors import UserError
from probes.sweeps.kinds import KINDS, get_kind


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
    print(json.dumps(summary), flush=True)
    return {"failed": 1, "running": STOPPED_EXIT}.get(summary["status"], 0)  # running: stopped by SIGTERM


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

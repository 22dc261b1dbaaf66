"""How long validating a dataset on load takes (probes.tasks.validate_dataset, issue 20).

    python3 benchmarks/validate.py                                  # 1M × 200 train, 100k held-out
    python3 benchmarks/validate.py --n 50 --train-size 200000 --repeat 3

Generates the dataset in memory (not timed), then times validate_dataset on it `--repeat` times
and prints the best and the median, in seconds, with the machine's core count and load. With
`--disk` it also saves the dataset to a temporary directory and times load_dataset with and
without validation (reading the .npz files is the rest).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from probes import tasks
from probes.config import DataConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--train-size", type=int, default=1_000_000)
    parser.add_argument("--eval-size", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--disk", action="store_true", help="also time load_dataset from a saved copy")
    args = parser.parse_args()
    cfg = DataConfig(n=args.n, train_size=args.train_size, eval_size=args.eval_size)
    start = time.perf_counter()
    ds = tasks.generate(cfg, version=tasks.GENERATOR_VERSION)
    generated = time.perf_counter() - start
    say = f"n={args.n} train={args.train_size:,} heldout={args.eval_size:,}"
    report(f"validate_dataset {say}", timed(lambda: tasks.validate_dataset(Path("<in memory>"), ds), args.repeat),
           f"generation {generated:.1f} s")
    if args.disk:
        with tempfile.TemporaryDirectory() as tmp:
            tasks.save_dataset(ds, Path(tmp))
            for validate in (True, False):
                report(f"load_dataset(validate={validate}) {say}",
                       timed(lambda v=validate: tasks.load_dataset(tmp, validate=v), args.repeat))


def timed(work: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return times


def report(what: str, times: list[float], extra: str = "") -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{what}: best {min(times):.2f} s, median {statistics.median(times):.2f} s over {len(times)} "
          f"({extra + '; ' if extra else ''}{os.cpu_count()} cores, load {load:.1f})")


if __name__ == "__main__":
    main()

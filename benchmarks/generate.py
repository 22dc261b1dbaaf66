"""Time to generate and save the paper-sized dataset: 1M train + 100k held-out at N=200.

    python benchmarks/generate.py [--n 200] [--train-size 1000000] [--eval-size 100000]

Prints one line per phase and the total in seconds (goal: <= 5 s on the 2-core CPU machine).
"""

import argparse
import tempfile
import time
from pathlib import Path

from probes import tasks
from probes.config import DataConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--train-size", type=int, default=1_000_000)
    ap.add_argument("--eval-size", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = DataConfig(n=args.n, train_size=args.train_size, eval_size=args.eval_size)
    best = None
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            ds = tasks.generate(cfg)
            t1 = time.perf_counter()
            tasks.save_dataset(ds, Path(tmp) / "d")
            t2 = time.perf_counter()
        print(f"run {r}: generate {t1 - t0:.2f} s, save {t2 - t1:.2f} s, total {t2 - t0:.2f} s "
              f"(shared pairs {ds.shared_pairs}, redrawn {ds.resampled})")
        best = min(best or t2 - t0, t2 - t0)
    print(f"best of {args.repeats}: {best:.2f} s for {args.train_size:,} + {args.eval_size:,} examples at N={args.n}")


if __name__ == "__main__":
    main()

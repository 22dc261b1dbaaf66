"""Small run directories made by the REAL training code (probes.train.train_run), once per session.

2 models × 2 layouts × 2 learning rates of tiny CPU models at N = 6 and a few dozen steps: enough
for every table and figure to see real files (real column names, real step 0, real early stops),
in well under a minute on 2 cores. Both tests/analysis/ and tests/test_notebook.py use them;
the first caller trains, later callers of the same session reuse the directory.
"""

from __future__ import annotations

import itertools
from pathlib import Path

MODELS = ("pythia-tiny", "mamba-tiny")
LAYOUTS = ("suffix", "prefix")
LRS = (1e-3, 3e-3)
# threshold 0.45: within 40 steps some runs pass it (a real early stop) and some do not (censored)
SETTINGS = {
    "n": 6,
    "max_steps": 40,
    "eval_every": 5,
    "batch_size": 16,
    "train_size": 2_000,
    "eval_size": 120,
    "threshold": 0.45,
    "init": "default",
    "seed": 0,
    "device": "cpu",
    "eval_batch_size": 256,
}


def fixture_configs(root: Path) -> list:
    from probes.config import TrainConfig

    return [
        TrainConfig(model=model, layout=layout, lr=lr, out=root / layout / f"{model}+lr{lr:g}", **SETTINGS)
        for model, layout, lr in itertools.product(MODELS, LAYOUTS, LRS)
    ]


def make_fixture_runs(tmp_path_factory) -> Path:
    """Train the fixture runs under the session's base temp dir (once) and return their root."""
    root = tmp_path_factory.getbasetemp() / "fixture-runs"
    done = root / ".complete"
    if done.exists():
        return root
    import torch

    from probes.train import train_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads cost more than they give on a shared 2-core box
    try:
        for cfg in fixture_configs(root):
            train_run(cfg, overwrite=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    done.write_text("ok\n")
    return root

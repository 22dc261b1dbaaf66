"""The `probes` command: a typer app that only wires configs to library functions.

Every command takes `--config FILE.yaml` plus flags; flags given on the command line win over
the file, and every flag's default is the config's default. A user mistake (a `UserError` or an
invalid config) prints one line and exits with code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from probes.config import DataConfig, load_config
from probes.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Synthetic grounding probes for Transformer and Mamba backbones.")
console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True, highlight=False)


def user_errors(fn):
    """Turn a UserError into one red line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def flags_given(ctx: typer.Context, mapping: dict[str, str]) -> dict[str, Any]:
    """{config key: value} for the options the user typed (not defaults): `mapping` is
    option name → dotted config key."""
    given = {}
    for param, key in mapping.items():
        source = ctx.get_parameter_source(param)
        if source is not None and source.name == "COMMANDLINE":  # typer may vendor its own click
            given[key] = ctx.params[param]
    return given


@app.callback()
def _root() -> None:
    """Synthetic grounding probes for Transformer and Mamba backbones."""


ConfigOpt = typer.Option(None, "--config", help="YAML config file; flags given here win over it.")
_D = DataConfig.model_fields


# === generate ===


@app.command()
@user_errors
def generate(
    ctx: typer.Context,
    n: int = typer.Option(_D["n"].default, "--n", help="Number of context tokens N (2 … 32766)."),
    layout: str = typer.Option(_D["layout"].default, help="suffix | prefix."),
    train_size: int = typer.Option(_D["train_size"].default, help="Training examples (>= N)."),
    eval_size: int = typer.Option(_D["eval_size"].default, help="Held-out examples (>= N)."),
    seed: int = typer.Option(_D["seed"].default, help="Seed of the training set."),
    heldout_seed: Optional[int] = typer.Option(None, help="Seed of the held-out set [default: seed + 1000003]."),
    out: Path = typer.Option(Path("data"), help="Output directory: train.npz, heldout.npz, meta.json."),
    preview: int = typer.Option(0, help="Print this many rendered training examples."),
    overwrite: bool = typer.Option(False, help="Replace a different dataset already in --out."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Generate a suffix or prefix grounding dataset (model-independent index arrays)."""
    from probes import tasks

    keys = {k: k for k in ("n", "layout", "train_size", "eval_size", "seed", "heldout_seed")}
    cfg = load_config(DataConfig, config, flags_given(ctx, keys))
    if tasks.check_out_dir(out, cfg, overwrite):
        console.print(f"{out} already holds this dataset; nothing to do.")
        ds = tasks.load_dataset(out) if preview else None
    else:
        with console.status("generating") as status:
            ds = tasks.generate(cfg, status=lambda msg: status.update(msg))
            status.update(f"saving to {out}")
            tasks.save_dataset(ds, out)
        console.print(
            f"wrote {out}: {cfg.train_size:,} train + {cfg.eval_size:,} held-out, n={cfg.n}, "
            f"layout={cfg.layout}; held-out shares {ds.shared_pairs} (context, query) pairs with "
            f"training ({ds.resampled} training rows redrawn)"
        )
    for line in tasks.preview(ds.train, cfg.layout, preview) if ds else []:
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)


# === train / sweep ===


# === plot / demo ===


# === bench ===


# === vlm ===


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

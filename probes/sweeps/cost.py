"""Expected cost of a text sweep (`probes sweep --dry-run`): GPU-hours from `probes bench` figures."""

from __future__ import annotations

from probes.config import TrainConfig
from probes.tasks import read_meta

# `probes bench` training throughput (tokens/s; bf16 autocast, AdamW, B=64, L=203; SPEC §7)
BENCH_MACHINE = "NVIDIA H200, Dec 2026 (probes bench: bf16, AdamW, batch 64, length 203)"
BENCH_TOKENS_PER_S = {"pythia-160m": 318.9e3, "mamba-130m": 195.6e3, "pythia-410m": 139.9e3, "mamba-370m": 89.5e3,
                      "pythia-1.4b": 53.3e3, "mamba-1.4b": 36.4e3}
EVAL_COST = 1 / 3  # an evaluated token (forward only) costs about a third of a trained one


def bench_key(model: str) -> str:
    """The bench table's name for a model: `hf:EleutherAI/pythia-1.4b` → `pythia-1.4b`,
    `hf:state-spaces/mamba-1.4b-hf` → `mamba-1.4b` (same architecture and size)."""
    if not model.startswith("hf:"):
        return model
    return model.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix("-hf")


def seq_len(cfg: TrainConfig) -> int:
    """Model input length (probes.tasks.TokenLayout.seq_len) without building a tokenizer."""
    return cfg.n + (3 if cfg.layout == "suffix" else 4)


def run_gpu_hours(cfg: TrainConfig) -> tuple[float, float] | None:
    """(training, evaluation) GPU-hours of a run that trains all max_steps, None without a figure."""
    tokens_per_s = BENCH_TOKENS_PER_S.get(bench_key(cfg.model))
    if tokens_per_s is None:
        return None
    train_tokens = cfg.max_steps * cfg.batch_size * seq_len(cfg)
    evals = cfg.max_steps // cfg.effective_eval_every + 1 + (cfg.max_steps % cfg.effective_eval_every > 0)
    eval_tokens = evals * held_out_size(cfg) * seq_len(cfg)
    return train_tokens / tokens_per_s / 3600, eval_tokens * EVAL_COST / tokens_per_s / 3600


def held_out_size(cfg: TrainConfig) -> int:
    """Held-out examples of a run: its dataset's meta.json says, else eval_size."""
    meta = read_meta(cfg.data_dir) if cfg.data_dir is not None else None
    return int(meta["eval_size"]) if meta else cfg.eval_size


def describe_cost(cfgs: list[TrainConfig]) -> list[str]:
    """Lines of expected GPU-hours per model and in all, on the bench machine."""
    lines, total, unknown = [(f"expected GPU-hours on {BENCH_MACHINE}, at most (runs that reach the threshold "
                              f"stop early):")], [0.0, 0.0], []
    for model in dict.fromkeys(c.model for c in cfgs):
        runs = [c for c in cfgs if c.model == model]
        hours = [run_gpu_hours(c) for c in runs]
        if any(h is None for h in hours):
            unknown.append(model)
            lines.append(f"  {model}: {len(runs)} runs, unknown (no `probes bench` figure for {bench_key(model)})")
            continue
        train, ev = sum(h[0] for h in hours), sum(h[1] for h in hours)
        total[0], total[1] = total[0] + train, total[1] + ev
        lines.append(f"  {model} ({bench_key(model)}, {BENCH_TOKENS_PER_S[bench_key(model)] / 1e3:.1f}k tokens/s): "
                     f"{len(runs)} runs, {train + ev:,.1f} GPU-h (train {train:,.1f} + eval {ev:,.1f})")
    if len(lines) == len(unknown) + 1:  # no model has a figure
        lines.append("  total: unknown")
    else:
        lines.append(f"  total: {sum(total):,.1f} GPU-h" + (f" plus {', '.join(unknown)} (unknown)" if unknown else ""))
    return lines

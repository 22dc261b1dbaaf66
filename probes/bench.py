"""Throughput of Pythia and Mamba side by side, in one run: training tokens/s, peak memory, eval examples/s.

    run_bench(models: list[str], batch_size: int = 64, n: int = 200, steps: int = 100, warmup: int = 3,
              out_dir: str | Path = "bench", eval_batch_size: int | None = None, eval_steps: int = 10,
              lr: float = 1e-4, seed: int = 0, device: str = "cuda", max_seconds: float = 60.0,
              profile: list[str] | None = None) -> pandas.DataFrame

(`probes bench` calls this.) Each entry of `models` is `NAME[@BACKEND][:bBATCH][:gc][:fr][:cg]`: a
BACKBONES name, optionally the Mamba scan backend (auto | triton | mamba-ssm | torch | reference; default
auto), a batch size for that row only, `gc` for gradient checkpointing, `fr` for the fused
residual add + RMSNorm (probes.kernels.fuse_residual_norm, a lever not yet on in `probes train`) and
`cg` for the training step replayed as one CUDA graph (config key cuda_graphs, probes.graphs; on CUDA
only, a CPU row runs eagerly and says so in its `cuda_graphs` column). Example:
`["pythia-160m", "pythia-160m:cg", "mamba-130m", "mamba-130m:cg", "mamba-130m@reference:b16"]`.

What is measured, per row, is what `probes train` runs (probes.train), nothing of its own:
* the row's TrainConfig (`row_config`): the model, batch, N, lr, scan backend and gradient
  checkpointing of the row, every other setting the run default (precision auto = bf16 autocast
  on CUDA, grad_clip, weight decay, schedule); data generated from the seeds, just large enough;
* training step = one iteration of the loop (`RunStep`): encode the step's batch, copy it to the
  device, the step of `probes.train.make_train_step(model, opt, cfg, device)` (the eager
  `probes.train.train_step(model, opt, x, y, targets, autocast, grad_clip)`, or its CUDA graph on a
  `:cg` row, whose warm-up covers the graph's eager steps and its capture) with the
  optimizer of `probes.train.make_optimizer(model, cfg, device)` (AdamW, fused on CUDA) and the
  scheduler of `probes.train.make_scheduler(opt, cfg)`, stepped; the model is
  `probes.train.build_model` (N + 2 new token rows, fp32 master weights); s/step and tokens/s
  (batch x (N + 3) per step) over `steps` steps after `warmup`;
* peak memory = torch.cuda.max_memory_allocated over the timed steps (weights, gradients and
  optimizer state included);
* evaluation = `probes.train.evaluate` over a held-out set of eval_batch_size x eval_steps
  examples (default eval batch 4 x batch): examples/s.
A row that runs out of memory is kept with status `oom`. Ratios: each Mamba row against the
Pythia row of matching size (`vs_pythia`; a `:cg` row against a `:cg` Pythia row where there is
one), each fast Mamba row against the same model's `@reference` row (`vs_reference`, tokens/s),
and each `:cg` row against the same spec without it (`vs_eager`, tokens/s). Writes bench.csv, bench.md and bench.json to out_dir.
"""

from __future__ import annotations

import gc
import json
import math
import platform
import time
from pathlib import Path

import torch

from probes.errors import UserError

# Pythia of matching size for each Mamba (Gu & Dao 2023, table 3 pairs)
PAIRS = {"mamba-130m": "pythia-160m", "mamba-370m": "pythia-410m", "mamba-790m": "pythia-1b",
         "mamba-1.4b": "pythia-1.4b", "mamba-2.8b": "pythia-2.8b", "mamba-tiny": "pythia-tiny"}


# spec flags: gradient checkpointing, fused residual + RMSNorm, CUDA graphs
FLAGS = ("gc", "fr", "cg")


# === Models ===


def parse_spec(spec: str) -> dict:
    """`mamba-130m@triton:b16:gc:fr:cg` -> {name, backend, batch, gc, fr, cg}."""
    head, *opts = spec.split(":")
    name, _, backend = head.partition("@")
    out = {"spec": spec, "name": name, "backend": backend or None, "batch": None, **dict.fromkeys(FLAGS, False)}
    for o in opts:
        if o in FLAGS:
            out[o] = True
        elif o.startswith("b") and o[1:].isdigit():
            out["batch"] = int(o[1:])
        else:
            raise UserError(f"bad option '{o}' in --model '{spec}' (allowed: NAME[@BACKEND][:bNN][:gc][:fr][:cg])")
    return out


def row_config(spec: dict, batch_size: int, n: int, steps: int, warmup: int, eval_batch_size: int | None,
               eval_steps: int, lr: float, seed: int, device: str):
    """The TrainConfig of a run this row stands for: its model, batch, N, lr, scan backend, gradient
    checkpointing and CUDA graphs; every other setting (precision, grad_clip, weight decay, schedule) is
    the run default. The data sets are just large enough for the timed steps and evaluation."""
    from probes.config import TrainConfig

    B = spec["batch"] or batch_size
    EB = eval_batch_size or 4 * B
    return TrainConfig(model=spec["name"], n=n, lr=lr, seed=seed, batch_size=B, device=device,
                       scan_backend=spec["backend"] or "auto", gradient_checkpointing=spec["gc"],
                       cuda_graphs=spec.get("cg", False),
                       eval_batch_size=EB, train_size=max(n, B * (steps + warmup + 3)),
                       eval_size=max(n, EB * eval_steps))


# === Timing ===


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, n: int, warmup: int, device: str, max_seconds: float) -> tuple[float, int]:
    """Seconds per call, averaged over up to n calls after `warmup` (stops once past max_seconds)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    done = 0
    while done < n:
        fn()
        done += 1
        if time.perf_counter() - t0 > max_seconds:
            break
    _sync(device)
    return (time.perf_counter() - t0) / done, done


def _peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if str(device).startswith("cuda") else None


def _free(device):
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


class RunStep:
    """One iteration of probes.train's loop, as the loop runs it: encode the batch of `step`
    (BatchOrder), copy it to the device, the step of `train.make_train_step` (`train.train_step`:
    zero_grad, forward through the scored slots, loss, backward, clipping, optimizer step; or its
    CUDA graph when cfg.cuda_graphs) and the scheduler's step."""

    def __init__(self, cfg, device: torch.device, fuse_residual: bool = False):
        from probes import train
        from probes.graphs import GraphedTrainStep
        from probes.tasks import TokenLayout
        from probes.train import make_train_step

        self.train, self.cfg, self.device = train, cfg, device
        self.autocast = train.resolve_precision(cfg.precision, device)
        self.data = train.load_data(cfg)
        self.bb = train.build_model(cfg, device, None)
        self.backend = train.set_scan_backend(self.bb, cfg.scan_backend)
        if fuse_residual:  # the speed lever of probes.kernels (off in probes train)
            from probes.kernels import fuse_residual_norm

            self.fused_residual = fuse_residual_norm(self.bb.model)
        if cfg.gradient_checkpointing:
            self.bb.model.gradient_checkpointing_enable()
        self.layout = TokenLayout.build(cfg.n, cfg.layout, self.bb.base_vocab, cfg.tokens, self.bb.eos_id)
        self.targets = train.Targets.of(self.layout)
        self.order = train.BatchOrder(len(self.data.train), cfg.batch_size, cfg.seed)
        self.held = train.HeldOut(self.layout, self.data.heldout, device)  # the loop encodes it once too
        self.model = self.bb.model
        self.model.train()
        self.opt = train.make_optimizer(self.model, cfg, device)
        self.sched = train.make_scheduler(self.opt, cfg)
        self.train_step = make_train_step(self.model, self.opt, cfg, device)
        self.graphed = isinstance(self.train_step, GraphedTrainStep)
        self.step = 0

    def __call__(self) -> torch.Tensor:
        x_np, answers_np = self.layout.encode(self.data.train, self.order.rows(self.step))
        x = torch.from_numpy(x_np).to(self.device, non_blocking=True)
        y = self.targets.ids(torch.from_numpy(answers_np).to(self.device, non_blocking=True))
        loss = self.train_step(x, y, self.targets)
        self.sched.step()
        self.step += 1
        return loss

    def evaluate(self) -> None:
        """probes.train.evaluate on the held-out set (cfg.eval_size examples, cfg.eval_batch_size)."""
        self.train.evaluate(self.model, self.held, self.targets, self.cfg.eval_batch_size, self.autocast)

    def drop_optimizer(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.opt = self.sched = self.train_step = None  # a graph holds its memory pool until dropped


def bench_one(spec: dict, batch_size: int, n: int, steps: int, warmup: int, eval_batch_size: int | None,
              eval_steps: int, lr: float, seed: int, device: str, max_seconds: float,
              profile_dir: Path | None = None) -> dict:
    """One row: the run's model, optimizer and step (RunStep), timed; then the run's evaluation."""
    from probes import train

    cfg = row_config(spec, batch_size, n, steps, warmup, eval_batch_size, eval_steps, lr, seed, device)
    B, L = cfg.batch_size, n + 3
    row = {"model": spec["spec"], "name": spec["name"], "batch_size": B, "seq_len": L, "grad_ckpt": spec["gc"]}
    dev = train.resolve_device(cfg.device)
    step = None
    try:
        torch.manual_seed(seed)
        with train.torch_threads(cfg.threads, cfg.device, [cfg.model]):
            step = RunStep(cfg, dev, fuse_residual=spec.get("fr", False))
            row.update(family=step.bb.family, backend=step.backend or "-",
                       fused_residual=getattr(step, "fused_residual", False), cuda_graphs=step.graphed,
                       precision="bf16" if step.autocast is not None else "fp32", grad_clip=cfg.grad_clip,
                       params_M=round(train.count_parameters(step.model) / 1e6, 1))
            if profile_dir is not None:
                _profile(step, device, profile_dir / f"profile_{_safe(spec['spec'])}.txt")
            _time_training(row, step, steps, warmup, device, max_seconds)
            step.drop_optimizer()  # free the optimizer state before evaluation
            _free(device)
            row["eval_batch_size"] = cfg.eval_batch_size
            _time_eval(row, step, cfg.eval_size, device, max_seconds)
    except RuntimeError as err:
        if not _is_oom(err):
            row.update(status="failed", error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
        else:
            row.update(status="oom")
    finally:
        step = None
        _free(device)
    return row


def _time_training(row: dict, step: RunStep, steps: int, warmup: int, device: str, max_seconds: float) -> None:
    B, L = row["batch_size"], row["seq_len"]
    if row["backend"] == "reference":  # the reference scan is slow and its timing stable
        warmup = 1
    if step.graphed:  # the graph's eager steps and its capture are warm-up, never timed
        from probes.graphs import EAGER_STEPS

        warmup = max(warmup, EAGER_STEPS + 1)
    try:
        s, done = _timed(step, steps, warmup, device, max_seconds)
        row.update(train_s_per_step=s, train_steps_timed=done, train_tokens_per_s=B * L / s,
                   train_examples_per_s=B / s, peak_mem_GB=_peak_gb(device), status="ok")
    except RuntimeError as err:
        if not _is_oom(err):
            raise
        row.update(status="oom", peak_mem_GB=_peak_gb(device))


def _time_eval(row: dict, step: RunStep, size: int, device: str, max_seconds: float) -> None:
    try:
        s, _ = _timed(step.evaluate, 2, 1, device, max_seconds)
        row.update(eval_examples_per_s=size / s, eval_peak_mem_GB=_peak_gb(device))
    except RuntimeError as err:
        if not _is_oom(err):
            raise
        row["eval_status"] = "oom"


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _profile(step, device: str, path: Path, n: int = 3) -> None:
    """Write the top CUDA kernels of n training steps (after 2 warm-up steps) to `path`."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        step()
    _sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        _sync(device)
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=key, row_limit=40)
    except Exception:  # noqa: BLE001 - newer torch renames the CUDA column
        table = prof.key_averages().table(sort_by="device_time_total", row_limit=40)
    path.write_text(f"{n} training steps\n{table}\n")


# === Table ===


def add_ratios(df):
    """The table with its ratio columns (module docstring): vs_pythia_tokens, vs_pythia_mem,
    vs_reference, and vs_eager where a `:cg` row has its eager twin."""
    df["vs_pythia_tokens"] = None
    df["vs_pythia_mem"] = None
    df["vs_reference"] = None
    _vs_eager(df)
    for i, r in df.iterrows():
        if r.get("family") != "mamba" or r.get("status") != "ok":
            continue
        pair = PAIRS.get(r["name"])
        p = df[(df["name"] == pair) & (df["status"] == "ok")] if pair else df.iloc[0:0]
        if "cuda_graphs" in df.columns and (p["cuda_graphs"] == r["cuda_graphs"]).any():
            p = p[p["cuda_graphs"] == r["cuda_graphs"]]  # graphed against graphed, eager against eager
        if len(p):
            df.at[i, "vs_pythia_tokens"] = r["train_tokens_per_s"] / p.iloc[0]["train_tokens_per_s"]
            if r.get("peak_mem_GB") and p.iloc[0].get("peak_mem_GB"):
                df.at[i, "vs_pythia_mem"] = r["peak_mem_GB"] / p.iloc[0]["peak_mem_GB"]
        if r.get("backend") != "reference":
            ref = df[(df["name"] == r["name"]) & (df["backend"] == "reference") & (df["status"] == "ok")]
            if len(ref):
                df.at[i, "vs_reference"] = r["train_tokens_per_s"] / ref.iloc[0]["train_tokens_per_s"]
    return df


def _vs_eager(df) -> None:
    """`vs_eager`: tokens/s of each `:cg` row over the same spec's row without `:cg`."""
    df["vs_eager"] = None
    ok = df[df["status"] == "ok"] if "status" in df.columns else df.iloc[0:0]
    eager = {spec_without_cg(r["model"]): r["train_tokens_per_s"] for _, r in ok.iterrows()
             if not parse_spec(r["model"])["cg"]}
    for i, r in ok.iterrows():
        base = spec_without_cg(r["model"])
        if parse_spec(r["model"])["cg"] and base in eager:
            df.at[i, "vs_eager"] = r["train_tokens_per_s"] / eager[base]
    if df["vs_eager"].isna().all():  # no `:cg` row with its eager twin: no column
        del df["vs_eager"]


def spec_without_cg(spec: str) -> str:
    """`mamba-130m:cg:b16` -> `mamba-130m:b16`."""
    head, *opts = spec.split(":")
    return ":".join([head, *(o for o in opts if o != "cg")])


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else (f"{v:.3g}" if abs(v) >= 0.01 else f"{v:.2e}")
    return str(v)


MD_COLS = [("model", "model"), ("backend", "scan"), ("batch_size", "batch"), ("params_M", "params (M)"),
           ("train_s_per_step", "s/step"), ("train_tokens_per_s", "train tokens/s"),
           ("peak_mem_GB", "peak mem (GiB)"), ("eval_examples_per_s", "eval examples/s"),
           ("vs_pythia_tokens", "tokens/s vs Pythia"), ("vs_pythia_mem", "memory vs Pythia"),
           ("vs_reference", "vs reference scan"), ("vs_eager", "CUDA graph vs eager"), ("status", "status")]


def to_markdown(df, header: str = "") -> str:
    cols = [(c, t) for c, t in MD_COLS if c in df.columns]
    lines = [header] if header else []
    lines += ["| " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c, _ in cols) + " |")
    return "\n".join(lines) + "\n"


def environment(device: str) -> dict:
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


DEVICES = ("cuda", "cpu")  # cuda[:i] too


def check_args(models: list[str], batch_size: int, n: int, steps: int, warmup: int, device: str,
               eval_batch_size: int | None = None, max_seconds: float = 60.0) -> None:
    """A UserError naming the first bad argument and what is allowed, before anything loads."""
    from probes.backbones import check_model_name
    from probes.config import MAX_N

    for spec in models:
        check_model_name(parse_spec(spec)["name"])
    rules = [("--batch-size", batch_size, batch_size >= 1, "1 or more"),
             ("--n", n, 2 <= n <= MAX_N, f"2 … {MAX_N}"),
             ("--steps", steps, steps >= 1, "1 or more timed steps"),
             ("--warmup", warmup, warmup >= 0, "0 or more"),
             ("--eval-batch-size", eval_batch_size, eval_batch_size is None or eval_batch_size >= 1, "1 or more"),
             ("--max-seconds", max_seconds, max_seconds > 0, "more than 0"),
             ("--device", device, device.split(":")[0] in DEVICES and (device.count(":") == 0 or (
                 device.startswith("cuda:") and device[5:].isdigit())), "cuda, cuda:I, cpu")]
    for flag, value, ok, allowed in rules:
        if not ok:
            raise UserError(f"{flag} {value}: allowed: {allowed}")


def run_bench(models: list[str], batch_size: int = 64, n: int = 200, steps: int = 100, warmup: int = 3,
              out_dir: str | Path = "bench", eval_batch_size: int | None = None, eval_steps: int = 10,
              lr: float = 1e-4, seed: int = 0, device: str = "cuda", max_seconds: float = 60.0,
              profile: list[str] | None = None, verbose: bool = True):
    """Time every model spec in one process; write bench.csv / bench.md / bench.json; return the table."""
    import pandas as pd

    check_args(models, batch_size, n, steps, warmup, device, eval_batch_size, max_seconds)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    specs = [parse_spec(m) for m in models]
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        row = bench_one(spec, batch_size, n, steps, warmup, eval_batch_size, eval_steps, lr, seed, device,
                        max_seconds, out if profile and spec["spec"] in profile else None)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        if verbose:
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        pd.DataFrame(rows).to_csv(out / "bench.csv", index=False)  # partial results survive a crash
    df = add_ratios(pd.DataFrame(rows))
    env = environment(device)
    args = {"models": models, "batch_size": batch_size, "n": n, "seq_len": n + 3, "steps": steps,
            "warmup": warmup, "eval_batch_size": eval_batch_size, "eval_steps": eval_steps, "lr": lr, "seed": seed,
            "device": device}
    df.to_csv(out / "bench.csv", index=False)
    header = (f"Training: probes.train's step (precision auto, AdamW fused on CUDA, grad_clip, scheduler), "
              f"batch {batch_size} (unless the row says), length {n + 3} (N={n}); eval: probes.train.evaluate.\n"
              f"{env.get('gpu', device)}; torch {env['torch']}, triton {env['triton']}, "
              f"transformers {env['transformers']}.\n")
    (out / "bench.md").write_text(to_markdown(df, header))
    (out / "bench.json").write_text(json.dumps({"args": args, "env": env, "rows": json.loads(df.to_json(orient="records"))},
                                               indent=1))
    return df


__all__ = ["FLAGS", "PAIRS", "RunStep", "add_ratios", "bench_one", "parse_spec", "row_config", "run_bench", "spec_without_cg",
           "to_markdown"]

"""The training step replayed as one CUDA graph (issue 17 lever; config key `cuda_graphs`).

Small models (20M–160M parameters, batch 64, short sequences) spend ~1 ms of GPU work per step
but 10–15 ms of Python and kernel launches; a captured step is one `graph.replay()`.

    step = probes.train.make_train_step(model, opt, cfg, device)   # after make_optimizer (and resume)
    loss = step(x, y, targets); sched.step()           # == probes.train.train_step(model, opt, x, y,
                                                       #    targets, autocast, cfg.grad_clip)

`probes.train.make_train_step` returns the eager `probes.train.train_step` (model, optimizer, autocast and
grad_clip bound) when `cfg.cuda_graphs` is off or the device is not CUDA, else a GraphedTrainStep:

* its first EAGER_STEPS calls are ordinary eager steps on a side stream: real updates on the real
  batches (so the losses are those of the eager loop); they also run Triton autotuning, cuBLAS
  and autograd lazy init, and create the optimizer state outside the graph's memory pool;
* the next call captures zero_grad (set_to_none, just before capture, so backward allocates the
  gradients in the graph's pool) + forward (autocast with cache_enabled=False) + loss + backward +
  clip_grad_norm_(foreach=True, no host sync) + optimizer.step into one graph; then it and every
  later call copy x and y into static buffers, replay, and return a copy of the loss;
* the learning rate: the graph reads each parameter group's lr from a device tensor, refilled
  (one fill kernel, only when the value changed) from the group's float lr at every call. The
  scheduler keeps writing floats, as in the eager loop, so `opt.state_dict()` and
  `sched.state_dict()` are exactly the eager path's (float lr, capturable False): a checkpoint
  made by either path resumes with either. (torch >= 2.2 schedulers fill a tensor lr in place, but
  `probes.schedules.build_schedule` assigns floats, so relying on that would silently freeze lr.)
  The tensor and capturable=True are put into the groups only while capturing;
* numerics: the eager step's, with two exceptions of rounding size. The fused AdamW kernel reads
  a tensor lr as float32 and a float lr as double, so updates agree bit for bit only where each
  lr is a float32 number (2**-8 * k/32, say). And under capture transformers skips GPT-NeoX's
  data-dependent packed-sequence check (a host sync in every eager forward) and gives SDPA a
  materialized causal mask instead of is_causal=True: the same attention by another kernel.
  Mamba has neither: with float32 lrs its graphed run is the eager run, bit for bit;
* `opt.load_state_dict` replaces the optimizer state tensors the graph points at: a post-load
  hook drops the graph, and the next EAGER_STEPS calls are eager again before a new capture;
* shapes are static: a call whose (x, y) shape or dtype, or whose scored slots, differ from the
  captured ones runs eagerly (counted in `eager_calls`); the graph stays for the next full batch.
  (probes.train's BatchOrder always yields full batches, so a run never meets this.)

Requirements: an optimizer whose groups have `capturable` (torch's Adam/AdamW; probes.train's
make_optimizer gives fused AdamW on CUDA); the model's weights updated in place only; train mode.
A step that cannot be captured (a host sync inside the model, say) is a UserError naming the cause
and the fix (run without cuda_graphs); there is no silent fallback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import torch

from probes.backbones import compute_loss, slot_logits
from probes.errors import UserError


class Targets(Protocol):
    """What the step reads of probes.train.Targets: the scored slots (typed here, so that this
    module needs nothing from probes.train, which imports it)."""

    slots: list[int]


EAGER_STEPS = 3  # eager warm-up calls before the capture (torch's own recipe uses 3)

TrainStep = Callable[[torch.Tensor, torch.Tensor, "Targets"], torch.Tensor]


class GraphedTrainStep:
    """probes.train.train_step captured once and replayed: `step(x, y, targets) -> detached loss`.

    On a device other than CUDA every call is eager (the same step body; for tests)."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, autocast: torch.dtype | None,
                 grad_clip: float | None, eager_steps: int = EAGER_STEPS):
        if eager_steps < 1:  # the optimizer state must exist before capture, outside the graph's pool
            raise UserError(f"eager_steps {eager_steps}: allowed: 1 or more")
        if not all("capturable" in group for group in opt.param_groups):
            raise UserError(f"cuda_graphs: optimizer {type(opt).__name__} cannot be captured "
                            f"(allowed: torch.optim.Adam / AdamW)")
        self.model, self.opt, self.autocast, self.grad_clip = model, opt, autocast, grad_clip
        self.eager_steps = eager_steps
        self.device = next(model.parameters()).device
        self.lrs = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in opt.param_groups]
        self._lr_values: list[float | None] = [None] * len(self.lrs)
        self._slots: dict[tuple[int, ...], torch.Tensor] = {}
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.replays = self.eager_calls = self.captures = 0
        self.reset()
        opt.register_load_state_dict_post_hook(lambda _opt: self.reset())

    def reset(self) -> None:
        """Drop the graph: the next `eager_steps` calls are eager, then a new capture."""
        if getattr(self, "graph", None) is not None:
            torch.cuda.synchronize(self.device)  # no replay in flight when the graph and its pool go
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # x, y, loss
        self._warm = 0
        self._lr_values = [None] * len(self.lrs)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, targets: Targets) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype, tuple(targets.slots))
        if self.graph is None and (self._warm < self.eager_steps or self._stream is None):
            self._warm += 1
            return self._eager(x, y, key[-1], side_stream=True)
        if self.graph is None:
            self._capture(x, y, key)
        elif key != self.key:
            return self._eager(x, y, key[-1], side_stream=False)
        self._refresh_lr()
        static_x, static_y, static_loss = self.static
        static_x.copy_(x, non_blocking=True)
        static_y.copy_(y, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return static_loss.clone()

    # --- the step body (eager and captured) ---

    def _slot_tensor(self, slots: tuple[int, ...]) -> torch.Tensor:
        """The scored slots as a device tensor: indexing with a Python list copies it from pageable
        host memory at every call, which a graph cannot capture."""
        if slots not in self._slots:
            self._slots[slots] = torch.tensor(slots, dtype=torch.long, device=self.device)
        return self._slots[slots]

    def _update(self, x: torch.Tensor, y: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """forward, loss, backward, clipping, optimizer step (gradients already None)."""
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None,
                            cache_enabled=False):
            logits = slot_logits(self.model, x, slots)
        loss = compute_loss(logits, y)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        self.opt.step()
        return loss.detach()

    def _eager(self, x: torch.Tensor, y: torch.Tensor, slots: tuple[int, ...], side_stream: bool) -> torch.Tensor:
        self.eager_calls += 1
        slot_ids = self._slot_tensor(slots)
        if not side_stream or self._stream is None:
            self.opt.zero_grad(set_to_none=True)
            return self._update(x, y, slot_ids)
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            self.opt.zero_grad(set_to_none=True)
            loss = self._update(x, y, slot_ids)
        current.wait_stream(self._stream)
        return loss

    # --- capture ---

    def _refresh_lr(self) -> None:
        """Each group's lr (a float the scheduler writes) into the device tensor the graph reads."""
        for i, (group, lr) in enumerate(zip(self.opt.param_groups, self.lrs, strict=True)):
            value = group["lr"]
            if isinstance(value, torch.Tensor):
                lr.copy_(value, non_blocking=True)
            elif value != self._lr_values[i]:
                lr.fill_(value)
                self._lr_values[i] = value

    @contextlib.contextmanager
    def _capturable_groups(self):
        """The groups with the lr tensors and capturable=True, only while capturing."""
        saved = [(group["lr"], group["capturable"]) for group in self.opt.param_groups]
        for group, lr in zip(self.opt.param_groups, self.lrs, strict=True):
            group["lr"], group["capturable"] = lr, True
        try:
            yield
        finally:
            for group, (lr, capturable) in zip(self.opt.param_groups, saved, strict=True):
                group["lr"], group["capturable"] = lr, capturable

    def _capture(self, x: torch.Tensor, y: torch.Tensor, key: tuple) -> None:
        static_x, static_y = x.clone(), y.clone()
        slot_ids = self._slot_tensor(key[-1])
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        self.opt.zero_grad(set_to_none=True)  # backward allocates the gradients in the graph's pool
        try:
            with self._capturable_groups(), torch.cuda.graph(graph):
                static_loss = self._update(static_x, static_y, slot_ids)
        except RuntimeError as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise UserError(f"cuda_graphs: the training step could not be captured as a CUDA graph ({first}); "
                            f"run without cuda_graphs") from None
        self.graph, self.key, self.static = graph, key, (static_x, static_y, static_loss)
        self.captures += 1


__all__ = ["EAGER_STEPS", "GraphedTrainStep", "TrainStep"]

"""Learning-rate schedules (config key `lr_schedule`): a LambdaLR per name, stepped once per update.

    sched = build_schedule(opt, "linear", warmup=7800, total=78_000, min_lr_ratio=0.0)
    opt.step(); sched.step()          # the factor of update k is sched.lr_lambdas[0](k)

* constant: warmup then flat. Its warmup gives update k the factor min(1, (k + 1) / warmup), as
  this toolkit always has, so runs made before schedules existed train exactly as they did.
* linear: HF's `get_linear_schedule_with_warmup` (what the HF Trainer uses by default: factor
  k / warmup, then linear decay to 0 at `total`); with a floor, the same line from 1 down to
  `min_lr_ratio` instead of 0.
* cosine: HF's `get_cosine_with_min_lr_schedule_with_warmup` (half a cosine from 1 to the floor).

`start` > 0 builds the schedule of a resumed run: update `start` is the next one.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from probes.errors import UserError

ScheduleBuilder = Callable[[Optimizer, int, int, float, int], LambdaLR]


def _constant(opt: Optimizer, warmup: int, total: int, floor: float, last_epoch: int) -> LambdaLR:
    def factor(k: int) -> float:
        return min(1.0, (k + 1) / warmup) if warmup else 1.0

    return LambdaLR(opt, factor, last_epoch=last_epoch)


def _linear(opt: Optimizer, warmup: int, total: int, floor: float, last_epoch: int) -> LambdaLR:
    if floor == 0:
        from transformers import get_linear_schedule_with_warmup

        return get_linear_schedule_with_warmup(opt, warmup, total, last_epoch=last_epoch)

    def factor(k: int) -> float:  # HF's linear schedule, decaying to `floor` instead of 0
        if k < warmup:
            return k / max(1, warmup)
        return floor + (1.0 - floor) * max(0.0, (total - k) / max(1, total - warmup))

    return LambdaLR(opt, factor, last_epoch=last_epoch)


def _cosine(opt: Optimizer, warmup: int, total: int, floor: float, last_epoch: int) -> LambdaLR:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, last_epoch=last_epoch,
                                                       min_lr_rate=floor)


SCHEDULES: dict[str, ScheduleBuilder] = {"constant": _constant, "linear": _linear, "cosine": _cosine}


def build_schedule(opt: Optimizer, name: str, warmup: int, total: int, min_lr_ratio: float = 0.0,
                   start: int = 0, base_lr: float | None = None) -> LambdaLR:
    """The LambdaLR of schedule `name` over `total` updates; its factor multiplies each group's
    base lr (`base_lr`, default the lr each group holds). With `start` > 0 the groups get the lr of
    update `start` (a resumed run), whatever lr they held."""
    if name not in SCHEDULES:
        raise UserError(f"unknown lr_schedule '{name}' (allowed: {', '.join(SCHEDULES)})")
    for group in opt.param_groups:
        base = base_lr if base_lr is not None else group.get("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] = base
    return SCHEDULES[name](opt, warmup, total, min_lr_ratio, start - 1)


def lr_of_update(sched: LambdaLR, update: int) -> float:
    """The learning rate (first parameter group) of update `update` (0-based), without stepping."""
    return sched.base_lrs[0] * sched.lr_lambdas[0](update)

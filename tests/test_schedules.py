"""probes.schedules and the schedule keys of TrainConfig: constant | linear | cosine, warmup, floor."""

import math
import typing

import pytest
import torch

from probes import config as config_mod
from probes.config import TrainConfig
from probes.errors import UserError
from probes.schedules import SCHEDULES, build_schedule, lr_of_update


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def factors(name: str, warmup: int, total: int, floor: float = 0.0) -> list[float]:
    """The lr of updates 0 … total - 1 at lr 1, read from the optimizer as the loop steps it."""
    opt = _opt()
    sched = build_schedule(opt, name, warmup, total, floor)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_the_registry_names_are_the_config_choices():
    assert set(SCHEDULES) == set(typing.get_args(config_mod.Schedule))


def test_constant_keeps_the_toolkits_warmup_so_old_runs_train_as_before():
    assert factors("constant", 0, 6) == [1.0] * 6
    assert factors("constant", 4, 6) == [min(1.0, (k + 1) / 4) for k in range(6)]


def test_linear_is_the_hf_trainers_schedule():
    got = factors("linear", 2, 10)
    assert got[:2] == [0.0, 0.5]  # k / warmup
    assert got[2:] == pytest.approx([(10 - k) / 8 for k in range(2, 10)])  # to 0 at update 10


def test_linear_with_a_floor_decays_to_the_floor_not_to_zero():
    got = factors("linear", 2, 10, floor=0.1)
    assert got[2] == pytest.approx(1.0)
    assert min(got[2:]) == pytest.approx(0.1 + 0.9 * 1 / 8)
    opt = _opt()
    assert lr_of_update(build_schedule(opt, "linear", 2, 10, 0.1), 10) == pytest.approx(0.1)
    assert lr_of_update(build_schedule(_opt(), "linear", 2, 10, 0.1), 50) == pytest.approx(0.1)


def test_cosine_goes_from_one_to_the_floor_along_half_a_cosine():
    sched = build_schedule(_opt(), "cosine", 10, 110, 0.2)
    assert lr_of_update(sched, 5) == pytest.approx(0.5)
    assert lr_of_update(sched, 10) == pytest.approx(1.0)
    assert lr_of_update(sched, 60) == pytest.approx(0.2 + 0.8 * 0.5)
    assert lr_of_update(sched, 110) == pytest.approx(0.2)
    assert lr_of_update(sched, 35) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.25)))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_a_schedule_resumed_at_update_k_continues_where_the_stepped_one_is(name):
    stepped = factors(name, 3, 12, 0.1)
    for k in (1, 5, 11):
        opt = _opt()
        opt.param_groups[0]["lr"] = 123.0  # whatever a checkpoint left there
        opt.param_groups[0]["initial_lr"] = 1.0  # the base, as a checkpoint holds it
        sched = build_schedule(opt, name, 3, 12, 0.1, start=k)
        assert opt.param_groups[0]["lr"] == pytest.approx(stepped[k])
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(stepped[k + 1] if k + 1 < 12 else lr_of_update(sched, 12))


def test_the_lr_of_an_update_reads_the_schedule_without_stepping_it():
    sched = build_schedule(_opt(0.01), "linear", 2, 10)
    assert [lr_of_update(sched, k) for k in (0, 1, 2, 6)] == pytest.approx([0.0, 0.005, 0.01, 0.005])
    assert sched.last_epoch == 0


def test_an_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="unknown lr_schedule 'step' \\(allowed: constant, linear, cosine\\)"):
        build_schedule(_opt(), "step", 0, 10)


def test_warmup_ratio_counts_steps_as_the_hf_trainer_does():
    assert TrainConfig(max_steps=78_000, warmup_ratio=0.1).warmup_steps == 7_800
    assert TrainConfig(max_steps=15, warmup_ratio=0.1).warmup_steps == 2  # ceil
    assert TrainConfig(max_steps=15, warmup=4).warmup_steps == 4
    assert TrainConfig().warmup_steps == 0 and TrainConfig().lr_schedule == "constant"


@pytest.mark.parametrize("data, message", [
    ({"lr_schedule": "step"}, "lr_schedule: Input should be 'constant', 'linear' or 'cosine' (got 'step')"),
    ({"warmup_ratio": 1.0}, "warmup_ratio: Input should be less than 1 (got 1.0)"),
    ({"warmup_ratio": -0.1}, "warmup_ratio: Input should be greater than or equal to 0 (got -0.1)"),
    ({"warmup": 10, "warmup_ratio": 0.1}, "warmup=10 and warmup_ratio=0.1 are both set (allowed: one of them)"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio: Input should be less than or equal to 1 (got 1.5)"),
])
def test_bad_schedule_settings_are_one_line_errors(data, message):
    with pytest.raises(UserError) as err:
        config_mod.validate(TrainConfig, data)
    assert str(err.value) == message

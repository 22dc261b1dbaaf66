"""probes.trackers: one logger interface, trackers chosen by a spec string, failures never end a run."""

import sys
import types
import warnings

import pytest

from probes import trackers
from probes.config import TrainConfig
from probes.errors import UserError
from probes.trackers import TRACKERS, make_trackers, parse_spec


class FakeTracker:
    def __init__(self, run_dir, start_step=0):
        self.run_dir, self.start_step, self.calls = run_dir, start_step, []

    def log_config(self, config):
        self.calls.append(("config", config))

    def log(self, step, metrics):
        self.calls.append(("log", step, dict(metrics)))

    def close(self):
        self.calls.append(("close",))


class Broken(FakeTracker):
    def log(self, step, metrics):
        raise RuntimeError("disk full")


@pytest.fixture
def fakes(monkeypatch):
    made = []

    def builder(cls):
        def make(run_dir, start_step=0):
            made.append(cls(run_dir, start_step))
            return made[-1]
        return make

    monkeypatch.setitem(TRACKERS, "fake", builder(FakeTracker))
    monkeypatch.setitem(TRACKERS, "broken", builder(Broken))
    return made


def test_the_spec_names_trackers_once_each_in_order():
    assert parse_spec("wandb, tensorboard,wandb") == ["wandb", "tensorboard"]
    assert parse_spec("") == parse_spec(None) == parse_spec("none") == []
    with pytest.raises(UserError, match="unknown tracker 'mlflow' in --log-to .allowed: tensorboard, wandb, none"):
        parse_spec("tensorboard,mlflow")


def test_each_tracker_gets_the_config_and_every_row(fakes, tmp_path):
    cfg = TrainConfig(model="pythia-tiny", out=str(tmp_path))
    with make_trackers("fake", tmp_path, cfg, start_step=5) as t:
        t.log(10, {"loss": 0.5, "accuracy": 0.25})
    (fake,) = fakes
    assert fake.run_dir == tmp_path and fake.start_step == 5
    assert fake.calls[0] == ("config", cfg.model_dump(mode="json"))
    assert fake.calls[1:] == [("log", 10, {"loss": 0.5, "accuracy": 0.25}), ("close",)]


def test_no_tracker_is_a_trackers_that_does_nothing(tmp_path):
    t = make_trackers("", tmp_path, {"a": 1})
    assert not t
    t.log(0, {"loss": 1.0})
    t.close()
    assert list(tmp_path.iterdir()) == []


def test_a_failing_tracker_is_dropped_with_a_warning_and_the_others_go_on(fakes, tmp_path):
    t = make_trackers("broken,fake", tmp_path)
    with pytest.warns(UserWarning, match="tracker broken failed .RuntimeError: disk full"):
        t.log(1, {"loss": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.log(2, {"loss": 0.5})
    t.close()
    broken, fake = fakes
    assert broken.calls == [("close",)]
    assert [c[1] for c in fake.calls if c[0] == "log"] == [1, 2]


def test_scalars_keep_only_finite_numbers():
    row = {"step": 3, "loss": 0.5, "lr": None, "stage": "1", "nan": float("nan"), "flag": True}
    assert trackers.scalars(row) == {"step": 3.0, "loss": 0.5}


def test_a_missing_package_is_one_line_naming_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(UserError, match=r"--log-to wandb needs the wandb package \(pip install wandb\)"):
        make_trackers("wandb", tmp_path)


def test_wandb_runs_offline_unless_wandb_mode_says_otherwise(monkeypatch, tmp_path):
    inits = []

    class Run:
        config = types.SimpleNamespace(update=lambda *a, **k: None)
        log = finish = staticmethod(lambda *a, **k: None)

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: inits.append(kw) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    make_trackers("wandb", tmp_path / "r1").close()
    monkeypatch.setenv("WANDB_MODE", "online")
    make_trackers("wandb", tmp_path / "r1").close()
    assert [kw["mode"] for kw in inits] == ["offline", "online"]
    assert inits[0]["id"] == inits[1]["id"] and inits[0]["resume"] == "allow"  # the same run, resumed
    assert inits[0]["dir"] == str(tmp_path / "r1" / "wandb")


def test_tensorboard_writes_event_files_and_a_resume_purges_later_steps(tmp_path):
    pytest.importorskip("tensorboard")  # an optional extra: [track]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with make_trackers("tensorboard", tmp_path, {"model": "pythia-tiny"}) as t:
        for step in (0, 10, 20):
            t.log(step, {"accuracy": step / 100, "lr": None})
    with make_trackers("tensorboard", tmp_path, start_step=10) as t:  # resumed from a step-10 checkpoint
        t.log(20, {"accuracy": 0.5})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("accuracy")] == [(0, 0.0), (10, 0.1), (20, 0.5)]
    assert "config/text_summary" in events.Tags()["tensors"]

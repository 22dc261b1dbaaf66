"""probes.config: typed, strict configs that survive a YAML round trip."""

import pytest

from probes.config import DataConfig, TokenConfig, load_config, save_config, set_dotted
from probes.errors import UserError


def test_defaults_are_the_paper_sizes():
    cfg = DataConfig()
    assert (cfg.train_size, cfg.eval_size, cfg.layout) == (1_000_000, 100_000, "suffix")


@pytest.mark.parametrize("cls", [DataConfig, TokenConfig])
def test_dump_and_validate_round_trip(cls):
    cfg = cls()
    assert cls.model_validate(cfg.model_dump()) == cfg


def test_yaml_round_trip(tmp_path):
    cfg = DataConfig(n=12, layout="prefix", train_size=100, eval_size=20, seed=7)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(DataConfig, tmp_path / "c.yaml") == cfg


def test_overrides_win_over_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("n: 12\nlayout: prefix\n")
    cfg = load_config(DataConfig, tmp_path / "c.yaml", {"n": 20})
    assert (cfg.n, cfg.layout) == (20, "prefix")


def test_dotted_overrides_reach_nested_keys():
    data = {"tokens": {"eos_target": True}}
    set_dotted(data, "tokens.answer_offset", 5)
    set_dotted(data, "new.section.key", 1)
    assert data == {"tokens": {"eos_target": True, "answer_offset": 5}, "new": {"section": {"key": 1}}}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"n": 1}, "n: Input should be greater than or equal to 2 (got 1)"),
        ({"n": 40000}, "less than or equal to 32766 (got 40000)"),
        ({"layout": "middle"}, "layout: Input should be 'suffix' or 'prefix' (got 'middle')"),
        ({"n": 10, "train_size": 5}, "train_size=5 is smaller than n=10"),
        ({"eval_size": 0}, "eval_size: Input should be greater than 0 (got 0)"),
        ({"learning_rte": 1}, "unknown config key 'learning_rte' (allowed: n, layout"),
    ],
)
def test_bad_values_are_one_line_user_errors(data, message):
    with pytest.raises(UserError) as err:
        load_config(DataConfig, None, data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [("n: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")],
)
def test_unreadable_config_files_are_user_errors(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(DataConfig, tmp_path / "c.yaml")


def test_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(DataConfig, tmp_path / "nope.yaml")


# === Seeds and schedule keys of TrainConfig / SweepConfig (issue 16) ===


def test_seed_is_the_default_of_the_three_seeds_and_config_yaml_holds_them_all(tmp_path):
    from probes.config import TrainConfig

    (tmp_path / "c.yaml").write_text("seed: 3\norder_seed: 5\ndata_seed: null\n")
    cfg = load_config(TrainConfig, tmp_path / "c.yaml")
    assert (cfg.seed, cfg.init_seed, cfg.order_seed, cfg.data_seed) == (3, 3, 5, 3)
    save_config(cfg, tmp_path / "dumped.yaml")
    again = load_config(TrainConfig, tmp_path / "dumped.yaml", {"seed": 9})  # explicit seeds stay
    assert (again.seed, again.init_seed, again.order_seed, again.data_seed) == (9, 3, 5, 3)


def test_sweep_seed_keys_default_to_each_runs_seed_and_reject_a_negative_seed():
    from probes.config import GRID_KEYS, SweepConfig

    assert GRID_KEYS[-3:] == ("init_seed", "order_seed", "data_seed")
    sweep = SweepConfig(order_seed=[1, 2])
    assert (sweep.init_seed, sweep.order_seed, sweep.data_seed) == ([None], [1, 2], [None])
    with pytest.raises(UserError, match="init_seed: Input should be greater than or equal to 0"):
        load_config(SweepConfig, None, {"init_seed": [-1]})

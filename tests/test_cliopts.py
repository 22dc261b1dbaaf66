"""probes.cliopts: each config field is declared once (the pydantic field) and is an option of its commands."""

from typing import Literal

import pytest
import typer
from pydantic import Field

from analysis.plot_config import PlotConfig
from cli import app
from probes.cliopts import Flags, config_options, field_options, option_keys
from probes.config import Config, DataConfig, PretrainConfig, SweepConfig, TrainConfig
from probes.console import user_errors
from probes.demo import DemoConfig
from probes.vlm.cli import DATA_NAMES
from probes.vlm.config import VLMEvalConfig, VLMTrainConfig


def command_options(*path: str) -> set[str]:
    """The long option names of a command of the real `probes` app."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt for param in command.params for decl in param.opts + param.secondary_opts
            for opt in [decl] if opt.startswith("--")}


@pytest.mark.parametrize("path, cls, names, exclude", [
    (("train",), TrainConfig, {}, ()),
    (("generate",), DataConfig, {}, ()),
    (("pretrain",), PretrainConfig, {}, ()),
    (("sweep",), SweepConfig, {}, ("train",)),
    (("vlm", "train"), VLMTrainConfig, DATA_NAMES, ()),
    (("vlm", "eval"), VLMEvalConfig, {}, ("run",)),
    (("demo",), DemoConfig, {"models": "model", "layouts": "layout"}, ()),
    (("plot",), PlotConfig, {}, ("formats", "only")),  # those two: --format a,b and --only KEY=VALUE
])
def test_every_config_field_is_an_option_of_its_command(path, cls, names, exclude):
    options = command_options(*path)
    expected = field_options(cls, names, exclude)
    assert expected, cls
    for opt in expected:
        assert opt.decls[0].split("/")[0] in options, (path, opt.key)


def test_the_documented_flags_keep_their_names():
    train = command_options("train")
    assert {"--model", "--n", "--lr", "--answer-only", "--answer-offset", "--grad-clip", "--threads", "--config",
            "--set", "--overwrite", "--no-progress", "--gradient-checkpointing"} <= train
    assert {"--data", "--data-seed", "--train-file", "--marker-ids", "--no-scan-shared"} <= command_options("vlm", "train")
    assert {"--corpus", "--set", "--describe", "--copy-lengths"} <= command_options("pretrain")
    assert {"--kind", "--format", "--only", "--prefix", "--order-rule", "--config"} <= command_options("plot")


# === a toy config: what a new field gets by being declared ===


class Inner(Config):
    depth: int = Field(2, ge=1, description="inner depth")


class Toy(Config):
    size: int = Field(3, gt=0, description="a size")
    rate: float | None = Field(0.5, gt=0, description="a rate", json_schema_extra={"cli_none": ["0"]})
    mode: Literal["fast", "slow"] = Field("fast", description="how")
    sharp: bool = Field(True, description="sharp or not")
    sizes: list[int] = Field(default_factory=lambda: [1], description="several sizes")
    paths: list[str] = Field(default_factory=list, description="several paths")
    ids: tuple[int, int] | None = Field((1, 2), description="two ids")
    label: str = Field("x", description="a label")
    inner: Inner = Field(default_factory=Inner, description="a section")


def toy_app(seen: dict) -> typer.Typer:
    toy = typer.Typer(rich_markup_mode=None)

    @toy.command()
    @user_errors
    @config_options(Toy)
    def go(flags: Flags, overwrite: bool = typer.Option(False), progress: bool = typer.Option(True)) -> None:
        seen.update(cfg=flags.load(), overwrite=overwrite, progress=progress)

    @toy.command()
    def other() -> None:  # a second command keeps `go` a subcommand
        pass

    return toy


def invoke(cli_runner, *args):
    seen = {}
    result = cli_runner.invoke(toy_app(seen), ["go", *map(str, args)])
    return result, seen


def test_a_new_field_is_an_option_with_its_type_default_and_help(cli_runner):
    r, _ = invoke(cli_runner, "--help")
    text = " ".join(r.output.split())
    for piece in ("--size INTEGER a size [default: 3]", "--mode fast|slow how [default: fast]",
                  "--sharp / --no-sharp", "--depth INTEGER inner depth [default: 2]", "--rate FLOAT"):
        assert piece in text, piece
    r, seen = invoke(cli_runner, "--size", "7", "--mode", "slow", "--no-sharp", "--depth", "4")
    assert r.exit_code == 0, r.output
    assert seen["cfg"] == Toy(size=7, mode="slow", sharp=False, inner=Inner(depth=4))


def test_lists_take_commas_or_repeats_and_none_words_clear_an_optional_field(cli_runner):
    r, seen = invoke(cli_runner, "--sizes", "4,5", "--sizes", "6", "--paths", "a,b", "--paths", "c", "--rate", "none")
    assert r.exit_code == 0, r.output
    assert (seen["cfg"].sizes, seen["cfg"].paths, seen["cfg"].rate) == ([4, 5, 6], ["a,b", "c"], None)
    r, seen = invoke(cli_runner, "--rate", "0")  # the field's own word for None (cli_none)
    assert r.exit_code == 0 and seen["cfg"].rate is None
    r, seen = invoke(cli_runner, "--ids", "none", "--label", "none")  # an optional list; a plain str stays text
    assert r.exit_code == 0 and (seen["cfg"].ids, seen["cfg"].label) == (None, "none")


def test_config_file_set_and_flags_combine_with_flags_winning(cli_runner, tmp_path):
    (tmp_path / "c.yaml").write_text("size: 5\nmode: slow\ninner: {depth: 9}\n")
    r, seen = invoke(cli_runner, "--config", tmp_path / "c.yaml", "--size", "6", "--set", "size=8",
                     "--set", "inner.depth=3")
    assert r.exit_code == 0, r.output
    assert (seen["cfg"].size, seen["cfg"].mode, seen["cfg"].inner.depth) == (6, "slow", 3)
    r, seen = invoke(cli_runner, "--config", tmp_path / "c.yaml", "--set", "size=8", "--set", "rate=null")
    assert (seen["cfg"].size, seen["cfg"].rate) == (8, None)


def test_overwrite_and_progress_are_config_file_keys_and_flags_win(cli_runner, tmp_path):
    (tmp_path / "c.yaml").write_text("size: 5\noverwrite: true\nprogress: false\n")
    r, seen = invoke(cli_runner, "--config", tmp_path / "c.yaml")
    assert r.exit_code == 0, r.output
    assert (seen["overwrite"], seen["progress"], seen["cfg"].size) == (True, False, 5)
    r, seen = invoke(cli_runner, "--config", tmp_path / "c.yaml", "--no-overwrite", "--progress")
    assert (seen["overwrite"], seen["progress"]) == (False, True)


@pytest.mark.parametrize("path, own", [
    (("train",), "--overwrite / --progress"), (("pretrain",), "--overwrite / --progress"),
    (("generate",), "--overwrite"), (("demo",), "--overwrite"), (("vlm", "train"), "--overwrite"),
    (("plot",), None), (("vlm", "eval"), None),
])
def test_config_help_names_only_the_options_a_file_of_that_command_may_set(path, own):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    (config,) = [p for p in command.params if "--config" in p.opts]
    assert ("command's" in config.help) == (own is not None)
    if own is not None:
        assert f"the command's {own});" in config.help
    assert {"--overwrite", "--progress"} & command_options(*path) == {
        o for o in ("--overwrite", "--progress") if own and o in own}


@pytest.mark.parametrize("args, yaml_text, message", [
    (["--size", "abc"], None, "size: Input should be a valid integer, unable to parse string as an integer (got 'abc')"),
    (["--size", "0"], None, "size: Input should be greater than 0 (got 0)"),
    (["--mode", "medium"], None, "mode: Input should be 'fast' or 'slow' (got 'medium')"),
    (["--sizes", "1,x"], None, "sizes.1: Input should be a valid integer"),
    (["--set", "size"], None, "--set 'size' is not KEY=VALUE"),
    (["--set", "colour=red"], None, "unknown config key 'colour' (allowed: size, rate, mode"),
    ([], "overwrite: maybe\n", "overwrite: 'maybe' in"),
    ([], "colour: red\n", "unknown config key 'colour'"),
])
def test_bad_input_is_one_line_and_exit_2(cli_runner, tmp_path, args, yaml_text, message):
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        args = [*args, "--config", tmp_path / "c.yaml"]
    r, seen = invoke(cli_runner, *args)
    assert r.exit_code == 2 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "cfg" not in seen


def test_option_keys_name_the_config_key_of_each_option():
    keys = option_keys(VLMTrainConfig, DATA_NAMES)
    assert keys["data"] == "data.kind" and keys["data_seed"] == "data.seed" and keys["seed"] == "seed"
    assert set(option_keys(SweepConfig, exclude=("train",)).values()) == set(SweepConfig.model_fields) - {"train"}


def test_two_fields_that_would_share_an_option_are_refused_until_renamed():
    class Clash(Config):
        seed: int = 0
        inner: Inner = Field(default_factory=Inner)

    class Inner2(Config):
        seed: int = 1

    class Clash2(Config):
        seed: int = 0
        data: Inner2 = Field(default_factory=Inner2)

    assert [o.param for o in field_options(Clash)] == ["seed", "depth"]
    with pytest.raises(TypeError, match="seed and data.seed both become --seed"):
        field_options(Clash2)
    assert [o.param for o in field_options(Clash2, {"data.seed": "data_seed"})] == ["seed", "data_seed"]


# === the real commands ===


def test_probes_train_reads_overwrite_and_progress_from_its_config_file(cli_runner, tmp_path):
    args = ["train", "--model", "pythia-tiny", "--n", "4", "--max-steps", "2", "--eval-every", "2", "--train-size",
            "16", "--eval-size", "8", "--batch-size", "4", "--device", "cpu", "--threads", "1",
            "--out", str(tmp_path / "r")]
    (tmp_path / "c.yaml").write_text("progress: false\n")
    assert cli_runner.invoke(app, [*args, "--config", str(tmp_path / "c.yaml")]).exit_code == 0
    r = cli_runner.invoke(app, [*args, "--config", str(tmp_path / "c.yaml")])
    assert r.exit_code == 2 and "finished run" in r.output
    (tmp_path / "c.yaml").write_text("progress: false\noverwrite: true\nlr: 0.002\n")
    r = cli_runner.invoke(app, [*args, "--config", str(tmp_path / "c.yaml")])
    assert r.exit_code == 0, r.output
    assert "lr: 0.002" in (tmp_path / "r" / "config.yaml").read_text()


@pytest.mark.parametrize("argv, message", [
    (["train", "--n", "many"], "n: Input should be a valid integer"),
    (["train", "--set", "tokens.colour=1"], "unknown config key 'tokens.colour' (allowed: answer_offset"),
    (["vlm", "train", "--data", "imagenet"], "data.kind: Input should be 'synthetic' or 'refcoco'"),
    (["pretrain", "--copy-lengths", "1,8", "--model", "pythia-tiny"], "copy_lengths must be >= 2"),
    (["copytest", "--model", "gpt-9"], "unknown model 'gpt-9'"),
])
def test_the_real_commands_give_one_line_for_bad_input(cli_runner, argv, message):
    r = cli_runner.invoke(app, argv)
    assert r.exit_code == 2 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1

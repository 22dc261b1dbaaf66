"""The pydantic → typer bridge: every config field becomes a command-line option, declared once.

    @app.command()
    @user_errors
    @config_options(TrainConfig)
    def train(flags: Flags, overwrite: bool = typer.Option(False, help=...)) -> None:
        cfg = flags.load()

`config_options(cls)` adds to the decorated command one option per field of `cls` (nested config
sections flattened to their own field names: `--answer-offset` sets `tokens.answer_offset`), plus
`--config FILE.yaml` and `--set KEY=VALUE` (repeatable, dotted keys reach every field). Each
option's name is the field's (`max_steps` → `--max-steps`), its help the field's description, its
default the field's default, its metavar the field's type (a Literal lists its choices). A new
field is a new option with no other line written.

Values reach the config as the user typed them and pydantic validates them, so a bad value is one
line naming the key, the value and what is allowed (probes.config.validate), never click's usage
box. Conventions: `none` (or `null`) sets an optional field to None; a list or tuple of numbers
takes `1,2,3` or the option repeated; booleans are `--flag/--no-flag`.

CLI metadata a field may carry (`json_schema_extra`): `cli_flags` (the option's declarations, e.g.
`"--eos-target/--answer-only"`) and `cli_none` (further words meaning None, e.g. `["0"]`).

A command's own options named in `yaml_options` (`overwrite`, `progress`) may also be keys of
the `--config` file; the command line wins over the file.
"""

from __future__ import annotations

import copy
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import typer
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from probes.config import read_yaml, set_dotted, validate
from probes.console import flags_given
from probes.errors import UserError

NONE_WORDS = ("none", "null")
YAML_OPTIONS = ("overwrite", "progress")
_METAVARS = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH", bool: "BOOLEAN"}


# === reading a field's type ===


def _strip_annotated(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _union_parts(tp: Any) -> list[Any]:
    tp = _strip_annotated(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [_strip_annotated(a) for a in typing.get_args(tp)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _metavar(parts: Iterable[Any]) -> str:
    names = []
    for tp in parts:
        if typing.get_origin(tp) is Literal:
            names += [str(v) for v in typing.get_args(tp)]
        elif tp is not type(None):
            names.append(_METAVARS.get(tp, "VALUE"))
    return "|".join(names)


@dataclass(frozen=True)
class FieldOption:
    """One config field as a typer option: parameter name, dotted config key, typer declaration."""

    param: str
    key: str
    kind: Literal["flag", "list", "value"]
    info: FieldInfo
    decls: tuple[str, ...]
    none_words: tuple[str, ...] = field(default=NONE_WORDS)
    split: bool = False  # list items may be comma-separated (numbers, not paths or text)
    metavar: str = "VALUE"
    numbers: tuple[type, ...] = ()  # int and/or float: the text is read as one where it is one
    optional: bool = False  # a list field that may be None as a whole (`--answer-ids none`)

    def convert(self, value: Any) -> Any:
        """The typed text → what pydantic validates (None words, comma lists); flags pass as they are."""
        if self.kind == "flag" or value is None:
            return value
        if self.kind == "value":
            return self._one(value)
        if self.optional and len(value) == 1 and value[0].strip().lower() in NONE_WORDS:
            return None
        items = [p.strip() for v in value for p in (v.split(",") if self.split else [v])]
        return [self._one(v) for v in items if v != ""] if items else None

    def _one(self, text: str) -> Any:
        if text.strip().lower() in self.none_words:
            return None
        for number in self.numbers:  # so that an error shows (got 1), not (got '1')
            try:
                return number(text)
            except ValueError:
                pass
        return text

    def typer_parameter(self) -> inspect.Parameter:
        default = self.info.get_default(call_default_factory=True)
        annotation = {"flag": bool, "list": list[str] | None, "value": str | None}[self.kind]
        if self.kind == "list" and default is not None:
            default = [str(v) for v in default if v is not None] or None
        option = typer.Option(
            default, *self.decls, help=self.info.description or "",
            metavar=None if self.kind == "flag" else self.metavar,
            show_default=default is not None and default != [],
            callback=lambda value: self.convert(value),
        )
        return inspect.Parameter(self.param, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _field_option(param: str, key: str, info: FieldInfo) -> FieldOption:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    parts = _union_parts(info.annotation)
    values = [p for p in parts if p is not type(None)]
    flag = param.replace("_", "-")
    none_words = (NONE_WORDS if type(None) in parts else ()) + tuple(extra.get("cli_none", ()))
    base = values[0] if len(values) == 1 else None
    decls = tuple(extra.get("cli_flags", ())) or ((f"--{flag}/--no-{flag}",) if base is bool else (f"--{flag}",))
    if base is bool:
        return FieldOption(param, key, "flag", info, decls)
    if typing.get_origin(base) in (list, tuple, set):
        items = [a for a in typing.get_args(base) if a is not Ellipsis]
        item_parts = [p for a in items for p in _union_parts(a)]
        none_words = NONE_WORDS if type(None) in item_parts else ()
        split = not any(p in (str, Path) for p in item_parts)
        return FieldOption(param, key, "list", info, decls, none_words, split, _metavar(dict.fromkeys(item_parts)),
                           _numbers(item_parts), optional=type(None) in parts)
    return FieldOption(param, key, "value", info, decls, none_words, False, _metavar(values), _numbers(values))


def _numbers(parts: Iterable[Any]) -> tuple[type, ...]:
    parts = list(parts)
    return tuple(t for t in (int, float) if t in parts)


def field_options(cls: type[BaseModel], names: dict[str, str] | None = None, exclude: Iterable[str] = (),
                  include: Iterable[str] | None = None) -> list[FieldOption]:
    """The options of every field of `cls` (of those whose dotted key is in `include`, when given):
    a nested config section (not optional) is flattened to its fields; an optional section, a
    mapping or a key in `exclude` is left to `--set`. `names` renames a dotted key's parameter
    (`{"data.kind": "data"}`); two fields that would share an option are an error."""
    names, exclude = names or {}, set(exclude)
    keep = None if include is None else set(include)
    options: list[FieldOption] = []
    for key, info in _leaf_fields(cls, ""):
        if key in exclude or key.split(".")[0] in exclude or (keep is not None and key not in keep):
            continue
        options.append(_field_option(names.get(key, key.rsplit(".", 1)[-1]), key, info))
    seen: dict[str, str] = {}
    for opt in options:
        if opt.param in seen:
            raise TypeError(f"{cls.__name__}: fields {seen[opt.param]} and {opt.key} both become "
                            f"--{opt.param.replace('_', '-')}; rename one with names={{...}}")
        seen[opt.param] = opt.key
    return options


def option_keys(cls: type[BaseModel], names: dict[str, str] | None = None, exclude: Iterable[str] = (),
                include: Iterable[str] | None = None) -> dict[str, str]:
    """{parameter name: dotted config key} of the options `config_options` adds (the same arguments):
    `flags_given(ctx, option_keys(SweepConfig, exclude=("train",)))` reads a passthrough command's."""
    return {o.param: o.key for o in field_options(cls, names, exclude, include)}


def _leaf_fields(cls: type[BaseModel], prefix: str) -> Iterable[tuple[str, FieldInfo]]:
    for name, info in cls.model_fields.items():
        parts = _union_parts(info.annotation)
        if len(parts) == 1 and _is_model(parts[0]):
            yield from _leaf_fields(parts[0], f"{prefix}{name}.")
        elif not any(_is_model(p) or typing.get_origin(p) is dict or p is dict for p in parts):
            yield f"{prefix}{name}", info


# === a command's settings ===


def parse_sets(items: Iterable[str] | None, prefix: str = "") -> dict[str, Any]:
    """`--set a.b=VALUE` (VALUE read as YAML) → {"a.b": value}; a malformed item is a UserError."""
    given = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not KEY=VALUE (e.g. --set max_steps=2000)")
        try:
            given[prefix + key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
    return given


@dataclass
class Flags:
    """What a command line (and its `--config` file) says about a config: `load()` builds it."""

    cls: type[BaseModel]
    config: Path | None
    given: dict[str, Any]  # dotted key → value of each option typed (and of each --set)
    data: dict[str, Any]  # the --config file's mapping, less the command's own options

    def value(self, key: str, default: Any = None) -> Any:
        """One typed flag on its own, validated against its field (`default` when not typed)."""
        if key not in self.given:
            return default
        info = self.cls.model_fields[key]
        try:
            return TypeAdapter(Annotated[info.annotation, info]).validate_python(self.given[key])
        except ValidationError as err:
            e = err.errors()[0]
            raise UserError(f"{key}: {e['msg']} (got {self.given[key]!r})") from None

    def load(self, extra: dict[str, Any] | None = None) -> Any:
        """The validated config: file, then flags, then `extra`; a bad value is one UserError line."""
        data = copy.deepcopy(self.data)
        for key, value in {**self.given, **(extra or {})}.items():
            set_dotted(data, key, value)
        return validate(self.cls, data)


def _pop_yaml_options(data: dict[str, Any], names: Iterable[str], path: Path) -> dict[str, bool]:
    """The command's own options found as keys of the config file (each must be true or false)."""
    found = {}
    for name in names:
        if name in data:
            value = data.pop(name)
            if not isinstance(value, bool):
                raise UserError(f"{name}: {value!r} in {path} is not true or false")
            found[name] = value
    return found


# === the decorator ===

CONFIG_HELP = "YAML config file (any config key{own}); flags win over it."
SET_HELP = "KEY=VALUE of any config key, dotted for sections (repeat), e.g. --set max_steps=2000."


def config_help(own: Iterable[str]) -> str:
    """--config's help: the command's own options a config file may also set (e.g. `overwrite: true`)."""
    names = " / ".join(f"--{name}" for name in own)
    return CONFIG_HELP.format(own=f", and the command's {names}" if names else "")


def _signature(fn: Callable, cls: type[BaseModel], options: list[FieldOption], passthrough: bool,
               yaml_options: tuple[str, ...]) -> inspect.Signature:
    """The command's signature as typer reads it: ctx, the field options, fn's own options, --config, --set."""
    own = inspect.signature(fn, eval_str=True)
    hints = typing.get_type_hints(fn)
    params = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
              for p in own.parameters.values() if p.name not in ("ctx", "flags")]
    clash = {p.name for p in params} & {o.param for o in options}
    if clash:
        raise TypeError(f"{fn.__name__}: parameter(s) {sorted(clash)} are also fields of {cls.__name__}")
    tail = [] if passthrough else [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                          default=typer.Option(None, "--config", help=config_help(
                              n for n in yaml_options if n in own.parameters))),
        inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, annotation=list[str] | None,
                          default=typer.Option(None, "--set", metavar="KEY=VALUE", help=SET_HELP))]
    ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    return own.replace(parameters=[ctx, *[o.typer_parameter() for o in options], *params, *tail])


def _read_flags(ctx: typer.Context, cls: type[BaseModel], options: list[FieldOption], kwargs: dict[str, Any],
                yaml_options: tuple[str, ...]) -> Flags:
    """Flags of one call; pops --config and --set from `kwargs` and fills in the command's own
    options the config file names (`overwrite: true`) where the command line did not."""
    config, sets = kwargs.pop("config"), kwargs.pop("set_")
    data = read_yaml(config) if config is not None else {}
    for name, value in _pop_yaml_options(data, [n for n in yaml_options if n in kwargs], config).items():
        if name not in flags_given(ctx, {name: name}):
            kwargs[name] = value
    given = {**parse_sets(sets), **flags_given(ctx, {o.param: o.key for o in options})}
    return Flags(cls, config, given, data)

def config_options(cls: type[BaseModel], *, names: dict[str, str] | None = None, exclude: Iterable[str] = (),
                   include: Iterable[str] | None = None, passthrough: bool = False,
                   yaml_options: Iterable[str] = YAML_OPTIONS) -> Callable[[Callable], Callable]:
    """Give the decorated typer command one option per field of `cls`.

    The command receives `flags: Flags` (plus its own parameters), and `--config` and `--set` are
    added. With `passthrough=True` only the field options are added and the command reads their
    values itself from `ctx` (`flags_given(ctx, {name: key})`); it receives no `flags`."""
    options = field_options(cls, names, exclude, include)
    yaml_options = tuple(yaml_options)

    def decorate(fn: Callable) -> Callable:
        signature = _signature(fn, cls, options, passthrough, yaml_options)
        wants_ctx = "ctx" in inspect.signature(fn).parameters

        @functools.wraps(fn)
        def command(ctx: typer.Context, **kwargs: Any) -> Any:
            for opt in options:
                kwargs.pop(opt.param)
            if not passthrough:
                kwargs["flags"] = _read_flags(ctx, cls, options, kwargs, yaml_options)
            return fn(ctx, **kwargs) if wants_ctx else fn(**kwargs)

        command.__signature__ = signature
        command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        del command.__wrapped__  # typer reads the signature above, not fn's
        return command

    return decorate


__all__ = ["CONFIG_HELP", "FieldOption", "Flags", "config_help", "config_options", "field_options", "option_keys",
           "parse_sets"]

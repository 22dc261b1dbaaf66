"""Typed configs: pydantic v2 models, unknown keys rejected, YAML load/save, dotted overrides.

Later parts of the toolkit extend these models (new fields, new nested sections) rather than
replace them. Every config validates on construction, so a typo in a YAML file or a flag is an
error, never a silently ignored key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from probes.errors import UserError

# Context arrays are stored as int16 and the default answer mapping uses vocabulary ids
# p + 2 < 2**15, well inside every supported tokenizer (GPT-NeoX: 50277 tokens).
MAX_N = 2**15 - 2

Layout = Literal["suffix", "prefix"]


class Config(BaseModel):
    """Base for every config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Config):
    """One synthetic grounding dataset (SPEC §1). Data are model-independent."""

    n: int = Field(50, ge=2, le=MAX_N, description="number of context tokens N")
    layout: Layout = Field("suffix", description="suffix: ctx <out> q; prefix: <out> q <sep> ctx")
    train_size: int = Field(1_000_000, gt=0, description="training examples")
    eval_size: int = Field(100_000, gt=0, description="held-out examples")
    seed: int = Field(0, ge=0, description="seed of the training set")
    heldout_seed: int | None = Field(
        None, ge=0, description="seed of the held-out set (default: seed + 1_000_003)"
    )

    @model_validator(mode="after")
    def _sizes_cover_every_position(self) -> DataConfig:
        for name in ("train_size", "eval_size"):
            size = getattr(self, name)
            if size < self.n:
                raise ValueError(
                    f"{name}={size} is smaller than n={self.n}: every position must be a target "
                    f"at least once (allowed: {name} >= n)"
                )
        return self

    @property
    def effective_heldout_seed(self) -> int:
        return self.seed + 1_000_003 if self.heldout_seed is None else self.heldout_seed


class TokenConfig(Config):
    """How a dataset's indices become a model's token ids (see probes.tasks.TokenLayout)."""

    answer_offset: int = Field(
        2, ge=0, description="answer(p) = vocabulary id p + answer_offset (paper code: 2)"
    )
    answer_ids: list[int] | None = Field(
        None, description="explicit vocabulary id for each position; overrides answer_offset"
    )
    eos_target: bool = Field(True, description="also train on end-of-text after the answer")
    eos_id: int | None = Field(None, ge=0, description="end-of-text id (default: the model's)")


C = TypeVar("C", bound=BaseModel)


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The nested config class that owns the field at `loc` (for listing allowed keys)."""
    for part in loc:
        field = cls.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def format_validation_error(err: ValidationError, cls: type[BaseModel] | None = None) -> str:
    """The first problem of a ValidationError as one line naming the value and what is allowed."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "config"
    if e["type"] == "extra_forbidden":
        owner = _model_at(cls, e["loc"][:-1]) if cls is not None else None
        allowed = f" (allowed: {', '.join(owner.model_fields)})" if owner is not None else ""
        return f"unknown config key '{loc}'{allowed}"
    if e["type"] == "value_error":  # our own validators already name value and rule
        return e["msg"].removeprefix("Value error, ")
    return f"{loc}: {e['msg']} (got {e.get('input')!r})"


def validate(cls: type[C], data: dict[str, Any]) -> C:
    """Build a config from plain data; a bad value becomes a one-line UserError."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, cls)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from disk, or a UserError saying why it cannot be read."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read config file {path}: {err}") from None
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else "invalid YAML"
        raise UserError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """YAML file (optional) + dotted overrides (`{"data.n": 8}`) → validated config; overrides win."""
    data = read_yaml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return validate(cls, data)


def save_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """`set_dotted(d, "a.b", 1)` sets d["a"]["b"] = 1, creating nested mappings as needed."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {} if child is None else dict(child)
        node = child
    node[last] = value

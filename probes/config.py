"""Typed configs: pydantic v2 models, unknown keys rejected, YAML load/save, dotted overrides.

Later parts of the toolkit extend these models (new fields, new nested sections) rather than
replace them. Every config validates on construction, so a typo in a YAML file or a flag is an
error, never a silently ignored key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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

    n: int = Field(50, ge=2, le=MAX_N, description=f"number of context tokens N (2 … {MAX_N})")
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
    eos_target: bool = Field(True, description="also train on end-of-text after the answer (--answer-only: "
                             "the loss is on the answer alone)",
                             json_schema_extra={"cli_flags": ["--eos-target/--answer-only"]})
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


# === Training and sweeps ===

Init = Literal["default", "mean", "normal"]  # same choices as probes.backbones.INITS
ScanBackend = Literal["auto", "triton", "mamba-ssm", "torch", "reference"]
Precision = Literal["auto", "bf16", "fp32"]
Schedule = Literal["constant", "linear", "cosine"]  # same names as probes.schedules.SCHEDULES
SEED_KEYS = ("init_seed", "order_seed", "data_seed")  # each None (default) = `seed`
GRID_KEYS = ("model", "n", "layout", "lr", "init", "seed", *SEED_KEYS)


def _check_threads(value: Any) -> Any:
    if value == "auto":
        return value
    try:
        count = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        count = None
    if count is None or count < 0:
        raise ValueError(f"threads must be auto, 0 (torch's default) or a thread count, got {value!r}")
    return count


# torch CPU threads of a run: "auto" (probes.runtime.resolve_threads), 0 (torch's default) or a count
Threads = Annotated[Literal["auto"] | int, BeforeValidator(_check_threads)]
THREADS_HELP = ("torch CPU threads: auto (one on a CPU run of tiny presets, where they run fastest; torch's "
                "default for larger models, on a GPU or when OMP_NUM_THREADS is set) | 0 (torch's default) | a count.")


def _check_log_to(value: Any) -> Any:
    from probes.trackers import parse_spec  # no torch: trackers import their packages when made

    try:
        return parse_spec(value)
    except UserError as err:
        raise ValueError(str(err)) from None


# experiment trackers a run feeds (probes.trackers); a list, or one comma-separated string
LogTo = Annotated[list[Literal["tensorboard", "wandb"]], BeforeValidator(_check_log_to)]
LOG_TO_HELP = ("experiment trackers fed after each evaluation: tensorboard | wandb, comma-separated "
               "(none: no tracker); the parquet files stay the record")


def _check_model(name: str) -> str:
    from probes.backbones import check_model_name  # lazy: keeps `probes.config` free of torch

    try:
        return check_model_name(name)
    except UserError as err:
        raise ValueError(str(err)) from None


class TrainConfig(Config):
    """One run (SPEC §2, §6). Grid keys and run settings are flat; config.yaml is this, dumped."""

    # the grid keys (a run directory is named from them)
    model: str = Field("pythia-160m", description="backbone: pythia-{tiny,14m,70m,160m,410m,1b,1.4b,2.8b}, "
                       "mamba-{tiny,130m,370m,790m,1.4b,2.8b} (random init) or hf:ID_OR_PATH")
    n: int = Field(50, ge=2, le=MAX_N, description="number of context tokens N")
    layout: Layout = Field("suffix", description="suffix | prefix")
    lr: float = Field(1e-4, gt=0, le=1, allow_inf_nan=False, description="AdamW learning rate")
    init: Init = Field("default", description="new embedding rows: default | mean | normal")
    seed: int = Field(0, ge=0, description="shorthand: the default of init_seed, order_seed and data_seed")
    init_seed: int | None = Field(None, ge=0, description="seed of the model init and the new rows (None: seed)")
    order_seed: int | None = Field(None, ge=0, description="seed of the batch order (None: seed)")
    # the protocol (paper App. C.4)
    max_steps: int = Field(78_000, gt=0, description="optimizer steps at most")
    batch_size: int = Field(64, gt=0, description="examples per step")
    threshold: float = Field(0.95, gt=0, le=1, description="stop when held-out accuracy >= this")
    eval_every: int | None = Field(None, gt=0, description="steps between evaluations (None: 1% of max_steps)")
    out: Path | None = Field(None, description="run directory (None: runs/<run name>)")
    # data: a dataset directory, or generated in memory from the seeds
    data_dir: Path | None = Field(None, description="dataset written by `probes generate` (None: generate)")
    train_size: int = Field(1_000_000, gt=0, description="training examples (when generated)")
    eval_size: int = Field(100_000, gt=0, description="held-out examples (when generated)")
    data_seed: int | None = Field(None, ge=0, description="seed of the training set, when generated (None: seed)")
    heldout_seed: int | None = Field(None, ge=0, description="seed of the held-out set (None: data_seed + 1000003)")
    tokens: TokenConfig = Field(default_factory=TokenConfig, description="answer ids and targets")
    # optimisation
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False,
                                description="AdamW weight decay (never on biases and norm weights)")
    lr_schedule: Schedule = Field("constant", description="constant | linear | cosine (probes.schedules)")
    warmup: int = Field(0, ge=0, description="learning-rate warmup steps")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, allow_inf_nan=False,
                                       description="warmup as a fraction of max_steps (instead of warmup)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, allow_inf_nan=False,
                                description="floor of the linear and cosine decay, as a fraction of lr")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient norm (None, or 0 on the command "
                                    "line: no clipping)", json_schema_extra={"cli_none": ["0"]})
    # execution (may change when a run resumes)
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto | cpu | cuda[:i]")
    precision: Precision = Field("auto", description="auto (bf16 autocast on CUDA, else fp32) | bf16 | fp32")
    scan_backend: ScanBackend = Field("auto", description="Mamba selective scan: auto | triton | mamba-ssm | torch | reference")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    cuda_graphs: bool = Field(False, description="replay the whole training step as one CUDA graph (probes.graphs; "
                                                 "fewer launches for small models; CUDA only, ignored on CPU)")
    eval_batch_size: int = Field(1024, gt=0, description="held-out examples per forward pass")
    checkpoint_every: int | None = Field(None, gt=0, description="steps between checkpoints (None: every evaluation)")
    threads: Threads = Field("auto", description=THREADS_HELP)
    log_to: LogTo = Field(default_factory=list, description=LOG_TO_HELP)

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return _check_model(name)

    @model_validator(mode="before")
    @classmethod
    def _seeds_default_to_seed(cls, data: Any) -> Any:
        """`seed` is the shorthand: each of init_seed, order_seed, data_seed left out (or null) takes it.

        Resolved here, so config.yaml always holds all four (old files hold data_seed already)."""
        if isinstance(data, dict):
            seed = data.get("seed", 0)
            data = {**data, **{k: seed for k in SEED_KEYS if data.get(k) is None}}
        return data

    @model_validator(mode="after")
    def _warmup_once(self) -> TrainConfig:
        if self.warmup and self.warmup_ratio is not None:
            raise ValueError(f"warmup={self.warmup} and warmup_ratio={self.warmup_ratio} are both set "
                             f"(allowed: one of them)")
        return self

    @model_validator(mode="after")
    def _sizes_cover_every_position(self) -> TrainConfig:
        if self.data_dir is None:
            for name in ("train_size", "eval_size"):
                if getattr(self, name) < self.n:
                    raise ValueError(f"{name}={getattr(self, name)} is smaller than n={self.n}: every position "
                                     f"must be a target at least once (allowed: {name} >= n)")
        return self

    @property
    def effective_eval_every(self) -> int:
        return self.eval_every if self.eval_every is not None else max(1, self.max_steps // 100)

    @property
    def warmup_steps(self) -> int:
        """Warmup in steps: `warmup`, or ceil(warmup_ratio x max_steps) as the HF Trainer counts it."""
        return math.ceil(self.warmup_ratio * self.max_steps) if self.warmup_ratio is not None else self.warmup

    def data_config(self) -> DataConfig:
        return DataConfig(n=self.n, layout=self.layout, train_size=self.train_size, eval_size=self.eval_size,
                          seed=self.data_seed, heldout_seed=self.heldout_seed)


def as_list(value: Any) -> Any:
    """A grid key's value as a list: one value is a grid of one."""
    return value if isinstance(value, (list, tuple)) else [value]


def check_grid(sweep: BaseModel, keys: Sequence[str], run_cls: type[BaseModel], clash: list[str]) -> None:
    """A sweep's grid is valid: no list holds a value twice, `train` sets no key of the grid (`clash`
    names those it does), and each grid value, with the other keys at their first value, makes a
    valid `run_cls` (its error named where the user wrote it). Raises ValueError."""
    for key in keys:
        values = getattr(sweep, key)
        if len(set(values)) != len(values):
            raise ValueError(f"{key} lists a value twice: {values}")
    if clash:
        raise ValueError(f"train.{clash[0]} is set by the grid (or by out): put it at the top level")
    first = {k: getattr(sweep, k)[0] for k in keys}
    for key, value in [(k, v) for k in keys for v in getattr(sweep, k)]:  # each value once
        try:
            run_cls.model_validate(sweep.run_settings(first | {key: value}))
        except ValidationError as err:
            message = format_validation_error(err, run_cls)
            if err.errors()[0]["type"] == "extra_forbidden":  # name it where the user wrote it
                message = message.replace("key '", "key 'train.", 1)
            raise ValueError(message) from None


class SweepConfig(Config):
    """A grid model × n × layout × lr × init × seed (× init_seed, order_seed, data_seed) (SPEC §6);
    `train` holds every other setting.

    Each grid key takes one value or a list. The default grid is the paper's 3 lr × 3 init; the
    three seed keys default to [null]: each run's `seed` (or train.data_seed where that is set).
    """

    model: list[str] = Field(default_factory=lambda: ["pythia-160m"], min_length=1,
                             description="grid: model names (repeat the option)")
    n: list[int] = Field(default_factory=lambda: [50], min_length=1, description="grid: N values (repeat, or 10,50)")
    layout: list[Layout] = Field(default_factory=lambda: ["suffix"], min_length=1,
                                 description="grid: layouts, suffix | prefix (repeat)")
    lr: list[float] = Field(default_factory=lambda: [1e-5, 5e-5, 1e-4], min_length=1,
                            description="grid: learning rates (repeat, or 1e-5,1e-4)")
    init: list[Init] = Field(default_factory=lambda: ["default", "mean", "normal"], min_length=1,
                             description="grid: new-row inits, default | mean | normal (repeat)")
    seed: list[int] = Field(default_factory=lambda: [0], min_length=1, description="grid: seeds (repeat, or 0,1,2)")
    # null (the default) = each run's seed; a run name gets +i/+o/+d<seed> where one differs from seed
    init_seed: list[int | None] = Field(default_factory=lambda: [None], min_length=1,
                                        description="grid: model-init seeds (none: each run's seed)")
    order_seed: list[int | None] = Field(default_factory=lambda: [None], min_length=1,
                                         description="grid: batch-order seeds (none: each run's seed)")
    data_seed: list[int | None] = Field(default_factory=lambda: [None], min_length=1,
                                        description="grid: training-data seeds (none: each run's seed)")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig settings shared by every run")
    out: Path = Field(Path("runs"), description="sweep directory: one run directory per grid point")
    backend: str = Field("local", description="local | ray (probes.sweep.BACKENDS)")
    jobs: int = Field(1, ge=1, description="runs at once (local backend)")
    # ray backend (probes.sweep_ray)
    address: str | None = Field(None, description="Ray cluster HOST:PORT, ray://HOST:PORT or auto (None: local)")
    cpus_per_run: float = Field(1.0, gt=0, description="CPUs Ray reserves for each run")
    gpus_per_run: float = Field(0.0, ge=0, description="GPUs Ray reserves for each run (0.25: four per GPU)")
    retries: int = Field(3, ge=0, description="times a run whose worker died (killed, or out of GPU memory) "
                                               "is started again")

    @field_validator(*GRID_KEYS, mode="before")
    @classmethod
    def _one_value_or_a_list(cls, value: Any) -> Any:
        return as_list(value)

    @model_validator(mode="after")
    def _grid_and_settings_are_valid(self) -> SweepConfig:
        clash = [k for k in self.train if k in (*GRID_KEYS, "out") and self.grid_values(k) != [None]]
        check_grid(self, GRID_KEYS, TrainConfig, clash)
        return self

    def grid_values(self, key: str) -> list[Any]:
        """The values of a grid key (`out` and settings in `train` are not grid keys: [None])."""
        return list(getattr(self, key)) if key in GRID_KEYS else [None]

    def run_settings(self, point: dict[str, Any]) -> dict[str, Any]:
        """TrainConfig data of one grid point: `train`, then the point's values; a null seed key
        leaves the run's own (train.data_seed, or else seed)."""
        return {**self.train, **{k: v for k, v in point.items() if v is not None}}

# === Pretraining (probes.pretrain) ===

Tokenizer = Literal["byte", "bpe"]
Family = Literal["pythia", "mamba"]


class ArchConfig(Config):
    """A sized custom backbone; the vocabulary always comes from the pretraining tokenizer."""

    family: Family = Field(..., description="pythia (GPT-NeoX) | mamba (Mamba v1)")
    hidden_size: int = Field(..., gt=0, description="model width d")
    num_hidden_layers: int = Field(..., gt=0, description="layers")
    num_attention_heads: int | None = Field(None, gt=0, description="attention heads (pythia only)")
    rotary_pct: float = Field(0.25, gt=0, le=1, description="fraction of each head rotated (pythia)")
    intermediate_size: int | None = Field(None, gt=0, description="MLP width (pythia; None: 4 d)")
    max_position_embeddings: int = Field(2048, gt=0, description="longest sequence (pythia)")
    state_size: int = Field(16, gt=0, description="SSM state size (mamba)")
    expand: int = Field(2, gt=0, description="inner width = expand x d (mamba)")
    conv_kernel: int = Field(4, gt=0, description="causal convolution width (mamba)")

    @model_validator(mode="after")
    def _heads_fit_the_family(self) -> ArchConfig:
        if self.family == "pythia":
            if self.num_attention_heads is None:
                raise ValueError("arch.num_attention_heads is required for family pythia")
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"arch.hidden_size={self.hidden_size} is not a multiple of "
                                 f"num_attention_heads={self.num_attention_heads}")
        elif self.num_attention_heads is not None:
            raise ValueError("arch.num_attention_heads is for family pythia only (mamba has no heads)")
        return self

    def label(self) -> str:
        return f"{self.family}-d{self.hidden_size}-l{self.num_hidden_layers}"

    def transformers_kwargs(self) -> dict[str, Any]:
        """The family's transformers config keys (probes.backbones.custom_config takes them)."""
        if self.family == "pythia":
            keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "rotary_pct",
                    "intermediate_size", "max_position_embeddings")
        else:
            keys = ("hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


class PretrainConfig(Config):
    """One causal-LM pretraining run (probes.pretrain): a backbone, a local corpus, a token budget."""

    model: str | None = Field(None, description="BACKBONES preset (vocabulary replaced by the tokenizer's); "
                                                "or set arch")
    arch: ArchConfig | None = Field(None, description="sized custom backbone (instead of model)")
    seed: int = Field(0, ge=0, description="seed of model init and of the training windows")
    # corpus and tokenizer
    corpus: list[str] = Field(default_factory=list, description="files, directories or globs (empty: the "
                              "source and docs of the installed Python packages)")
    extensions: list[str] = Field(default_factory=lambda: [".py", ".md", ".rst", ".txt"],
                                  description="file endings read from directories")
    max_corpus_bytes: int = Field(256_000_000, gt=0, description="read files (sorted) up to this many bytes")
    heldout_fraction: float = Field(0.01, gt=0, lt=1, description="share of documents held out (by path hash)")
    tokenizer: Tokenizer = Field("byte", description="byte (ids 2..257 = bytes 0..255) | bpe (trained here)")
    vocab_size: int = Field(8192, ge=258, le=65535, description="BPE vocabulary size (tokenizer: bpe)")
    # budget and optimisation
    tokens: int = Field(100_000_000, gt=0, description="training tokens (steps = tokens / (batch_size x seq_len))")
    batch_size: int = Field(64, gt=0, description="sequences per step")
    seq_len: int = Field(512, ge=2, description="tokens per sequence")
    lr: float = Field(1e-3, gt=0, le=1, allow_inf_nan=False, description="peak AdamW learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine ends at lr x this")
    warmup: int = Field(200, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.1, ge=0, allow_inf_nan=False, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient norm (None, or 0 on the command "
                                    "line: no clipping)", json_schema_extra={"cli_none": ["0"]})
    # evaluation
    eval_every: int | None = Field(None, gt=0, description="steps between evaluations (None: 5% of the steps)")
    eval_windows: int = Field(64, gt=0, description="held-out windows of seq_len + 1 tokens per evaluation")
    copy_lengths: list[int] = Field(default_factory=lambda: [16, 64, 128], min_length=1,
                                    description="copy-test lengths (probes.copytest)")
    copy_batch: int = Field(32, gt=0, description="copy-test sequences per length")
    # execution (may change when a run resumes)
    out: Path | None = Field(None, description="run directory (None: runs/pretrain/<run name>)")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto | cpu | cuda[:i]")
    precision: Precision = Field("auto", description="auto (bf16 autocast on CUDA, else fp32) | bf16 | fp32")
    scan_backend: ScanBackend = Field("auto", description="Mamba selective scan")
    checkpoint_every: int | None = Field(None, gt=0, description="steps between checkpoints (None: every evaluation)")
    threads: Threads = Field("auto", description=THREADS_HELP)
    log_to: LogTo = Field(default_factory=list, description=LOG_TO_HELP)

    @field_validator("model")
    @classmethod
    def _preset(cls, name: str | None) -> str | None:
        from probes.backbones import BACKBONES  # lazy: keeps `probes.config` free of torch

        if name is not None and name not in BACKBONES:
            raise ValueError(f"unknown model '{name}' for pretraining (allowed: {', '.join(BACKBONES)}, or set arch)")
        return name

    @field_validator("copy_lengths")
    @classmethod
    def _lengths(cls, lengths: list[int]) -> list[int]:
        if min(lengths) < 2:
            raise ValueError(f"copy_lengths must be >= 2, got {lengths}")
        return lengths

    @model_validator(mode="after")
    def _one_backbone_and_a_batch(self) -> PretrainConfig:
        if (self.model is None) == (self.arch is None):
            raise ValueError("set exactly one of model (a BACKBONES preset) and arch (a sized custom backbone)")
        if self.tokens < self.batch_size * self.seq_len:
            raise ValueError(f"tokens={self.tokens:,} is smaller than one batch (batch_size x seq_len = "
                             f"{self.batch_size * self.seq_len:,}; allowed: tokens >= that)")
        return self

    @property
    def max_steps(self) -> int:
        return self.tokens // (self.batch_size * self.seq_len)

    @property
    def effective_eval_every(self) -> int:
        return self.eval_every if self.eval_every is not None else max(1, self.max_steps // 20)

    @property
    def label(self) -> str:
        return self.model if self.model is not None else self.arch.label()

"""Run configuration: dataclasses, YAML loading, dotted `key=value` overrides, validation.

Everything a run needs is checked here before any heavy work (no model is built, no data is read
beyond checking that files exist), and every problem is an `LmlabError` with one line that names the
key and the fix.

    cfg = load_config("tiny", ["model.n_layers=2", "train.max_steps=50"])
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmlab.data import resolve_data_file, resolve_generator
from lmlab.inputs import read_text
from lmlab.model import GPTConfig
from lmlab.speed import SDPA_CHOICES
from lmlab.utils import LmlabError, check_lr

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BF16_NEEDS_CUDA = (
    "train.dtype=bf16 needs a CUDA device (bf16 autocast is CUDA-only in lmlab; on {device} the run "
    "would silently train in fp32): use train.dtype=auto or fp32, or train.device=cuda"
)


@dataclass
class SourceConfig:
    """One source of documents; sources are mixed by `weight` (the data-composition knob)."""

    kind: str = "synthetic"  # "synthetic" | "text"
    name: str = ""  # label in logs (default: generator name or file stem)
    generator: str = "grammar"  # synthetic: "grammar" | "arithmetic" | "package.module:function"
    path: str | None = None  # text: a file; relative paths are tried in the cwd, then under $LMLAB_DATA
    doc_sep: str = "\n\n"  # text: separator between documents
    weight: float = 1.0

    def label(self) -> str:
        """The source's name in logs and metrics: `name`, else the file stem or the generator."""
        if self.name:
            return self.name
        return Path(self.path).stem if self.kind == "text" and self.path else self.generator.split(":")[-1]


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    # "char" | "bpe" | a tokenizer.json (lmlab's, or a stock HF one whose bos/eos/pad its folder names)
    tokenizer: str = "char"
    bpe_vocab_size: int = 4096
    val_frac: float = 0.05  # text sources: the last fraction of documents is held out
    buffer_docs: int = 64  # documents held for best-fit packing


@dataclass
class TrainConfig:
    max_steps: int = 200
    batch_size: int = 16  # rows per micro-batch per process
    grad_accum: int = 1
    seq_len: int | None = None  # row length; default model.seq_len
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup: int = 20
    schedule: str = "cosine"  # "cosine" | "constant" | "wsd" (warmup-stable-decay)
    decay_frac: float = 0.2  # wsd: the share of max_steps spent decaying linearly to min_lr_frac·lr
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # 0 disables clipping
    save_every: int = 0  # 0: only save_steps, the seed checkpoint and the final step
    save_steps: list[int] = field(default_factory=list)
    eval_every: int = 0
    eval_batches: int = 4
    log_every: int = 10
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: "default" | "reduce-overhead" | "max-autotune" | ...
    loss_chunk: int | None = None  # rows per chunk of the chunked cross-entropy; None: 8192 on CUDA, 0 (off) elsewhere
    sdpa_backend: str = "auto"  # attention kernel tried first: "auto" (on CUDA the faster of cudnn and flash, timed
    # at the run's shape) | "default" (PyTorch's order) | "flash" | "cudnn" | "efficient" | "math"
    parallel: str = "ddp"  # under torchrun: "ddp" (replicated weights) | "fsdp" (FSDP2: weights, grads, optimizer sharded)
    seed: int = 0  # model init
    data_seed: int | None = None  # data order (default: seed)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "bf16" | "fp32"
    threads: int | None = None  # torch intra-op threads (1 is fastest for tiny CPU models)
    tensorboard: bool = True
    progress: bool = True


@dataclass
class RunConfig:
    model: dict = field(
        default_factory=dict
    )  # lmlab.model.GPTConfig fields; vocab_size defaults to the tokenizer's
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """The config as nested plain dicts (what a checkpoint's meta.json holds)."""
        return dataclasses.asdict(self)

    @property
    def seq_len(self) -> int:
        """Training row length: train.seq_len, else the model's."""
        return self.train.seq_len or self.model_config().seq_len

    def model_config(self, vocab_size: int | None = None):
        """The GPTConfig of `model`, its vocab_size defaulting to `vocab_size` (the tokenizer's)."""
        d = dict(self.model)
        if vocab_size is not None and not d.get("vocab_size"):
            d["vocab_size"] = vocab_size
        d.setdefault("vocab_size", 256)
        try:
            return GPTConfig(**d)
        except ValueError as e:
            raise LmlabError(str(e)) from None


# ---------------------------------------------------------------- building from plain dicts
def _type_name(t) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _coerce(value: Any, hint, key: str):
    """Check `value` against a type hint (int, float, bool, str, None, list[X], dict, dataclass)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if type(value) in args:  # already one of the members (int stays int in `int | float`)
            return value
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except LmlabError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise LmlabError(f"config key {key!r} must be a mapping of {hint.__name__} fields, got {value!r}")
        return build(hint, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise LmlabError(f"config key {key!r} must be a list, got {value!r}: write it as [a, b, ...]")
        (inner,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, inner, f"{key}.{i}") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise LmlabError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # `key=1` / `key=0` on the command line
            return bool(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise LmlabError(f"config key {key!r} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def _unknown_key(key: str, known) -> LmlabError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(known), n=1)
    hint = (
        f"did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?"
        if close
        else f"known keys: {', '.join(sorted(known))}"
    )
    return LmlabError(f"unknown config key {key!r}: {hint}")


def build(cls, d: dict, prefix: str = ""):
    """Build dataclass `cls` from a plain dict, with type checks and one-line errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in (d or {}).items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise _unknown_key(key, names)
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def _check_model(model: dict) -> dict:
    hints = typing.get_type_hints(GPTConfig)
    out = {}
    for k, v in model.items():
        if k not in hints:
            raise _unknown_key(f"model.{k}", hints)
        out[k] = _coerce(v, hints[k], f"model.{k}")
    return out


# ---------------------------------------------------------------- overrides
def set_dotted(d: dict, key: str, value: Any) -> None:
    """Set `a.b.0.c` inside nested dicts/lists (list items by index); creates missing dicts."""
    parts = key.split(".")
    cur: Any = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            cur = cur[_index(cur, p, parts[: i + 1])]
            continue
        if cur.get(p) is None:
            nxt = parts[i + 1]
            cur[p] = [] if nxt.isdigit() else {}
        cur = cur[p]
        if not isinstance(cur, (dict, list)):
            raise LmlabError(f"override {key!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
    last = parts[-1]
    if isinstance(cur, list):
        cur[_index(cur, last, parts)] = value
    else:
        cur[last] = value


def _index(lst: list, p: str, parts: list[str]) -> int:
    if not p.isdigit() or int(p) >= len(lst):
        raise LmlabError(
            f"override {'.'.join(parts)!r}: {p!r} is not an index of a list with {len(lst)} items"
        )
    return int(p)


def parse_value(v: str) -> Any:
    """A `key=value` override's value read as YAML (numbers, lists, booleans), else the string."""
    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


def split_overrides(items: list[str]) -> dict[str, str]:
    """`key=value` pairs from the command line, values still text (each is parsed against its field's type)."""
    out = {}
    for it in items:
        if "=" not in it:
            raise LmlabError(f"override {it!r} is not key=value (e.g. train.max_steps=50)")
        k, v = it.split("=", 1)
        if not k.strip():
            raise LmlabError(f"override {it!r} has no key before '='")
        out[k.strip()] = v.strip()
    return out


def _accepts(hint, kind) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return kind in args


def coerce_text(text: str, hint, key: str):
    """A command-line value for a field of type `hint`: text fields take it as it is (`key=` is the empty
    string; a union with text, e.g. `int | str`, first tries its other members), `null`/`none`/`~` is None
    where the field allows None, anything else is read as YAML and type-checked (`[8, 16]` for a list, `1e-3`
    for a float, `yes`/`no`/`1`/`0` for a bool)."""
    if _accepts(hint, type(None)) and text.strip().lower() in ("null", "none", "~"):
        return None
    if _accepts(hint, str):
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        for other in (m for m in members if m not in (str, type(None))):  # `int | str`: 3 is an int
            try:
                return _coerce(parse_value(text.strip()), other, key)
            except LmlabError:
                pass
        return text
    if not text.strip():
        raise LmlabError(f"config key {key!r} was given an empty value; it expects {_type_name(hint)}")
    return _coerce(parse_value(text.strip()), hint, key)


def override(cfg, overrides: dict[str, Any]):
    """A copy of the dataclass `cfg` with `overrides` applied: text values (as given on the command line) go
    through `coerce_text`, others are type-checked; an unknown key is named with the closest known one. The
    one parser for run configs' and experiment presets' `key=value` overrides."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for k, v in overrides.items():
        if k not in names:
            raise _unknown_key(k, names)
        changes[k] = coerce_text(v, hints[k], k) if isinstance(v, str) else _coerce(v, hints[k], k)
    return dataclasses.replace(cfg, **changes)


def apply_overrides(raw: dict, overrides: list[str] | dict) -> dict:
    """`raw` with dotted `key=value` overrides applied (unknown keys raise, naming the key)."""
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = [(k, parse_value(v)) for k, v in split_overrides(overrides).items()]
    if any(k == "data.sources" or k.startswith("data.sources.") for k, _ in items):
        # sources default to one synthetic source; materialise it so `data.sources.0.x=...` works
        raw.setdefault("data", {}).setdefault("sources", [dataclasses.asdict(SourceConfig())])
    for k, v in items:
        set_dotted(raw, k, v)
    return raw


# ---------------------------------------------------------------- loading and validation
PACKAGED = Path(__file__).parent / "configs"  # configs shipped in the package, addressable by name


def packaged_configs() -> list[str]:
    """Names of the configs shipped with lmlab (`--config tiny`)."""
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """Read a YAML run config — a path, or the name of a packaged config such as `tiny` — (or start from defaults),
    apply overrides, build and validate it."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file() and (PACKAGED / f"{p.name.removesuffix('.yaml')}.yaml").is_file() and p.parent == Path("."):
            p = PACKAGED / f"{p.name.removesuffix('.yaml')}.yaml"  # a config shipped with lmlab, by name
        if not p.is_file():
            raise LmlabError(
                f"config file {p} not found: pass --config with the name of a packaged config "
                f"({', '.join(packaged_configs())}) or the path of a YAML file"
            )
        try:
            raw = yaml.safe_load(read_text(p, "config file", allow_empty=True)) or {}
        except yaml.YAMLError as e:
            raise LmlabError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise LmlabError(f"config file {p} must hold a mapping with model/data/train sections")
    return from_dict(apply_overrides(raw, overrides or []))


def from_dict(raw: dict) -> RunConfig:
    """A validated RunConfig from a raw mapping (a YAML file's contents)."""
    raw = dict(raw)
    model = raw.pop("model", None) or {}
    if not isinstance(model, dict):
        raise LmlabError(f"config key 'model' must be a mapping of GPTConfig fields, got {model!r}")
    cfg = build(RunConfig, raw)
    cfg.model = _check_model(model)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Raise a LmlabError naming the key for every unusable setting, before any heavy work."""
    t, d = cfg.train, cfg.data
    mc = cfg.model_config()  # shape checks (d_model % n_heads, attention names, ...)
    for name in ("max_steps", "batch_size", "grad_accum"):
        if getattr(t, name) < 1:
            raise LmlabError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.seq_len is not None and t.seq_len < 1:
        raise LmlabError(f"train.seq_len must be >= 1, got {t.seq_len}")
    if t.seq_len and t.seq_len > mc.seq_len:
        raise LmlabError(f"train.seq_len={t.seq_len} exceeds model.seq_len={mc.seq_len}: raise model.seq_len")
    check_lr(t.lr, "train.lr")
    if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):  # NaN would reach the optimizer
        raise LmlabError(f"train.weight_decay must be a finite number >= 0, got {t.weight_decay}")
    if t.warmup < 0 or not 0 <= t.min_lr_frac <= 1:
        raise LmlabError(
            f"need train.warmup >= 0 and 0 <= train.min_lr_frac <= 1 (got {t.warmup}, {t.min_lr_frac})"
        )
    if t.schedule not in ("cosine", "constant", "wsd"):
        raise LmlabError(f"train.schedule must be 'cosine', 'constant' or 'wsd', got {t.schedule!r}")
    if not 0 <= t.decay_frac <= 1:
        raise LmlabError(f"train.decay_frac must be in [0, 1] (the wsd schedule's decay share), got {t.decay_frac}")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise LmlabError(f"train.betas must be two numbers in [0, 1), got {t.betas}")
    if not t.grad_clip >= 0:  # also refuses NaN
        raise LmlabError(f"train.grad_clip must be >= 0 (0 disables clipping), got {t.grad_clip}")
    if t.parallel not in ("ddp", "fsdp"):
        raise LmlabError(f"train.parallel must be ddp or fsdp (used under torchrun), got {t.parallel!r}")
    if t.dtype not in ("auto", "bf16", "fp32"):
        raise LmlabError(f"train.dtype must be auto, bf16 or fp32, got {t.dtype!r}")
    if t.device not in ("auto", "cpu") and not t.device.startswith("cuda"):
        raise LmlabError(f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}")
    if t.dtype == "bf16" and t.device == "cpu":
        raise LmlabError(BF16_NEEDS_CUDA.format(device="cpu"))
    if any(s < 0 for s in t.save_steps) or t.save_every < 0 or t.eval_every < 0 or t.log_every < 1:
        raise LmlabError("train.save_steps/save_every/eval_every must be >= 0 and train.log_every >= 1")
    if t.seed < 0 or (t.data_seed is not None and t.data_seed < 0):
        raise LmlabError(f"train.seed and train.data_seed must be >= 0, got {t.seed}, {t.data_seed}")
    if t.compile_mode not in COMPILE_MODES:
        raise LmlabError(f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {t.compile_mode!r}")
    if t.loss_chunk is not None and t.loss_chunk < 0:
        raise LmlabError(f"train.loss_chunk must be >= 0 (0: no chunking) or null (chunked on CUDA), got {t.loss_chunk}")
    if t.sdpa_backend not in SDPA_CHOICES:
        raise LmlabError(f"train.sdpa_backend must be one of {', '.join(SDPA_CHOICES)}, got {t.sdpa_backend!r}")
    if t.threads is not None and t.threads < 1:
        raise LmlabError(f"train.threads must be >= 1, got {t.threads}")
    if not d.sources:
        raise LmlabError("data.sources is empty: give at least one source (e.g. kind: synthetic)")
    for i, s in enumerate(d.sources):
        key = f"data.sources.{i}"
        if s.kind not in ("synthetic", "text"):
            raise LmlabError(f"{key}.kind must be 'synthetic' or 'text', got {s.kind!r}")
        if s.weight <= 0:
            raise LmlabError(f"{key}.weight must be > 0, got {s.weight}")
        if s.kind == "text":
            if not s.path:
                raise LmlabError(f"{key} is a text source without a path: set {key}.path=FILE")
            resolve_data_file(s.path, f"{key}.path")
        else:
            resolve_generator(s.generator, f"{key}.generator")
    if d.tokenizer not in ("char", "bpe"):
        if not Path(d.tokenizer).expanduser().exists():
            raise LmlabError(
                f"data.tokenizer {d.tokenizer!r} is neither 'char', 'bpe' nor an existing tokenizer file or "
                "Hugging Face tokenizer folder"
            )
    if not 0 <= d.val_frac < 1 or d.buffer_docs < 1 or d.bpe_vocab_size < 260:
        raise LmlabError("need 0 <= data.val_frac < 1, data.buffer_docs >= 1 and data.bpe_vocab_size >= 260")
    if t.eval_every and d.val_frac == 0 and any(s.kind == "text" for s in d.sources):
        raise LmlabError(
            f"train.eval_every={t.eval_every} needs held-out text documents, but data.val_frac=0: set "
            "data.val_frac > 0 or train.eval_every=0"
        )

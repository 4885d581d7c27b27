"""Step-indexed checkpoints: `RUN/step_000123/{model.safetensors, optim.pt, meta.json}`.

A checkpoint is written into a hidden temporary folder and renamed into place only when complete, so a
`step_*` folder is either whole or absent. `meta.json` records the model config (enough to rebuild the
model, custom attention included), the full run config, step, tokens seen, the data-loader state, RNG
states, versions and the sha256 of every file; `load` refuses a file whose hash differs, naming it.

    path = save(run, step, model, optimizer, config=cfg.to_dict(), tokens_seen=n,
                data_state=loader.state_dict())
    model, meta = load(run)            # latest complete step
    model, meta = load(run, step=0)    # the seed checkpoint
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import io
import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

import lmlab
from lmlab.model import GPT, GPTConfig
from lmlab.utils import LmlabError, atomic_write_bytes, fsync_path, git_state, to_jsonable, writing

FORMAT_VERSION = 1
MODEL_FILE, OPTIM_FILE, META_FILE = "model.safetensors", "optim.pt", "meta.json"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


def step_dir(run: str | Path, step: int) -> Path:
    return Path(run) / f"step_{step:06d}"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def list_steps(run: str | Path) -> list[int]:
    """Steps with a complete checkpoint (a `step_N` folder holding meta.json), ascending."""
    run = Path(run)
    if not run.is_dir():
        return []
    steps = []
    for p in run.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / META_FILE).is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_step(run: str | Path) -> int | None:
    steps = list_steps(run)
    return steps[-1] if steps else None


def remove_partial(run: str | Path) -> list[Path]:
    """Tidy up after saves killed midway: delete unfinished temporary folders, and put back a replaced
    checkpoint whose replacement never landed. Returns the folders removed."""
    run = Path(run)
    gone = []
    for p in sorted(run.glob(".old-step_*")):
        final = run / p.name[len(".old-") :].rsplit("-", 1)[0]
        if p.is_dir() and not final.exists():
            os.rename(p, final)
        elif p.is_dir():
            gone.append(p)
    gone += [p for p in run.glob(".tmp-step_*") if p.is_dir()]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


# ---------------------------------------------------------------- RNG states
def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return state


def set_rng_state(state: dict) -> None:
    def tensor(b64: str) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(base64.b64decode(b64), dtype=np.uint8).copy())

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        states = [tensor(s) for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ---------------------------------------------------------------- saving
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _git_sha() -> str | None:
    return git_state()[0]


def model_config_dict(model: nn.Module) -> dict:
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise LmlabError(f"cannot checkpoint {type(model).__name__}: lmlab checkpoints hold lmlab GPT models")
    return cfg.to_dict()


def save(
    run: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    config: dict | None = None,
    tokens_seen: int = 0,
    data_state: dict | None = None,
    extra: dict | None = None,
    save_rng: bool = True,
    optimizer_state: dict | None = None,
) -> Path:
    """Write checkpoint `step` of `run` atomically and return its folder (an existing one is replaced).
    `optimizer_state` replaces `optimizer.state_dict()` (FSDP saves its gathered full state this way)."""
    run = Path(run)
    with writing(step_dir(run, step)):  # a full disk or a permission error: one line naming the checkpoint
        return _save(run, step, model, optimizer, config, tokens_seen, data_state, extra, save_rng, optimizer_state)


def _save(run: Path, step: int, model: nn.Module, optimizer, config, tokens_seen, data_state, extra, save_rng,
          optimizer_state) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    tmp = run / f".tmp-step_{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
        canonical_header(tmp / MODEL_FILE)
        if optimizer_state is None and optimizer is not None:
            optimizer_state = optimizer.state_dict()
        if optimizer_state is not None:
            buf = io.BytesIO()  # torch.save straight to a full disk fails with no errno; a plain write keeps it
            torch.save(optimizer_state, buf)
            with open(tmp / OPTIM_FILE, "wb") as f:
                f.write(buf.getbuffer())
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        meta = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "tokens_seen": int(tokens_seen),
            "model_config": model_config_dict(model),
            "attention_modules": sorted({type(b.attn).__module__ for b in getattr(model, "blocks", [])}),
            "run_config": config,
            "data_state": data_state,
            "rng": rng_state() if save_rng else None,
            "extra": extra or {},
            "lmlab_version": lmlab.__version__,
            "torch_version": torch.__version__,
            "git_sha": _git_sha(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files,
            "content_hash": files[MODEL_FILE],
        }
        with open(tmp / META_FILE, "w") as f:  # written last: its presence marks the folder complete
            json.dump(to_jsonable(meta), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for p in tmp.iterdir():
            fsync_path(p)
        final = step_dir(run, step)
        old = None
        if final.exists():
            old = run / f".old-{final.name}-{os.getpid()}"
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_path(run)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, in place. safetensors writes its header maps in
    a per-process random order, so equal weights gave different bytes and content hashes; the data section and
    every offset are unchanged (the header keeps its length)."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(text) > n:  # never expected: the same content, compactly written
            raise RuntimeError(f"{path}: the sorted safetensors header does not fit ({len(text)} > {n} bytes)")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


# ---------------------------------------------------------------- loading
def resolve(run: str | Path, step: int | None = None) -> Path:
    """The folder of checkpoint `step` (latest complete by default); `run` may itself be a step folder."""
    run = Path(run)
    if _STEP_DIR.match(run.name) and step is None:
        d = run
    else:
        if not run.is_dir():
            raise LmlabError(f"run folder {run} does not exist: pass the --out folder of a pretrain run")
        steps = list_steps(run)
        if step is None:
            if not steps:
                raise LmlabError(f"no complete checkpoint in {run}: train first (lmlab pretrain --out {run})")
            step = steps[-1]
        d = step_dir(run, step)
        if step not in steps and not d.is_dir():
            raise LmlabError(f"no checkpoint for step {step} in {run}: available steps {steps}")
    if not (d / META_FILE).is_file():
        raise LmlabError(
            f"checkpoint {d} is incomplete: {d / META_FILE} is missing (a half-written save?); "
            "delete the folder and load another step"
        )
    return d


def read_meta(d: Path) -> dict:
    path = d / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmlabError(
            f"checkpoint metadata {path} is unreadable ({e}): the checkpoint is damaged; "
            "delete the folder and load another step"
        ) from None
    if not isinstance(meta, dict) or "files" not in meta or "model_config" not in meta:
        raise LmlabError(f"checkpoint metadata {path} lacks files/model_config: not an lmlab checkpoint")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise LmlabError(
            f"checkpoint {path} has format {meta['format_version']}, newer than this lmlab "
            f"({FORMAT_VERSION}): upgrade lmlab"
        )
    return meta


def verify(d: Path, meta: dict, name: str) -> Path:
    """Check file `name` of checkpoint folder `d` against the sha256 in its meta.json."""
    path = d / name
    want = meta["files"].get(name)
    if want is None:
        raise LmlabError(f"checkpoint {d} has no {name} (meta.json lists {sorted(meta['files'])})")
    if not path.is_file():
        raise LmlabError(
            f"checkpoint file {path} is missing: the checkpoint is incomplete; "
            "delete the folder and load another step"
        )
    if sha256_file(path) != want:
        raise LmlabError(
            f"checkpoint file {path} is corrupted or was modified (sha256 differs from meta.json): "
            "delete the folder and load another step"
        )
    return path


def build_model(model_config: dict, attention_modules=()) -> nn.Module:
    """A fresh GPT from a saved config; attention classes registered outside lmlab.model are imported."""
    for mod in attention_modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise LmlabError(
                f"the checkpoint's attention needs module {mod!r}, which does not import ({e})"
            ) from None
    try:
        return GPT(GPTConfig.from_dict(model_config))
    except ValueError as e:
        raise LmlabError(f"checkpoint model config is invalid: {e}") from None


def load(
    run: str | Path, step: int | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """(model, meta) of checkpoint `step` of `run` (latest complete step by default), hash-checked."""
    d = resolve(run, step)
    meta = read_meta(d)
    path = verify(d, meta, MODEL_FILE)
    model = build_model(meta["model_config"], meta.get("attention_modules", ()))
    load_weights(model, path, device)
    model.to(device)
    meta["path"] = str(d)
    return model, meta


def load_into(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, run: str | Path, step: int | None = None
) -> dict:
    """Load weights (and optimizer state when given) of a checkpoint into existing objects; returns meta."""
    d = resolve(run, step)
    meta = read_meta(d)
    model = unwrap(model)
    saved, current = meta["model_config"], model_config_dict(model)
    if saved != current:
        diff = {
            k: (saved.get(k), current.get(k))
            for k in set(saved) | set(current)
            if saved.get(k) != current.get(k)
        }
        raise LmlabError(
            f"checkpoint {d} was saved with a different model config {diff} (saved, current): "
            "resume with the same model settings"
        )
    device = next(model.parameters()).device
    load_weights(model, verify(d, meta, MODEL_FILE), device)
    if optimizer is not None:
        load_optimizer_into(optimizer, model, load_optimizer_state(run, meta["step"], device), d / OPTIM_FILE)
    meta["path"] = str(d)
    return meta


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def load_weights(model: nn.Module, path: Path, device: str | torch.device = "cpu") -> None:
    """Load a model.safetensors into `model`; a file of another model (a tensor of another shape, missing or extra
    names — possible where its hash matches, e.g. a copied meta.json) is refused naming the parameter and shapes."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # a safetensors file handle, not a dict
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in names}
    except (SafetensorError, OSError) as e:
        raise LmlabError(f"checkpoint file {path} is not a readable safetensors file ({_first_line(e)}): the "
                         "checkpoint is damaged; delete the folder and load another step") from None
    current = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, shape in saved.items():
        if name in current and current[name] != shape:
            raise LmlabError(f"checkpoint file {path} holds {name} with shape {shape}, but the model its meta.json "
                             f"describes has {current[name]}: the file belongs to another model; delete the folder "
                             "and load another step")
    unknown = sorted(set(saved) - set(current))
    if unknown:
        raise LmlabError(f"checkpoint file {path} holds {unknown[0]} (shape {saved[unknown[0]]}), which the model its "
                         f"meta.json describes does not have ({len(unknown)} such tensors): the file belongs to "
                         "another model")
    try:
        load_model(model, str(path), strict=True, device=str(device))
    except (RuntimeError, SafetensorError) as e:  # names missing (tied weights are the only ones left out)
        raise LmlabError(f"checkpoint file {path} does not fit the model its meta.json describes "
                         f"({_first_line(e)}): delete the folder and load another step") from None


def load_optimizer_into(optimizer: torch.optim.Optimizer, model: nn.Module, state: dict, path: Path) -> None:
    """`optimizer.load_state_dict(state)`, refusing a state saved for another model with the parameter and shapes
    (torch copies per-parameter state without comparing shapes, so a foreign file would fail at the first step)."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise LmlabError(f"optimizer state {path} does not fit this model's optimizer ({_first_line(e)}): it was "
                         "saved for another model; delete the checkpoint folder and resume from another step") \
            from None
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    raise LmlabError(
                        f"optimizer state {path} holds {key} of {names.get(id(p), 'a parameter')} with shape "
                        f"{tuple(value.shape)}, but the parameter has {tuple(p.shape)}: it was saved for another "
                        "model; delete the checkpoint folder and resume from another step")


def load_optimizer_state(run: str | Path, step: int | None = None, device: str | torch.device = "cpu") -> dict:
    """The saved optimizer state of a checkpoint, hash-checked."""
    d = resolve(run, step)
    path = verify(d, read_meta(d), OPTIM_FILE)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file that is not a state dict
        raise LmlabError(f"optimizer state {path} is unreadable ({_first_line(e)}): the checkpoint is damaged; "
                         "delete the folder and resume from another step") from None
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) or "param_groups" not in state:
        raise LmlabError(f"optimizer state {path} is not an optimizer state dict: delete the folder and resume "
                         "from another step")
    return state


# ---------------------------------------------------------------- resume snapshots of the light loops
def save_snapshot(path: str | Path, state: dict) -> None:
    """Write a resume snapshot (`torch.save` of tensors and plain values) atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_snapshot(path: str | Path, run: dict, missing: str) -> dict:
    """A snapshot saved with `"run": run`; an LmlabError when it is absent (`missing` says why and what to do)
    or was taken with other settings (naming them)."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"--resume: {path} not found ({missing})")
    try:
        snap = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a truncated or foreign file
        raise LmlabError(f"--resume: {path} is damaged ({_first_line(e)}): delete it and start the run again "
                         "without --resume") from None
    if not isinstance(snap, dict) or not isinstance(snap.get("run"), dict):
        raise LmlabError(f"--resume: {path} is not an lmlab resume snapshot: delete it and start the run again "
                         "without --resume")
    check_same_run(snap["run"], run, path)
    return snap


def check_same_run(saved: dict, run: dict, where: str | Path) -> None:
    """Refuse a --resume whose settings differ from those the interrupted run saved (at `where`), naming them."""
    diff = {k: (saved.get(k), v) for k, v in run.items() if saved.get(k) != v}
    if diff:
        raise LmlabError(f"--resume: {where} was written with other settings {diff} (saved, given): "
                         "resume with the interrupted run's command")


def random_state(saved) -> tuple:
    """A `random.Random.getstate()` back from a snapshot (torch.load gives lists where tuples were)."""
    return tuple(random_state(v) for v in saved) if isinstance(saved, (list, tuple)) else saved


# ------------------------------------------------------------------ exact resume of post-training phases
class Resume:
    """Snapshots of a post-training run between steps, for a resume that continues exactly.

    Each phase loop `attach`es its optimizers and sampling streams (objects with `rng` and `order`) and, in RL,
    the KL reference; `snapshot(steps_done)` (from the step callback) captures them with the policy weights and
    the global RNG, and `attach` restores them when the run resumes from a snapshot taken in that phase. Phases
    before the snapshot's are skipped (the weights already hold them)."""

    def __init__(self, state: dict | None = None):
        self.state = state  # the snapshot resumed from; None: a fresh run
        self.finished: list[str] = list(state["finished"]) if state else []
        self.phase = self.model = self._ref = None
        self._opts: dict = {}
        self._streams: dict = {}

    def attach(self, phase: str, model: nn.Module, opts: dict, streams: dict, ref: nn.Module | None = None) -> int:
        """Register a phase's state; returns the step to start from, or -1 when the snapshot is past this phase."""
        if self.phase is not None and self.phase not in self.finished:  # phases run one after the other
            self.finished.append(self.phase)
        self.phase, self.model, self._opts, self._streams, self._ref = phase, model, opts, streams, ref
        st = self.state
        if st is None or phase not in self.finished + [st["phase"]]:
            return 0
        if phase in self.finished:
            return -1
        for k, opt in opts.items():
            opt.load_state_dict(st["opts"][k])
        for k, stream in streams.items():
            rng, order = st["streams"][k]
            stream.rng.setstate(random_state(rng))
            stream.order = list(order)
        if ref is not None and st.get("ref") is not None:
            ref.load_state_dict(st["ref"])
        return st["step"]

    def snapshot(self, steps_done: int) -> dict:
        """The run after `steps_done` steps of the attached phase."""
        return {"phase": self.phase, "step": steps_done, "finished": list(self.finished),
                "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "opts": {k: o.state_dict() for k, o in self._opts.items()},
                "streams": {k: [s.rng.getstate(), list(s.order)] for k, s in self._streams.items()},
                "ref": None if self._ref is None else self._ref.state_dict(), "rng": rng_state()}


def phase_range(resume: Resume | None, phase: str, steps: int, model, opts: dict, streams: dict, ref=None):
    """The steps a post-training phase still has to run: all of them on a fresh run, the rest after its snapshot,
    none when the snapshot is past this phase."""
    start = 0 if resume is None else resume.attach(phase, model, opts, streams, ref)
    return range(steps if start < 0 else start, steps)

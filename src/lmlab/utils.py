"""Small shared helpers: user-facing errors, atomic writes, seeding, devices, data locations."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import hashlib
import json
import os
import random
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError, write_failure  # noqa: F401  (torch-free; most modules import them here)


# ---------------------------------------------------------------- atomic files
@contextlib.contextmanager
def writing(path: str | Path):
    """Turn a full disk or a permission error inside the block into a LmlabError naming `path`."""
    try:
        yield
    except Exception as e:
        err = write_failure(e, path)
        if err is None:
            raise
        raise err from None


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask(0) is process-wide)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # portable fallback: set and restore at once
    os.umask(mask)
    return mask


def fsync_path(path: str | Path) -> None:
    """fsync a file or folder (a folder: so that a rename inside it is durable); ignored where it cannot be
    opened for reading (e.g. folders on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename into place and fsync the folder.

    The file gets the mode a plain `open(path, "w")` would give (0o666 minus the umask), not mkstemp's 0o600.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    fsync_path(path.parent)


def atomic_write_png(path: str | Path, fig) -> Path:
    """Save a matplotlib figure as a PNG atomically (dpi 110, tight bounding box) and close it."""
    import matplotlib.pyplot as plt  # heavy: only when a figure is written

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars, arrays, paths and dataclasses into plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


# ---------------------------------------------------------------- seeding & devices
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_device(name: str | None = None) -> torch.device:
    """`None`/"auto" picks CUDA when available, else CPU. Unknown or unavailable names raise LmlabError."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise LmlabError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LmlabError(f"device {name!r} requested but CUDA is not available: use --device cpu")
    return dev


def autocast_ctx(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA, a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tiny_threads() -> None:
    """Tiny models on few cores run far faster single-threaded (intra-op overhead dominates)."""
    torch.set_num_threads(1)


def pad_batch(seqs, pad_id: int = 0, *, left: bool = False, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as (B, T) long ids padded with `pad_id` to the longest, and the (B, T) bool mask of
    real tokens: right-padded (real tokens first), or left-padded (`left=True`, real tokens last)."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        real = slice(n - len(s), n) if left else slice(0, len(s))
        ids[i, real] = torch.tensor(s, dtype=torch.long)
        mask[i, real] = True
    return ids.to(device), mask.to(device)


# ---------------------------------------------------------------- real data
def data_root(explicit: str | Path | None = None) -> Path | None:
    """The real-data root: an explicit `--data DIR`, else `$LMLAB_DATA`; None when neither is set.

    Layout as in the project's shared data folder: sumerian/, knowledge/, lmc/, text/.
    """
    cand = explicit or os.environ.get("LMLAB_DATA")
    if not cand:
        return None
    p = Path(cand).expanduser()
    if not p.is_dir():
        raise LmlabError(f"data directory {p} does not exist: pass --data DIR or set LMLAB_DATA to a folder "
                         "holding sumerian/, knowledge/, lmc/, text/")
    return p


def find_data(sub: str, explicit: str | Path | None = None) -> Path | None:
    """Path to a real-data subfolder (e.g. "sumerian"), or None when it is not available."""
    root = data_root(explicit)
    if root is None:
        return None
    p = root / sub
    return p if p.exists() else None


DATA_HINT = ("real data not found: pass --data DIR or set LMLAB_DATA to a folder with sumerian/, knowledge/, "
             "lmc/, text/ (the lmlab repository's CI uses ../shared/data)")


# Far above any rate that trains a model; from about 1e37 the optimizers' float32 arithmetic (lr / (1 - beta1))
# overflows and torch raises instead of training.
MAX_LR = 1e6


def check_lr(lr: float, name: str) -> None:
    """Raise LmlabError naming `name` (e.g. "sft.lr (--sft-lr)") unless `lr` is a number in (0, MAX_LR]."""
    if not 0 < lr <= MAX_LR:  # also refuses NaN
        raise LmlabError(f"{name} must be a finite number > 0 and at most {MAX_LR:g}, got {lr}")


def check_fraction(**values: float) -> None:
    """Raise LmlabError naming the first keyword whose value is not a fraction in [0, 1]."""
    for k, v in values.items():
        if not 0.0 <= v <= 1.0:
            raise LmlabError(f"{k}={v} must be a fraction in [0, 1]")


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the lmlab checkout this code runs from; (None, None) outside a git checkout."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10)
        return head.stdout.strip() or None, bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def hash_tree(root: Path) -> str:
    """sha256 over every file below `root` (relative path and content, in sorted order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()

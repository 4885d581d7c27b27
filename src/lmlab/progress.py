"""One progress and logging layer for every long-running command: log levels (`lmlab -v` / `-q`), progress bars
with rate and ETA, `metrics.jsonl` beside a command's outputs, TensorBoard scalars where there is a loss curve, and
transformers' own output (its "Loading weights" bars, load reports, advice) silenced.

    progress.setup(verbosity)                    the CLI, once per command: -1 (-q), 0, 1 (-v)
    with Progress(steps, "sft") as bar: ...      bar.update(1, loss=...) after each step
    with MetricsLog(out / "metrics.jsonl", tensorboard=out / "tb") as m: ...   m.log({"step": s, "loss": ...})

Messages go through `logging` (lmlab's loggers: INFO by default, WARNING with -q, DEBUG with -v) to stderr;
deliberate results stay on stdout. Importable without torch: the CLI sets it up before any heavy import."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lmlab.errors import write_failure

log = logging.getLogger(__name__)

QUIET, NORMAL, VERBOSE = -1, 0, 1
LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}
# read by transformers and huggingface_hub when they are imported: setting them costs no 2 s import of transformers
HF_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

_state = {"verbosity": NORMAL, "bars_open": 0, "env_set": set()}


# ---------------------------------------------------------------- log levels
class _StderrHandler(logging.Handler):
    """Writes to the `sys.stderr` of the moment (pytest swaps it per test); while a bar is on screen through
    `tqdm.write`, which redraws the bar under the line instead of breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if _state["bars_open"]:
                from tqdm import tqdm  # loaded already: a bar is open

                tqdm.write(msg, file=sys.stderr)
            else:
                sys.stderr.write(msg + "\n")
                sys.stderr.flush()
        except Exception:
            self.handleError(record)


class _Formatter(logging.Formatter):
    """Info as it is (it is what a command says it is doing); other levels named: `warning: ...`, `debug: ...`."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


def setup(verbosity: int = NORMAL) -> None:
    """Configure lmlab's logging for one command: `QUIET` (-q: warnings and errors only, no progress), `NORMAL`
    (what each command is doing, progress bars on a terminal) or `VERBOSE` (-v: debug lines, per-step metrics,
    and transformers' own messages and bars left on). Idempotent: each call replaces the previous setup."""
    _state["verbosity"] = max(QUIET, min(VERBOSE, verbosity))
    root = logging.getLogger("lmlab")
    for h in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(LEVELS[_state["verbosity"]])
    quiet_transformers(_state["verbosity"] < VERBOSE)


def verbosity() -> int:
    return _state["verbosity"]


def quiet_transformers(quiet: bool = True) -> None:
    """transformers' and the Hub's own output off (errors stay) or, with quiet=False (-v), back on: through the
    environment for the libraries not yet imported (they read it on import), through their functions for those
    already imported. A variable the user set is left alone."""
    for key, value in HF_QUIET_ENV.items():
        if quiet and key not in os.environ:
            os.environ[key] = value
            _state["env_set"].add(key)
        elif not quiet and key in _state["env_set"]:
            os.environ.pop(key, None)
            _state["env_set"].discard(key)
    # the Hub read our HF_HUB_DISABLE_PROGRESS_BARS on import and warns that it will not enable its own bars; -v
    # enables transformers' bars all the same
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "huggingface_hub" in sys.modules:
            from huggingface_hub import utils as hub  # already imported

            hub.disable_progress_bars() if quiet else hub.enable_progress_bars()
        if "transformers" in sys.modules:
            from transformers.utils import logging as tf_logging  # already imported

            if quiet:
                tf_logging.set_verbosity_error()
                tf_logging.disable_progress_bar()
            else:
                tf_logging.set_verbosity_warning()
                tf_logging.enable_progress_bar()


# ---------------------------------------------------------------- progress
def echo(text: str, file=None) -> None:
    """Print a line of output (stdout unless `file`) without breaking an open progress bar."""
    file = file if file is not None else sys.stdout
    if _state["bars_open"]:
        from tqdm import tqdm  # loaded already: a bar is open

        tqdm.write(text, file=file)
    else:
        print(text, file=file, flush=True)


def bars_shown() -> bool:
    """Bars are drawn on stderr when it is a terminal, never with -q; LMLAB_PROGRESS=1 draws them anywhere (a test
    that asks for them), LMLAB_PROGRESS=0 nowhere."""
    if _state["verbosity"] < NORMAL:
        return False
    env = os.environ.get("LMLAB_PROGRESS")
    if env in ("0", "1"):
        return env == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def _duration(seconds: float) -> str:
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """Progress through `total` units of work (None: unknown) with rate and ETA: a tqdm bar on stderr where
    `bars_shown()`; elsewhere (a pipe, a log file, a test) the same facts as an INFO log line at most every `every_s`
    seconds and once at the end, so a long run's log says how far it got. `update(n, **metrics)` advances it and
    shows the latest metrics (e.g. loss=...). `enabled=False` (e.g. torchrun ranks > 0) shows nothing. A context
    manager; `close()` otherwise."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "step", initial: int = 0, every_s: float = 30.0,
                 enabled: bool = True):
        self.total, self.desc, self.unit, self.every_s, self.enabled = total, desc, unit, every_s, enabled
        self.n = self.n0 = initial
        self.metrics: dict[str, Any] = {}
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if enabled and bars_shown():
            from tqdm import tqdm  # only where a bar is drawn

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
            _state["bars_open"] += 1

    def update(self, n: int = 1, **metrics: Any) -> None:
        self.n += n
        self.metrics.update(metrics)
        if self.bar is not None:
            if metrics:
                self.bar.set_postfix_str(" ".join(f"{k}={_value(v)}" for k, v in self.metrics.items()), refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_s and (self.total is None or self.n < self.total):
            self.last = now
            log.info(self.line(now))

    def line(self, now: float | None = None, done: bool = False) -> str:
        """`desc: 40/100 steps (40%), 2.1 steps/s, ETA 0:29; loss=1.234` (at the end: `in 0:47`)."""
        elapsed = (time.monotonic() if now is None else now) - self.t0
        rate = (self.n - self.n0) / elapsed if elapsed > 0 else 0.0
        units = self.unit + ("es" if self.unit.endswith(("s", "x", "ch", "sh")) else "s")
        text = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {units}"
        if self.total and not done:
            text += f" ({100 * self.n / self.total:.0f}%)"
        if rate > 0:
            text += f", {rate:.3g} {units}/s" if rate >= 1 else f", {1 / rate:.3g} s/{self.unit}"
        if done:
            text += f" in {_duration(elapsed)}"
        elif self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.n) / rate)}"
        if self.metrics:
            text += "; " + " ".join(f"{k}={_value(v)}" for k, v in self.metrics.items())
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            _state["bars_open"] -= 1
        elif self.enabled and self.n > self.n0:
            self.enabled = False  # one closing line
            log.info(self.line(done=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable, desc: str, *, total: int | None = None, unit: str = "item", **kwargs) -> Iterator:
    """Yield from `items` under a `Progress` (total: len(items) where it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(total, desc, unit=unit, **kwargs) as bar:
        for item in items:
            try:
                yield item
            except GeneratorExit:  # the caller stopped after this item (a break): it counts as done
                bar.update()
                raise
            bar.update()


# ---------------------------------------------------------------- metrics
class MetricsLog:
    """A command's `metrics.jsonl`: one JSON object per logged step, each appended in one write of a whole line, so
    a crash can tear at most the last line (`lmlab.inputs.read_jsonl(..., drop_torn_last=True)` drops it). With
    `tensorboard` (a folder) the numeric fields also go there as TensorBoard scalars, when tensorboard is installed:
    `val_x` as `val/x`, others as `<phase>/x` (`train/x` without a "phase" field), at the record's "step".

    `keep`: a resumed run keeps the rows of the file it continues (an int: the first rows; a function: the rows it
    accepts) and appends the rest; None starts the file afresh. `purge_step`: TensorBoard drops its events from
    that step on (a resume). Files are made on the first `log`: a run that fails before its first step leaves none.
    A context manager; `close()` otherwise."""

    def __init__(self, path: str | Path, *, keep: int | Callable[[dict], bool] | None = None,
                 tensorboard: str | Path | None = None, purge_step: int | None = None):
        self.path, self.tensorboard, self.purge_step = Path(path), tensorboard, purge_step
        self.writer, self._tb_missing, self._count = None, False, 0
        if keep is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            from lmlab.inputs import read_jsonl  # torch-free, but only a resume needs it
            from lmlab.utils import atomic_write_text  # heavy (torch): only a resume rewrites the file

            rows = read_jsonl(self.path, "metrics log", drop_torn_last=True)  # a crash mid-append tears the last
            kept = rows[:keep] if isinstance(keep, int) else [r for r in rows if keep(r)]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            self._count = len(kept)

    def log(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:
            err = write_failure(e, self.path)
            if err is None:
                raise
            raise err from None
        self._scalars(record)
        self._count += 1

    def _scalars(self, record: dict) -> None:
        if self.tensorboard is None or self._tb_missing:
            return
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional and heavy
            except ImportError:
                self._tb_missing = True
                log.debug("tensorboard is not installed: no TensorBoard curves in %s", self.tensorboard)
                return
            self.writer = SummaryWriter(str(self.tensorboard), purge_step=self.purge_step)
        step, group = record.get("step", self._count), record.get("phase", "train")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"val/{k[4:]}" if k.startswith("val_") else f"{group}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

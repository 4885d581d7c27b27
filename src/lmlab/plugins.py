"""Discovery of the methods under `lmlab.methods` by convention, so the core never names one.

A method is a package `lmlab/methods/<name>/`. The core finds its parts by module name:
- `attention.py` / `attention_*.py`: attention variants, registered with `lmlab.model.register_attention`
  (imported when a config names an attention the core does not know);
- `experiment.py` / `experiment_*.py`: experiments, registered with `lmlab.experiment.experiment`;
- `cli.py`: `register(subparsers)` adds the method's commands (it must not import torch at import time).

Folders added to `lmlab.methods.__path__` are discovered the same way: a user's own methods live in folders
named by `$LMLAB_METHODS` (paths separated by the OS's path separator), each holding method packages.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from types import ModuleType

METHODS_PACKAGE = "lmlab.methods"


def method_packages() -> list[str]:
    """Dotted names of every method package, sorted."""
    methods = importlib.import_module(METHODS_PACKAGE)
    for folder in filter(None, os.environ.get("LMLAB_METHODS", "").split(os.pathsep)):
        if folder not in methods.__path__:
            methods.__path__.append(folder)
    return sorted(f"{METHODS_PACKAGE}.{m.name}" for m in pkgutil.iter_modules(methods.__path__) if m.ispkg
                  and not m.name.startswith("_"))


def part_names(kind: str) -> list[str]:
    """Dotted names of every method module of one kind (`attention`, `experiment`, `cli`), sorted."""
    names = []
    for pkg in method_packages():
        module = importlib.import_module(pkg)
        for m in pkgutil.iter_modules(module.__path__):
            if m.name == kind or m.name.startswith(kind + "_"):
                names.append(f"{pkg}.{m.name}")
    return names


def import_parts(kind: str) -> list[ModuleType]:
    """Import every method module of one kind (errors propagate: see `experiment._discover` for a guard)."""
    return [importlib.import_module(name) for name in part_names(kind)]

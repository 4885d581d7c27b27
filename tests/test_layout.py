"""The layout's one-way arrows: methods import the core, the core never imports a method, no method imports
another, and nothing imports in a cycle. Every `import` statement counts — top-level, inside functions and
under `if TYPE_CHECKING:` — read from the source with the AST, so a hidden local import cannot hide an arrow."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, package: str = "lmlab") -> dict[str, set[str]]:
    """{module: modules of `package` it imports}, for every .py file under root/package."""
    paths = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in paths.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = mod.split(".") if is_package else mod.split(".")[:-1]
                    base_parts = base_parts[: len(base_parts) - node.level + 1]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            for name in names:
                if name != package and not name.startswith(package + "."):
                    continue
                while name not in paths and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name != mod:
                    targets.add(name)
        graph[mod] = targets
    return graph


def method_of(mod: str) -> str | None:
    """`lmlab.methods.qttt.ttt` -> `qttt`; None for a core module (and the methods package itself)."""
    parts = mod.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "methods" else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def wrong_arrows(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(graph.items()):
        for t in sorted(targets):
            src_m, dst_m = method_of(mod), method_of(t)
            if dst_m is not None and src_m is None:
                bad.append(f"core {mod} imports method module {t}")
            elif dst_m is not None and src_m != dst_m:
                bad.append(f"method {src_m} ({mod}) imports method {dst_m} ({t})")
    return bad


def test_no_import_cycle():
    found = cycles(import_graph(SRC))
    assert not found, f"import cycles: {found}"


def test_core_never_imports_a_method_and_methods_never_import_each_other():
    assert wrong_arrows(import_graph(SRC)) == []


def test_the_checker_finds_cycles_and_wrong_arrows(tmp_path):
    """The checks above can fail: a small package with a local-import cycle, a TYPE_CHECKING arrow from the
    core into a method, and one method importing another."""
    pkg = tmp_path / "lmlab"
    (pkg / "methods" / "a").mkdir(parents=True)
    (pkg / "methods" / "b").mkdir(parents=True)
    for init in (pkg, pkg / "methods", pkg / "methods" / "a", pkg / "methods" / "b"):
        (init / "__init__.py").write_text("")
    (pkg / "core.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                 "    from lmlab.methods.a import thing\n")
    (pkg / "other.py").write_text("def f():\n    from lmlab import core\n")
    (pkg / "core2.py").write_text("import lmlab.other\n")
    (pkg / "other.py").write_text("def f():\n    from lmlab import core2\n")
    (pkg / "methods" / "a" / "thing.py").write_text("from ..b import helper\n")
    (pkg / "methods" / "b" / "helper.py").write_text("from lmlab import core2\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["lmlab.core2", "lmlab.other"]]
    assert wrong_arrows(graph) == [
        "core lmlab.core imports method module lmlab.methods.a.thing",
        "method a (lmlab.methods.a.thing) imports method b (lmlab.methods.b.helper)",
    ]


@pytest.mark.parametrize("package", ["posttrain", "competition", "iha", "qttt", "calm", "info", "knowledge",
                                     "lmc", "sumerian", "scaling"])
def test_every_method_has_its_folder_parts(package):
    folder = SRC / "lmlab" / "methods" / package
    assert (folder / "README.md").is_file(), f"{folder} has no README.md"
    assert list(folder.glob("experiment*.py")), f"{folder} has no experiment module"

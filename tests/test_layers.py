"""The package's layers hold: every import of a gdnc module runs downward, no module-level import
cycle exists, the IR needs no torch, and lazily exported names are not shadowed by submodules."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gdnc"

# what each layer may import, besides itself and the bottom (gdnc.version, gdnc._lazy):
# ir (no torch) <- passes, reference (beside the IR) <- emit <- runtime <- bench, check, cli
MAY_IMPORT = {
    "ir": set(),
    "passes": {"ir"},
    "reference": {"ir"},
    "emit": {"ir", "passes"},
    "runtime": {"ir", "reference", "emit"},
    "bench": {"ir", "reference", "passes", "emit", "runtime"},
    "check": {"ir", "reference", "passes", "emit", "runtime"},
    "cli": {"ir", "reference", "passes", "emit", "runtime", "bench", "check"},
}
BOTTOM = {"version", "_lazy"}


def modules() -> dict[str, Path]:
    """Every gdnc module by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, module_level_only: bool = False) -> set[str]:
    """The gdnc modules ``name`` imports (inside functions too, unless ``module_level_only``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    every = modules()
    return {m for m in found if m in every}


def layer(name: str) -> str:
    return name.split(".")[1] if name.count(".") else "top"


def test_every_import_runs_downward():
    wrong = []
    for name, path in modules().items():
        if name == "gdnc" or layer(name) in BOTTOM:
            continue
        allowed = MAY_IMPORT[layer(name)] | BOTTOM | {layer(name)}
        wrong += [f"{name} imports {target}" for target in imports(name, path)
                  if target != "gdnc" and layer(target) not in allowed]
        # the package itself only from the top (gdnc.__init__ loads the op, and the IR, lazily)
        wrong += [f"{name} imports the package gdnc" for target in imports(name, path) if target == "gdnc"
                  and layer(name) not in ("check", "cli", "bench")]
    assert not wrong, "\n".join(wrong)


def test_no_module_level_import_cycle():
    graph = {name: imports(name, path, module_level_only=True) for name, path in modules().items()}
    state = {}

    def visit(name, stack):
        state[name] = "open"
        for target in graph.get(name, ()):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_the_layer_test_sees_a_wrong_import(tmp_path, monkeypatch):
    """The check above fails on an upward import (it can fail)."""
    wrong = tmp_path / "gdnc" / "ir"
    wrong.mkdir(parents=True)
    (wrong / "bad.py").write_text("from gdnc.runtime.ops import chunk_gated_delta_rule\n")
    assert imports("gdnc.ir.bad", wrong / "bad.py") == {"gdnc.runtime.ops"}
    assert layer("gdnc.runtime.ops") not in MAY_IMPORT["ir"]


@pytest.mark.parametrize("package", ["gdnc", "gdnc.ir", "gdnc.reference"])
def test_lazy_names_are_not_shadowed_by_submodules(package):
    """A lazily exported name that is also a submodule's name would turn into that module once the
    submodule is imported: no exported name is one (other than an exported submodule itself)."""
    module = importlib.import_module(package)
    for name in module.__all__:
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            assert importlib.import_module(f"{package}.{name}") is getattr(module, name), name
        value = getattr(module, name)
        for sub in modules():  # importing every submodule leaves the name what it was
            if sub.startswith(package + "."):
                importlib.import_module(sub)
        assert getattr(module, name) is value, name


def test_importing_the_ir_or_the_op_loads_only_what_it_needs():
    """gdnc.ir is symbolic (sympy, no torch); the op's module needs torch, not sympy, jinja2 or optuna."""
    code = ("import sys; import {}; print(sorted(m for m in ('torch', 'sympy', 'jinja2', 'optuna', 'tilelang') "
            "if m in sys.modules))")
    ir = subprocess.run([sys.executable, "-c", code.format("gdnc.ir; gdnc.ir.classify")], capture_output=True,
                        text=True, check=True)
    assert ir.stdout.strip() == "['sympy']"
    op = subprocess.run([sys.executable, "-c", code.format("gdnc; gdnc.chunk_gated_delta_rule")],
                        capture_output=True, text=True, check=True)
    assert op.stdout.strip() == "['torch']"

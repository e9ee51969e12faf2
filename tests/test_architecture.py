"""The package's shape, enforced: the direction of imports, no cycles, no private names across
modules, modules and functions of readable size. Built from the code's own import statements
(``ast``), module level and inside functions alike; ``importlib`` plug-in loading by name (the
registries' built-in plug-ins, entry points) is the one sanctioned way to reach upwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "madloop"

#: layer of each module (longest matching prefix): a module may import its own layer and below
LAYERS = {
    "madloop": 9,  # the lazy top-level package (PEP 562): nothing at import time
    "madloop.types": 0,
    "madloop.capabilities": 0,
    "madloop.registry": 0,
    "madloop.state": 0,  # checkpointable state as arrays (loop and pool encode their own)
    "madloop.storage": 0,
    "madloop.linalg": 0,
    "madloop.counts": 0,
    "madloop.glossary": 0,  # what each metric means (the report reads it)
    "madloop.config": 1,  # sections, errors, merging (schema/arms/paths below are 3)
    "madloop.tables": 1,
    "madloop.models": 2,
    "madloop.data": 2,
    "madloop.metrics": 2,
    "madloop.regimes": 2,
    "madloop.theory": 2,
    "madloop.curation": 2,  # rewards and selection, shared by the loop and the web pool
    "madloop.correction": 2,  # self-correction towards the real law, by data source
    "madloop.synthetic": 2,  # a synthetic batch curated / corrected (the loop's one hook)
    "madloop.preprocess": 2,  # loop.preprocess steps and the masked fit (the loop calls them)
    "madloop.config.schema": 3,
    "madloop.config.arms": 3,
    "madloop.config.paths": 3,
    "madloop.loop": 4,
    "madloop.engines": 4,
    "madloop.floor": 4,  # generation 0: the sample-based metrics of real data
    "madloop.pool": 4,
    "madloop.checkpoint": 4,
    "madloop.galleries": 4,
    "madloop.resources": 4,
    "madloop.experiment": 5,
    "madloop.executors": 6,
    "madloop.sweeps": 6,
    "madloop.reproduce": 6,  # runs studies through experiment.run; draws with the report's plots
    "madloop.tracking": 6,  # a finished run to MLflow (imports mlflow lazily)
    "madloop.demo": 7,
    "madloop.cli": 7,
    "madloop.report": 1,  # reads run directories: storage and tables, never the loop
}
#: what the report may import from madloop (it must open a run directory on its own)
REPORT_MAY_IMPORT = ("madloop.report", "madloop.storage", "madloop.tables", "madloop.types",
                     "madloop.glossary")  # fmt: skip
LONG_MODULE = 600  # lines
LONG_FUNCTION = 80  # lines of body; a longer one says why in a "# long:" comment


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PKG.rglob("*.py"))}


def imports(name: str, tree: ast.Module, *, top_level_only: bool = False):
    """(imported module, line, imported names) for every ``import madloop...`` statement."""
    body = tree.body if top_level_only else ast.walk(tree)
    package = name if (PKG / Path(*name.split(".")[1:]) / "__init__.py").exists() else name
    for node in body:
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("madloop"):
                continue
            names = [a.name for a in node.names]
            subs = [n for n in names if f"{target}.{n}" in NAMES]  # "from madloop import loop"
            if subs:
                for n in subs:
                    yield f"{target}.{n}", node.lineno, []
                names = [n for n in names if n not in subs]
            if names:
                yield target, node.lineno, names
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("madloop"):
                    yield a.name, node.lineno, []


MODULES = modules()
NAMES = set(MODULES)


def test_imports_point_down_the_layers():
    wrong = []
    for name, tree in MODULES.items():
        for target, line, _ in imports(name, tree):
            if name.startswith("madloop.report"):
                if not target.startswith(REPORT_MAY_IMPORT):
                    wrong.append(f"{name}:{line} imports {target} (the report reads directories)")
            elif layer(target) > layer(name) and not target.startswith(name + "."):
                wrong.append(f"{name}:{line} (layer {layer(name)}) imports {target} "
                             f"(layer {layer(target)})")  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_at_module_level():
    graph = {
        name: {t for t, _, _ in imports(name, tree, top_level_only=True) if t in MODULES}
        for name, tree in MODULES.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt == node or nxt.startswith(node + "."):
                continue  # a package importing its own submodules
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_private_name_is_imported_across_modules():
    found = [
        f"{name}:{line} imports {target}.{n}"
        for name, tree in MODULES.items()
        for target, line, names in imports(name, tree)
        for n in names
        if n.startswith("_") and target != name
    ]
    assert not found, "\n".join(found)


def test_modules_and_functions_stay_readable():
    long = []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        if len(lines) > LONG_MODULE:
            long.append(f"{path.relative_to(SRC)}: {len(lines)} lines (> {LONG_MODULE})")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:] or body  # the docstring does not count
            size = node.end_lineno - body[0].lineno + 1
            said = any("# long:" in ln for ln in lines[node.lineno - 1 : body[0].lineno + 2])
            if size > LONG_FUNCTION and not said:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {size} lines")
    assert not long, "\n".join(long)

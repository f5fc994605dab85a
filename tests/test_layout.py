"""The layout keeps the design's one boundary and has no import cycles.

A Raspberry Pi installs only the runtime; a workstation adds converting. So importing
``edgelstm.runtime`` (and loading and stepping a bundle with it) must never import the
converting side (``edgelstm.convert``), TensorFlow, Keras, onnx or h5py. The check runs in a
fresh interpreter, where nothing else has imported them first. The cycle check reads every
import statement of the two packages, module-level and function-level alike: two modules that
import each other, even lazily, are one module's job split in two.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edgelstm", "firmware_bridge")
CONVERTING = ("edgelstm.convert", "tensorflow", "keras", "tf_keras", "onnx", "h5py")


def _heavy_modules_after(code: str) -> list:
    """Modules of the converting side present after running ``code`` in a fresh interpreter."""
    probe = code + (
        "\nimport json, sys\n"
        f"bad = {CONVERTING!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in bad))))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_runtime_imports_nothing_from_the_converting_side():
    assert _heavy_modules_after("import edgelstm.runtime, edgelstm.runtime.stream, edgelstm.runtime.monitor, "
                                "edgelstm.runtime.profiler, edgelstm.runtime.bundle, edgelstm.runtime.targets") == []


def test_loading_and_stepping_a_bundle_imports_nothing_from_the_converting_side(cmapss_bundle):
    code = (
        "import numpy as np, edgelstm\n"
        f"rt = edgelstm.load({str(cmapss_bundle)!r})\n"
        "rt.step(np.asarray(rt.bundle.manifest['input']['calibration_stats']['mean'], np.float32))\n"
    )
    assert _heavy_modules_after(code) == []


def test_the_bridge_and_the_command_line_import_nothing_from_the_converting_side():
    assert _heavy_modules_after("import firmware_bridge.bridge, firmware_bridge.sinks, firmware_bridge.protocol, "
                                "firmware_bridge.cli, edgelstm.cli") == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    """Module -> the package modules it imports (any statement, at any depth of the file)."""
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                for alias in node.names:  # `from pkg import module` names a module, else the package itself
                    edges.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in files else target)
        graph[name] = sorted(e for e in edges if e in files and e != name)
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40  # the scan found the packages
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_the_runtime_side_imports_no_converting_module_anywhere():
    """Statically too: no module under edgelstm/runtime or edgelstm/model names edgelstm.convert,
    even inside a function (the fresh-interpreter test sees only the paths it runs)."""
    graph = import_graph()
    device = [m for m in graph if m.startswith(("edgelstm.runtime", "edgelstm.model"))]
    assert device
    offending = {m: [e for e in graph[m] if e.startswith("edgelstm.convert")] for m in device}
    assert {m: e for m, e in offending.items() if e} == {}


def test_every_package_is_in_the_distribution():
    """pyproject.toml lists packages by hand (one is mapped from targets/): a package missing there
    works in a checkout and is absent from the wheel a device installs."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {_module_name(p.parent / "__init__.py") for package in PACKAGES for p in (ROOT / package).rglob("__init__.py")}
    assert on_disk - listed == set()

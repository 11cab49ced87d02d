"""The benchmark scripts import what exists: every ``from X import Y`` in bench/ (function-local ones too, which
only run when a benchmark does) names a module and a name that are there. Checked without running anything."""

import ast
import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
OPTIONAL = ("vllm",)  # a module that needs an optional dependency is checked where that dependency is installed


def _imports() -> list[tuple[str, str, str]]:
    """(script, module, name) for every ``from module import name`` of our own code in bench/*.py."""
    local = {p.stem for p in BENCH.glob("*.py")}
    out = []
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                    node.module.split(".")[0] == "droidspeak" or node.module in local):
                out += [(path.name, node.module, a.name) for a in node.names]
    return out


def test_every_bench_import_resolves(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    found, missing = _imports(), []
    assert any(m == "common" for _, m, _ in found) and any(m.startswith("droidspeak") for _, m, _ in found)
    for script, module, name in found:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in OPTIONAL:
                continue
            missing.append(f"{script}: {module} ({e})")
            continue
        if not hasattr(mod, name):
            try:  # a submodule imported by name
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{script}: from {module} import {name}")
    assert not missing, missing


def test_a_name_that_is_gone_is_reported(tmp_path, monkeypatch):
    """The check can fail: a script importing a removed function is caught."""
    monkeypatch.setattr(sys.modules[__name__], "BENCH", tmp_path)
    monkeypatch.delitem(sys.modules, "common", raising=False)  # the script's own common, not bench's
    (tmp_path / "common.py").write_text("def there(): pass\n")
    (tmp_path / "script.py").write_text("def main():\n    from droidspeak.harness.demo import build_document\n"
                                        "    from common import there\n")
    with pytest.raises(AssertionError, match="build_document"):
        test_every_bench_import_resolves(monkeypatch)

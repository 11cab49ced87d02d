"""The package tree is the architecture: every import points down the layers, and no package imports
one beside or above it (checked on the source, so a new module cannot quietly break it)."""

from __future__ import annotations

import ast
from pathlib import Path

import droidspeak

PKG = Path(droidspeak.__file__).parent

# bottom up; a module may import its own package and any package of a lower layer
LAYERS = [
    {"errors", "kinds", "paths"},
    {"quality", "runtime", "stats", "tasks"},
    {"models"},
    {"core"},
    {"store"},
    {"sharing"},
    {"integrations", "profiling", "serving", "training"},
    {"harness"},
    {"testing"},
    {"cli", "__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(module: Path) -> str:
    rel = module.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(module: Path) -> set[str]:
    """Top-level droidspeak packages a module imports (absolute or relative)."""
    tree = ast.parse(module.read_text())
    here = module.relative_to(PKG).parts[:-1]  # the module's package inside droidspeak
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "droidspeak" and len(parts) > 1:
                    out.add(parts[1])
                elif parts[0] == "droidspeak":
                    out |= {a.name for a in node.names}
                continue
            base = list(here[:len(here) - (node.level - 1)]) if node.level > 1 else list(here)
            target = base + (node.module.split(".") if node.module else [])
            if target:
                out.add(target[0])
            else:  # `from .. import x` at the top: x names a package or module
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "droidspeak" and len(parts) > 1:
                    out.add(parts[1])
    return out


def test_every_package_has_a_layer():
    tops = {p.name.removesuffix(".py") for p in PKG.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert tops <= set(RANK), f"place these in LAYERS: {sorted(tops - set(RANK))}"


def test_imports_point_down_the_layers():
    wrong = []
    for module in sorted(PKG.rglob("*.py")):
        top = _top(module)
        for dep in _imports(module):
            if dep != top and dep in RANK and RANK[dep] >= RANK[top] and top not in ("__init__", "__main__"):
                wrong.append(f"{module.relative_to(PKG)} imports {dep} (layer {RANK[dep]} >= {RANK[top]})")
    assert not wrong, "\n".join(wrong)

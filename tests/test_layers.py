"""The layers hold and docs/architecture.md is true.

Layer order (DESIGN.md, docs/architecture.md): kernels < pipeline < integrations < evaluation < demo < cli. A module
imports only its own layer and those below it, counting imports inside functions too (a lazy import is still a
dependency). The package root's helpers (_lazy.py) and its version lie below every layer; its __init__.py, the
public face that re-exports each layer's names (lazily above the kernels), is exempt. Module-level imports form
no cycle. Every file or folder docs/architecture.md names exists."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tsdi_kernels"
LAYERS = ("kernels", "pipeline", "integrations", "evaluation", "demo", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """The layer's rank; -1 for the package root."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def imports(module: str, *, top_level_only: bool = False) -> set:
    """The tsdi_kernels modules `module` imports (from X import name: X.name when that is a module, else X)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t == "tsdi_kernels" or t.startswith("tsdi_kernels.")}
    return out


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "tsdi_kernels"))
def test_imports_respect_the_layer_order(module):
    above = sorted(t for t in imports(module) if layer(t) > layer(module))
    assert not above, f"{module} (layer {LAYERS[layer(module)] if layer(module) >= 0 else 'root'}) imports {above}"


def test_module_level_imports_have_no_cycle():
    graph = {m: {t for t in imports(m, top_level_only=True) if t in MODULES and t != m} for m in MODULES}
    state: dict = {}

    def visit(m, stack):
        state[m] = "open"
        for t in graph[m]:
            if state.get(t) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(t):] + [t])}")
            if t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [m])


def test_the_walker_sees_what_it_must():
    """The checks above can fail: the walker finds relative, absolute and function-level imports."""
    found = imports("tsdi_kernels.cli.eval")
    assert "tsdi_kernels.evaluation.settings" in found and "tsdi_kernels.demo.models" in found
    assert layer("tsdi_kernels.cli.eval") > layer("tsdi_kernels.demo.models") > layer("tsdi_kernels.evaluation.sweep")
    assert "tsdi_kernels.integrations.hf_prefix_cache" in imports("tsdi_kernels.evaluation.hf_engine")


NAMED = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+(?:\.(?:py|cpp|h|md|sh|toml)|/))(?![\w/])")


def named_paths(text: str) -> set:
    return {m.group(1) for m in NAMED.finditer(text) if "/" in m.group(1) or "." in m.group(1)}


def test_every_file_the_architecture_names_exists():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    names = named_paths(text)
    assert len(names) > 30  # the parser reads the document (it names every module)
    missing = []
    for name in sorted(names):
        candidates = [ROOT / name, PACKAGE / name, ROOT / "tests" / name, ROOT / "tests" / "kernels" / name]
        if not any(c.exists() for c in candidates) and not any(ROOT.rglob(name.rstrip("/"))):
            missing.append(name)
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"

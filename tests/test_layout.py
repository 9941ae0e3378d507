"""The package layout is the architecture: each folder imports only the layers below it, and no
module imports itself back through others (no cycles). Read from the source, so a new import that
runs up a layer fails here, not in a user's process."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "llm_unlearn"
# Bottom to top; folders on one line are peers and may not import each other.
LAYERS = [
    {"runs"},
    {"data"},
    {"models", "methods"},
    {"eval"},
    {"core", "hf_metrics"},
    {"probes", "hub", "bench"},
    {"pipeline"},
    {"cli"},
]
RANK = {folder: rank for rank, layer in enumerate(LAYERS) for folder in layer}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every llm_unlearn module `path` imports, at top level or inside functions."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.startswith("llm_unlearn"):
                for alias in node.names:  # `from . import plots` imports a module
                    sub = f"{target}.{alias.name}"
                    out.add(
                        sub if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists() else target
                    )
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("llm_unlearn")}
    return out


GRAPH = {_module(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _folder(module: str) -> str | None:
    """The layer folder of `module`; None for the package's own top level (`__init__`, `__main__`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else None


def test_every_folder_has_a_layer_and_a_docstring_saying_what_it_may_import():
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(RANK), f"folders without a layer, or layers without a folder: {folders ^ set(RANK)}"
    for folder in folders - {"hf_metrics"}:
        doc = ast.get_docstring(ast.parse((PKG / folder / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert "May import" in doc, f"llm_unlearn/{folder}/__init__.py does not say what it may import"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_down_the_layers_only(module):
    here = _folder(module)
    if here is None:  # llm_unlearn/__init__.py (the lazy public API) and __main__.py may point anywhere
        return
    for target in GRAPH[module]:
        there = _folder(target)
        assert there is not None, f"{module} imports the top-level package"
        if there == here:
            continue
        assert RANK[there] < RANK[here], (
            f"{module} imports {target}: {there}/ is not below {here}/ (layers: llm_unlearn/__init__.py)"
        )


def test_no_import_cycles_between_modules():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


def _documented_imports() -> list[str]:
    """Every `from llm_unlearn... import ...` line in the README and docs/ (code the user will paste)."""
    root = PKG.parent
    lines = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for line in page.read_text(encoding="utf-8").splitlines():
            line = line.strip().strip("`")
            if line.startswith("from llm_unlearn") and " import " in line:
                lines.append(line.split(";")[0])
    return lines


@pytest.mark.parametrize("line", _documented_imports())
def test_every_import_the_docs_show_works(line):
    exec(line, {})


def test_every_repository_path_the_docs_name_exists():
    """A file moved without its mentions is a doc that lies: README, docs/, recipes/, data_cards/ and
    benchmarks/ pages, and the recipes' header comments, name only files that exist."""
    root = PKG.parent
    pattern = re.compile(r"(?<![\w./-])(?:llm_unlearn|tests|benchmarks|recipes|docs|data_cards)/[\w./-]*\w")
    pages = [
        root / "README.md",
        *(p for d in ("docs", "recipes", "data_cards", "benchmarks") for p in (root / d).glob("*.md")),
        *sorted((root / "recipes").rglob("*.yaml")),
    ]
    missing = sorted(
        f"{page.relative_to(root)}: {path}"
        for page in pages
        for path in set(pattern.findall(page.read_text(encoding="utf-8")))
        if not (root / path).exists()
    )
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_the_recipe_table_names_every_recipe():
    """recipes/README.md's table is where a user looks for one: each file is a row (`dir/name.yaml`, or a bare
    `name.yaml` in a row that starts with `dir/`)."""
    root = PKG.parent / "recipes"
    rows = [
        line
        for line in (root / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `")
    ]
    missing = []
    for path in sorted(root.rglob("*.yaml")):
        folder, name = path.parent.name, path.name
        if not any(
            f"`{folder}/{name}`" in r or (r.startswith(f"| `{folder}/") and f"`{name}`" in r) for r in rows
        ):
            missing.append(f"{folder}/{name}")
    assert not missing, "recipes missing from recipes/README.md: " + ", ".join(missing)

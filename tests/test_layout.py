"""The package's shape: imports go one way along the data's path, and the Hub side needs no data libraries."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tinystories_gpt"
# The data's path, then the pieces the loop is made of, then what uses them: a module may import only modules
# earlier in this list (docs/architecture.md draws it).
ORDER = [
    "configuration_tinystories_gpt",
    "modeling_tinystories_gpt",
    "tokenization",
    "faults",
    "data",
    "windows",
    "evaluation",
    "budget",
    "arguments",
    "hardware",
    "distributed",
    "optimization",
    "checkpointing",
    "records",
    "hub",
    "conversion",
    "export_gguf",
    "export_onnx",
    "lora",
    "init_from",
    "training",
    "cli",
    "evaluate",
    "generate",
]


def package_imports(path: Path) -> set[str]:
    """The first component of every relative import in a module (`from .data import x` -> data)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            if node.module is None:  # from . import name
                imported |= {alias.name for alias in node.names}
            else:  # from .name import x, or from ..name import x inside cli/
                imported.add(node.module.split(".")[0])
    return imported


def test_every_module_is_placed_and_imports_only_what_comes_before_it():
    modules = {path.stem: path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    assert set(modules) <= set(ORDER), f"place {sorted(set(modules) - set(ORDER))} in ORDER"
    backwards = []
    for name, path in modules.items():
        for imported in package_imports(path):
            if imported in ORDER and ORDER.index(imported) >= ORDER.index(name):
                backwards.append(f"{name} imports {imported}")
    for path in (PACKAGE / "cli").glob("*.py"):
        backwards += [f"cli/{path.name} imports {imported}" for imported in package_imports(path) if imported == "cli"]
    assert not backwards


def test_the_hub_side_and_generation_load_no_data_libraries():
    code = (
        "import sys, tinystories_gpt.hub, tinystories_gpt.cli.generate\n"
        "print(sorted(m for m in ('datasets', 'pyarrow', 'evaluate', 'tinystories_gpt.data') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

"""The package's shape: a folder per stage of the data's path, imports that go one way, and a Hub side that needs no
data libraries (docs/architecture.md draws it)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tinystories_gpt"
# The model, the file-safety rooms everyone uses, then the stages in the data's order: a module may import only
# modules earlier in this list.
ORDER = [
    "configuration_tinystories_gpt",
    "modeling_tinystories_gpt",
    "files",
    "signals",
    "data.tokenization",
    "data.sources",
    "data.token_files",
    "data.batches",
    "evaluation.losses",
    "evaluation.stories",
    "evaluation.story_figures",
    "export.hub",
    "export.checks",
    "export.nanogpt",
    "export.gpt2",
    "export.gguf",
    "export.onnx",
    "export.onnx_scores",
    "demo.app",
    "demo.space",
    "training.budget",
    "training.presets",
    "training.arguments",
    "training.memory",
    "training.hardware",
    "training.distributed",
    "training.optimization",
    "training.checkpoints",
    "training.records",
    "training.lora",
    "training.parent",
    "training.shape",
    "training.recipe",
    "training.run",
    "training.evaluations",
    "training.loop",
    "cli.exit_status",
    "cli.train",
    "cli.evaluate",
    "cli.generate",
    "cli.convert",
    "cli.demo",
    "cli.serve",
    "demo.__main__",
]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def package_imports(path: Path) -> set[str]:
    """Every module of the package that `path` imports, by its dotted name below tinystories_gpt."""
    here = module_name(path).split(".")[:-1]  # the module's package, as parts
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = here[: len(here) - (node.level - 1)]
            if node.module is None:  # from . import name
                imported |= {".".join([*base, alias.name]) for alias in node.names}
            else:
                imported.add(".".join([*base, *node.module.split(".")]))
    return imported


def modules() -> dict[str, Path]:
    """The package's modules; the `evaluate` metric in evaluation/bits_per_byte/ is a file `evaluate` loads."""
    return {
        module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and (path.parent / "__init__.py").is_file()
    }


def test_every_module_has_a_place_and_imports_only_what_comes_before_it():
    found = modules()
    assert set(found) == set(ORDER), f"place {sorted(set(found) - set(ORDER))}; drop {sorted(set(ORDER) - set(found))}"
    imports = {name: package_imports(path) for name, path in found.items()}
    assert not [f"{name} imports {module}" for name, modules in imports.items() for module in modules - set(ORDER)]
    backwards = [
        f"{name} imports {module}"
        for name, modules in imports.items()
        for module in modules
        if ORDER.index(module) >= ORDER.index(name)
    ]
    assert not backwards


def test_the_package_folders_import_nothing_themselves():
    """`import tinystories_gpt.data` (and the others) must stay free: the Hub side reads the tokenizer from data/."""
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        assert not [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)], init


@pytest.mark.slow
def test_the_hub_side_and_generation_load_no_data_libraries():
    code = (
        "import sys, tinystories_gpt.export.hub, tinystories_gpt.cli.generate\n"
        "print(sorted(m for m in ('datasets', 'pyarrow', 'evaluate', 'tinystories_gpt.data.token_files') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_no_module_outgrows_a_room():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert max(sizes.values()) <= 400, sorted(sizes.items(), key=lambda item: -item[1])[:3]

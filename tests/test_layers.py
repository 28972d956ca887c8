"""The package is shaped like the data flow: a stage imports only earlier stages and the shared base."""

import ast
from pathlib import Path

import clipatlas

STAGES = ["sources", "encoders", "store", "sae", "atlas", "steer", "interp", "evaluate", "web", "share"]
BASE = {"_alloc", "_io", "_config", "_ray", "_serve", "devices", "errors", "workspace"}  # shared by all stages
ABOVE = {"cli", "demo", "info", "__main__"}  # drive the stages; nothing imports them but each other
PACKAGE = Path(clipatlas.__file__).parent


def imported_parts(path: Path) -> set[str]:
    """The `clipatlas.<part>` names a module imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found |= {name.split(".")[1] for name in names if name.startswith("clipatlas.")}
    return found


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_every_module_belongs_to_a_known_layer():
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts <= set(STAGES) | BASE | ABOVE, parts - set(STAGES) - BASE - ABOVE


def test_stages_import_only_earlier_stages_and_the_base():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        if part in ABOVE or part == "__init__":
            continue
        allowed = BASE | (set(STAGES[: STAGES.index(part) + 1]) if part in STAGES else set())
        wrong += [f"{path.relative_to(PACKAGE)} imports clipatlas.{p}" for p in imported_parts(path) - allowed]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_backward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from clipatlas.web.app import create_app\n")
    assert imported_parts(module) == {"web"}

"""The package layering README's Architecture section promises, checked on the code: the data layer imports no
reward-model code, and the RL half takes from the reward-model package only its shared helpers, its data layer
and the reward model itself."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import spatialscore.data

SRC = Path(__file__).resolve().parents[2] / "src"
MODEL_CODE = ("spatialscore.backbone", "spatialscore.model", "spatialscore.encode", "spatialscore.module", "spatialrl")
DATA_MODULES = [m.name for m in pkgutil.walk_packages(spatialscore.data.__path__, "spatialscore.data.")]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", DATA_MODULES)
def test_the_data_layer_imports_no_model_code(module: str) -> None:
    path = SRC / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    assert not {m for m in imported_modules(path) if m.startswith(MODEL_CODE)}
    code = f"import sys, {module}; print([m for m in {MODEL_CODE!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"importing {module} loads {loaded.strip()}"


def test_spatialrl_takes_from_spatialscore_only_its_helpers_data_and_the_reward_model() -> None:
    """What each spatialrl file imports from spatialscore (README, Architecture): shared helpers, the data layer,
    and the reward model only where a reward or the paper loop needs it."""
    allowed_everywhere = {
        "spatialscore.precision",
        "spatialscore.strategies",
        "spatialscore.optim",
        "spatialscore.files",
        "spatialscore.visualize",
        "spatialscore.imports",
        "spatialscore.cli",
        "spatialscore.report",
        "spatialscore.specs",
    }
    reward_model = {"spatialscore.model", "spatialscore.encode", "spatialscore.chat", "spatialscore.judges"}
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / "spatialrl").glob("*.py")):
        used = {m for m in imported_modules(path) if m.startswith("spatialscore")}
        if used:
            found[path.name] = used
    for name, used in found.items():
        odd = {m for m in used if m not in allowed_everywhere and not m.startswith("spatialscore.data")}
        odd -= reward_model if name in {"rewards.py", "judge_reward.py", "paper.py", "evaluate.py"} else set()
        assert not odd, f"spatialrl/{name} imports {sorted(odd)} from spatialscore"
    assert not any("spatialscore.backbone" in used for used in found.values())

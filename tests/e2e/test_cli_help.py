"""Every option that ``spatialscore`` and ``spatialrl`` show in ``--help`` has help text.

LightningCLI (jsonargparse) takes the text from the classes' Google-style ``Args:`` docstrings; an option
without one shows only ``(type: ..., default: ...)``. The LightningCLI half walks ``fit --help`` and every
nested ``--X.help`` it lists (into our own subclasses: rewards, callbacks, the subclass-mode modules), in
process; the tool half reads each tool's ``--help`` (its options and positional arguments) the same way.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from spatialrl.cli import TOOLS as RL_TOOLS
from spatialrl.cli import main as rl_main
from spatialscore.cli import TOOLS as SCORE_TOOLS
from spatialscore.cli import main as score_main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
OURS = ("spatialscore.", "spatialrl.")
CALLBACK_MODULES = {"spatialscore": ["spatialscore.callbacks"], "spatialrl": ["spatialrl.callbacks"]}
_ENTRY = re.compile(r"^  (-\S+.*?)(?: {2,}(.*))?$")  # "  --opt METAVAR[, --opt+ ...]   help text"
_ENTRY_OR_POSITIONAL = re.compile(r"^  (\S+.*?)(?: {2,}(.*))?$")  # also "  images   help text"
_HELP_FOR = re.compile(r"^Help for (\S+)=(\S+)$", re.MULTILINE)


def _help_text(main: Callable[[list[str]], Any], argv: list[str]) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit:
            pass
    if "usage:" not in out.getvalue():
        raise AssertionError(f"{' '.join(argv)} printed no help:\n{err.getvalue()[-2000:]}")
    return out.getvalue()


def _entries(text: str, *, entry_pattern: re.Pattern[str] = _ENTRY) -> Iterator[tuple[str, str, str]]:
    """``(option, invocation, help)`` per option listed in an argparse help text (wrapped lines joined)."""
    entry: list[str] | None = None
    for line in text.splitlines():
        match = entry_pattern.match(line)
        if match:
            if entry:
                yield entry[0].split()[0].rstrip(","), entry[0], " ".join(entry[1:])
            entry = [match[1], match[2] or ""]
        elif entry and line.startswith("   "):
            entry.append(line.strip())
        else:
            if entry:
                yield entry[0].split()[0].rstrip(","), entry[0], " ".join(entry[1:])
            entry = None
    if entry:
        yield entry[0].split()[0].rstrip(","), entry[0], " ".join(entry[1:])


def _described(help_text: str) -> bool:
    """Whether there is text besides jsonargparse's ``(type: ..., default: ...)`` part."""
    return bool(re.split(r"\((?:required, )?type: ", help_text, maxsplit=1)[0].strip())


def _config_classes(cli: str) -> set[str]:
    """Our ``class_path`` values in the configs that ``cli`` runs (rewards included)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            value = node.get("class_path")
            if isinstance(value, str) and value.startswith(OURS):
                found.add(value)
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for path in CONFIGS.rglob("*.yaml"):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        model = (config or {}).get("model") or {}
        subclass_mode = isinstance(model, dict) and "class_path" in model
        if subclass_mode == (cli == "spatialrl"):
            walk(config)
    return found


def _roots(cli: str) -> list[list[str]]:
    """The help commands the walk starts from: ``fit --help``, each config's module/data class, each callback."""
    import lightning as L

    roots: list[list[str]] = [[]]  # fit --help
    classes = set(_config_classes(cli))
    for name in CALLBACK_MODULES[cli]:
        module = importlib.import_module(name)
        classes |= {
            f"{name}.{n}"
            for n, c in vars(module).items()
            if inspect.isclass(c) and issubclass(c, L.Callback) and c.__module__ == name
        }
    for path in sorted(classes):
        module_name, _, class_name = path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        if issubclass(cls, L.Callback):
            roots.append(["--trainer.callbacks.help", path])
        elif cli == "spatialrl" and issubclass(cls, L.LightningModule):
            roots.append(["--model.help", path])
        elif cli == "spatialrl" and issubclass(cls, L.LightningDataModule):
            roots.append(["--data.help", path])
    return roots


def _walk(main: Callable[[list[str]], Any], cli: str) -> tuple[dict[str, list[str]], set[str]]:
    """Options without help text, by the help command that lists them; and the classes whose help was read."""
    missing: dict[str, list[str]] = {}
    seen: set[str] = set()
    queue = _roots(cli)
    while queue:
        argv = queue.pop(0)
        text = _help_text(main, ["fit", *(argv or ["--help"])])
        nested = bool(argv)
        if nested:
            match = _HELP_FOR.search(text)
            assert match, f"{cli} fit {' '.join(argv)}: no class help"
            if match[2] in seen:
                continue
            seen.add(match[2])
        entries = {option: (invocation, help_text) for option, invocation, help_text in _entries(text)}
        assert entries, f"{cli} fit {' '.join(argv)}: no options found in its help (has the format changed?)"
        for option, (invocation, help_text) in entries.items():
            if not nested and not option.startswith(("--model", "--data")):
                continue  # Lightning's own options (trainer, ckpt_path, ...)
            if not _described(help_text):
                missing.setdefault(f"{cli} fit {' '.join(argv)}", []).append(option)
            if not option.endswith(".help") or option in argv:
                continue
            if "CLASS_PATH_OR_NAME" not in invocation:
                queue.append([*argv, option])  # a dataclass: its own help, no argument
                continue
            typed = entries.get(option.removesuffix(".help"), ("", ""))[1]
            known = re.search(r"known subclasses: ([^)]*)\)", typed)
            for path in re.split(r",\s*", known[1]) if known else []:
                if path.startswith(OURS):
                    queue.append([*argv, option, path])
    return missing, seen


@pytest.mark.parametrize(("cli", "main"), [("spatialscore", score_main), ("spatialrl", rl_main)])
def test_every_lightning_option_has_help(monkeypatch, cli, main):
    monkeypatch.setenv("COLUMNS", "200")  # fewer wrapped lines; the walk joins them anyway
    monkeypatch.setattr("sys.argv", [cli])  # LightningCLI warns when it gets both args and pytest's argv
    missing, seen = _walk(main, cli)
    assert not missing, "options without help text (document them in the class's Args: docstring):\n" + "\n".join(
        f"  {where}: {', '.join(options)}" for where, options in missing.items()
    )
    assert _config_classes(cli) <= seen, f"configs name classes the walk did not reach: {_config_classes(cli) - seen}"


_TOOLS = [("spatialscore", n, t) for n, t in SCORE_TOOLS.items()] + [("spatialrl", n, t) for n, t in RL_TOOLS.items()]


@pytest.mark.parametrize(("cli", "name", "tool"), _TOOLS, ids=[f"{cli}-{name}" for cli, name, _ in _TOOLS])
def test_every_tool_option_has_help(monkeypatch, cli, name, tool):
    monkeypatch.setenv("COLUMNS", "200")
    entries = list(_entries(_help_text(tool, ["--help"]), entry_pattern=_ENTRY_OR_POSITIONAL))
    assert entries, f"{cli} {name}: no options found in its help (has the format changed?)"
    missing = [option for option, _, help_text in entries if not _described(help_text)]
    assert not missing, f"{cli} {name}: options without help text: {missing}"

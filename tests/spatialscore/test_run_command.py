"""The one CLI layer of the tools (``spatialscore.cli.run_command``): a typed entry function becomes a command
with typed validation naming the option, both option spellings, ``--config``/``--print_config``, help from the
docstring, and user errors as one ``PROG: error: ...`` line with exit status 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from spatialscore.cli import PositiveInt, UsageError, invoked_command, run_command

PROG = "spatialscore demo"
SEEN: list[dict[str, Any]] = []


def demo_command(
    files: list[Path] = [],  # noqa: B006 (a test double: never mutated)
    *,
    out: Path,
    batch_size: PositiveInt = 4,
    steps: int | None = None,
    mode: Literal["fast", "exact"] = "fast",
    tag: list[str] | None = None,
    no_progress: bool = False,
    hard_negatives: bool = True,
) -> int:
    """Record what it was called with (a stand-in for a tool).

    Args:
        files: input files
        out: output folder
        batch_size: items per call
        steps: how many steps (default: the model's)
        mode: how to run
        tag: a NAME=VALUE tag (repeatable)
        no_progress: no progress bar
        hard_negatives: add hard negatives
    """
    if out.name == "refused":
        raise UsageError("--out must not be called refused")
    SEEN.append(
        {
            "files": files,
            "out": out,
            "batch_size": batch_size,
            "steps": steps,
            "mode": mode,
            "tag": tag,
            "no_progress": no_progress,
            "hard_negatives": hard_negatives,
            "command": invoked_command(),
        }
    )
    return 0


def run(*argv: str) -> dict[str, Any]:
    """What ``demo_command`` was called with (without the recorded command line)."""
    SEEN.clear()
    assert run_command(demo_command, list(argv), prog=PROG) == 0
    return {key: value for key, value in SEEN[-1].items() if key != "command"}


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        run_command(demo_command, list(argv), prog=PROG)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{PROG}: error: "), err
    return err.strip()


def test_both_spellings_and_the_equals_form_parse_the_same() -> None:
    underscore = run("--out", "o", "--batch_size", "3", "--no_progress", "--hard_negatives", "false")
    dashed = run("--out", "o", "--batch-size", "3", "--no-progress", "--no-hard-negatives")
    assert underscore == dashed == run("--out=o", "--batch-size=3", "--no-progress=true", "--hard-negatives=false")
    assert underscore["batch_size"] == 3 and underscore["no_progress"] and not underscore["hard_negatives"]
    assert underscore["out"] == Path("o") and underscore["files"] == []


def test_lists_repeated_or_after_one_flag_and_positionals() -> None:
    called = run("--tag", "x=1", "--out", "o", "a.jsonl", "b.jsonl", "--tag", "y=[2]")
    assert called["tag"] == ["x=1", "y=[2]"] and called["files"] == [Path("a.jsonl"), Path("b.jsonl")]
    assert run("--out", "o", "--tag", "a", "b")["tag"] == ["a", "b"]
    assert run("--out", "o", "--tag", '["a", "b"]')["tag"] == ["a", "b"]
    assert run("--out", "o")["tag"] is None


def test_the_command_line_as_typed_is_recorded() -> None:
    assert run_command(demo_command, ["--out", "o", "--batch-size", "2"], prog=PROG) == 0
    assert SEEN[-1]["command"] == [
        "spatialscore",
        "demo",
        "--out",
        "o",
        "--batch-size",
        "2",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "argument --batch_size: must be a positive integer, got 0"),
        (["--batch_size", "two"], "argument --batch_size: must be a positive integer, got 'two'"),
        (["--steps", "x"], "argument --steps: Expected a int. Got value: x"),
        (["--mode", "slow"], "argument --mode: Expected a Literal['fast', 'exact']. Got value: slow"),
        (["--bogus", "1"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required: --out"),
    ],
)
def test_type_errors_name_the_option_on_one_line(capsys, argv, message) -> None:
    out = [] if not argv else ["--out", "o"]
    assert refused(capsys, *out, *argv) == f"{PROG}: error: {message}"


def test_a_usage_error_of_the_entry_function_is_one_line_and_status_2(capsys) -> None:
    assert refused(capsys, "--out", "refused") == f"{PROG}: error: --out must not be called refused"


def test_config_file_with_options_after_it_winning(tmp_path, capsys) -> None:
    config = tmp_path / "demo.yaml"
    config.write_text("out: from_file\nbatch_size: 8\ntag: [a, b]\nno_progress: true\n")
    called = run("--config", str(config))
    assert called["out"] == Path("from_file") and called["batch_size"] == 8 and called["tag"] == ["a", "b"]
    assert called["no_progress"]
    called = run("--config", str(config), "--batch-size", "2", "--tag", "c")
    assert called["batch_size"] == 2 and called["tag"] == ["c"]
    config.write_text("out: o\nbatch_size: 0\n")
    assert "batch_size" in refused(capsys, "--config", str(config))


def test_print_config_writes_a_config_that_reads_back(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        run_command(demo_command, ["--out", "o", "--tag", "a", "--print_config"], prog=PROG)
    assert stop.value.code == 0
    config = tmp_path / "printed.yaml"
    config.write_text(capsys.readouterr().out)
    assert run("--config", str(config)) == run("--out", "o", "--tag", "a")


def test_help_lists_every_option_with_its_docstring_help(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as stop:
        run_command(demo_command, ["--help"], prog=PROG)
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {PROG}") and "Record what it was called with" in text
    lines: dict[str, str] = {}
    for line in text.splitlines():  # "  --opt METAVAR   help" entries, wrapped lines joined
        if line.startswith("  ") and not line.startswith("   "):
            option = line.split()[0]
            lines[option] = line
        elif line.startswith("   ") and lines:
            lines[option] += " " + line.strip()
    for option, help_text in [
        ("files", "input files"),
        ("--out", "output folder"),
        ("--batch_size", "items per call"),
        ("--steps", "how many steps"),
        ("--mode", "how to run"),
        ("--tag", "a NAME=VALUE tag (repeatable)"),
        ("--no_progress", "no progress bar"),
        ("--hard_negatives", "add hard negatives"),
        ("--config", "YAML file"),
    ]:
        assert help_text in lines[option], (option, lines.get(option))

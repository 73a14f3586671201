"""What the two command lines offer: the LightningCLI subcommands the modules implement, one optimiser block."""

from __future__ import annotations

import re

import pytest

from spatialrl.cli import main as rl_main
from spatialscore.cli import main as score_main


def _run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("main", "offered"), [(score_main, {"fit", "validate", "test"}), (rl_main, {"fit", "validate"})]
)
def test_help_lists_only_the_offered_lightning_commands(capsys, main, offered):
    code, out, _ = _run(main, ["--help"], capsys)
    assert code == 0
    listed = set(re.findall(r"\{([a-z,]+)\}", out)[0].split(","))
    assert listed == offered


@pytest.mark.parametrize(("argv", "hint"), [(["test"], "spatialrl evaluate"), (["predict"], "FluxPipeline")])
def test_spatialrl_refuses_test_and_predict_with_a_pointer(capsys, argv, hint):
    code, _, err = _run(rl_main, argv, capsys)
    assert code == 2 and hint in err


@pytest.mark.parametrize("main", [score_main, rl_main])
def test_there_is_no_second_optimizer_block(capsys, main):
    code, _, err = _run(main, ["fit", "--optimizer", "torch.optim.SGD", "--print_config"], capsys)
    assert code != 0 and "--optimizer" in err

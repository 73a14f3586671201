"""``spatialrl`` command line: LightningCLI ``fit`` / ``validate`` for GRPO and for flow-matching fine-tuning.

    spatialrl fit --config configs/spatialrl/sft_tiny.yaml     # supervised start (FlowMatchingModule)
    spatialrl fit --config configs/spatialrl/tiny.yaml         # GRPO with Top-k filtering (FluxGRPOModule)
    spatialrl validate --config configs/spatialrl/tiny.yaml    # ODE samples of the validation prompts, rewards
    spatialrl evaluate --policy base=tiny --policy tuned=runs/export --prompts data/test.jsonl --reward rule \
        --out results/eval                                     # policies side by side (spatialrl.evaluate)
    spatialrl paper --out runs/paper/seed0 --seed 0            # the paper in miniature (spatialrl.paper)

The model is chosen by the config's ``model.class_path``
(``spatialrl.module.FluxGRPOModule`` or ``spatialrl.sft.FlowMatchingModule``), the data by ``data.class_path``
(``PreferenceDataModule`` with ``view: prompts`` for GRPO, ``view: images`` for fine-tuning).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from spatialscore.cli import lightning_cli, tool

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

COMMANDS = ("fit", "validate")  # no test/predict: `spatialrl evaluate` judges policies; exports load in diffusers

TOOLS: dict[str, Callable[[list[str]], int]] = {
    "evaluate": tool("spatialrl.evaluate:evaluate_command", prog="spatialrl evaluate"),
    "paper": tool("spatialrl.paper:paper_command", prog="spatialrl paper"),
}


def lightning_main(args: list[str] | None) -> LightningCLI:
    """LightningCLI over any LightningModule / LightningDataModule named by class path in the config."""
    import lightning as L

    return lightning_cli(
        commands=COMMANDS,
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spatialrl`` console script."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:]) or 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] in COMMANDS:
        if not argv or argv[0] in ("-h", "--help"):
            print(f"extra commands: {', '.join(TOOLS)} (spatialrl COMMAND --help)\n")
        lightning_main(None if from_command_line else argv)
        return 0
    hints = {
        "test": " (judge policies on held-out prompts: spatialrl evaluate --help)",
        "predict": " (exported policies are diffusers FLUX folders: sample them with FluxPipeline.from_pretrained)",
    }
    commands = ", ".join(COMMANDS + tuple(TOOLS))
    print(f"unknown command {argv[0]!r}{hints.get(argv[0], '')}; commands: {commands}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

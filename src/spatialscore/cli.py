"""``spatialscore`` command line: LightningCLI for fit/validate/test, plus data and scoring tools.

    spatialscore fit --config configs/spatialscore/tiny.yaml
    spatialscore synth --out data/synthetic --num-pairs 1000 --seed 0
    spatialscore score --model runs/spatialscore/export --prompt "a red circle left of a blue square" a.png b.png
    spatialscore perturb --prompts prompts.txt --out perturbed.jsonl --num 2-3
    spatialscore make-pairs --prompts perturbed.jsonl --pipeline /models/FLUX.1-dev --out pairs/
    spatialscore filter-pairs --pairs pairs/pairs.jsonl --out pairs/kept.jsonl --verifier rule
    spatialscore review --pairs pairs/pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
_LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _NoLightningAdvertisements(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines.

    Lightning 2.6 prints them on every run that does not use its cloud logger and has no setting to turn them
    off; they say nothing about the run. Every other message, warnings included, passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("💡 Tip:") and ("litlogger" in message or "litmodels" in message))


def quiet_lightning_advertisements() -> None:
    """Install :class:`_NoLightningAdvertisements` on the loggers Lightning's ``rank_zero_info`` writes to (once)."""
    for name in _LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoLightningAdvertisements) for f in logger.filters):
            logger.addFilter(_NoLightningAdvertisements())


def lightning_main(args: list[str] | None) -> None:
    """LightningCLI over :class:`SpatialScoreModule` and :class:`PreferenceDataModule` (``args=None``: sys.argv).

    Imported here: the data tools (``synth``, ``perturb``, ...) need neither Lightning nor the model stack.
    """
    from lightning.pytorch.cli import LightningCLI

    from spatialscore.data.datamodule import PreferenceDataModule
    from spatialscore.module import SpatialScoreModule

    quiet_lightning_advertisements()
    LightningCLI(SpatialScoreModule, PreferenceDataModule, args=args, save_config_kwargs={"overwrite": True})


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def score_main(argv: list[str]) -> int:
    """Score image files against a prompt with a saved SpatialScore; prints one JSON line per image.

    User errors (a missing or tampered model folder, an unreadable image, a bad prompt) exit with status 2 and
    one line ``spatialscore score: error: ...`` on stderr, without a traceback.
    """
    parser = argparse.ArgumentParser(prog="spatialscore score", description=score_main.__doc__)
    parser.add_argument("--model", required=True, help="folder written by SpatialScore.save_pretrained")
    parser.add_argument("--prompt", required=True, help="the prompt every image is judged against")
    parser.add_argument("--base-path", default=None, help="override the base Qwen2.5-VL checkpoint path")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (>= 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("images", nargs="+", help="image files")
    args = parser.parse_args(argv)
    from spatialscore.model import SpatialScore

    def fail(message: str) -> int:
        print(f"{parser.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2

    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:  # before loading the model, which can take minutes
        return fail(f"no such image file: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    try:
        model = SpatialScore.from_pretrained(args.model, base_path=args.base_path, device=args.device)
        out = model.score(prompts=[args.prompt] * len(args.images), images=args.images, batch_size=args.batch_size)
    except (OSError, ValueError) as error:  # FileNotFoundError, corrupt images/weights, tampered config, prompts
        return fail(str(error) or type(error).__name__)
    for path, mu, sigma in zip(args.images, out.mu.tolist(), out.sigma.tolist(), strict=True):
        print(json.dumps({"image": path, "score": mu, "sigma": sigma}))
    return 0


def _tool(module: str, name: str = "cli_main") -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        return importlib.import_module(module).__dict__[name](argv)

    return run


TOOLS: dict[str, Callable[[list[str]], int]] = {
    "synth": _tool("spatialscore.data.synthetic"),
    "perturb": _tool("spatialscore.data.perturb"),
    "make-pairs": _tool("spatialscore.data.pairs"),
    "filter-pairs": _tool("spatialscore.data.verify"),
    "review": _tool("spatialscore.review"),
    "score": score_main,
    "benchmark": _tool("spatialscore.benchmark"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spatialscore`` console script."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:]) or 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] in LIGHTNING_COMMANDS:
        if not argv or argv[0] in ("-h", "--help"):
            print(f"extra commands: {', '.join(TOOLS)} (spatialscore COMMAND --help)\n")
        lightning_main(None if from_command_line else argv)
        return 0
    print(f"unknown command {argv[0]!r}; commands: {', '.join(LIGHTNING_COMMANDS + tuple(TOOLS))}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

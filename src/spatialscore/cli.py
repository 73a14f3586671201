"""``spatialscore`` command line: LightningCLI for fit/validate/test, plus data and scoring tools.

spatialscore fit --config configs/spatialscore/tiny.yaml
spatialscore synth --out data/synthetic --num-pairs 1000 --seed 0
spatialscore score --model runs/spatialscore/export --prompt "a red circle left of a blue square" a.png b.png
spatialscore export --model runs/spatialscore/export --out exports/merged --merged
spatialscore serve --model runs/spatialscore/export --port 8000 --max-batch-size 8
spatialscore perturb --prompts prompts.txt --out perturbed.jsonl --num 2-3
spatialscore verify-perturbations perturbed.jsonl --report report.jsonl
spatialscore make-pairs --prompts perturbed.jsonl --pipeline /models/FLUX.1-dev --out pairs/
spatialscore filter-pairs --pairs pairs/pairs.jsonl --out pairs/kept.jsonl --verifier rule
spatialscore review --pairs pairs/pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

LIGHTNING_COMMANDS = ("fit", "validate", "test")  # predict: `spatialscore score` scores manifests and lists
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
    """Install :class:`_NoLightningAdvertisements` on the loggers Lightning's ``rank_zero_info`` writes to (once),
    and ignore the FutureWarning that Lightning 2.6's own use of torch's deprecated ``LeafSpec`` raises under
    torch >= 2.10 at every fit (nothing a user can change; the message is matched exactly, nothing else hidden)."""
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    for name in _LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoLightningAdvertisements) for f in logger.filters):
            logger.addFilter(_NoLightningAdvertisements())


def lightning_cli(*, commands: Sequence[str], **kwargs: Any) -> LightningCLI:
    """A LightningCLI offering only ``commands`` (both halves' CLIs), with the modules' own optimiser block.

    LightningCLI lists fit, validate, test and predict whether or not the modules implement them, and adds a
    second ``--optimizer``/``--lr_scheduler`` block that would silently replace the module's ``optimizer``.
    """
    from lightning.pytorch.cli import LightningCLI

    class OfferedCommands(LightningCLI):
        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            return {name: skip for name, skip in LightningCLI.subcommands().items() if name in commands}

    quiet_lightning_advertisements()
    return OfferedCommands(save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False, **kwargs)


def lightning_main(args: list[str] | None) -> None:
    """LightningCLI over :class:`SpatialScoreModule` and :class:`PreferenceDataModule` (``args=None``: sys.argv).

    Imported here: the data tools (``synth``, ``perturb``, ...) need neither Lightning nor the model stack.
    """
    from spatialscore.data.datamodule import PreferenceDataModule
    from spatialscore.module import SpatialScoreModule

    lightning_cli(
        commands=LIGHTNING_COMMANDS, model_class=SpatialScoreModule, datamodule_class=PreferenceDataModule, args=args
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def read_score_list(path: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(prompt, image, extra keys)`` per line of a ``--list`` JSONL file of ``{"prompt": ..., "image": ...}``.

    Relative image paths are read against the list's folder (as manifests are). A bad line is a ValueError
    naming the file and line.
    """
    from spatialscore.data.manifest import MAX_PROMPT_CHARS, parse_json_line

    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = parse_json_line(line.rstrip("\r"))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(row.get("image"), str):
            raise ValueError(f'{where}: each line must be an object with string "prompt" and "image"')
        if len(row["prompt"]) > MAX_PROMPT_CHARS:
            raise ValueError(f"{where}: prompt has {len(row['prompt'])} characters; at most {MAX_PROMPT_CHARS}")
        image = Path(row["image"])
        rows.append((row["prompt"], image if image.is_absolute() else path.parent / image, row))
    if not rows:
        raise ValueError(f"{path}: no lines to score")
    return rows


def score_main(argv: list[str]) -> int:
    """Score images with a saved SpatialScore and write one JSON line per image (or per pair); the CLI's predict.

    Three inputs: ``--prompt P IMAGE...`` (every image against one prompt), ``--list FILE`` (JSONL of
    ``{"prompt", "image"}``; other keys are copied to the output) or ``--manifest FILE`` (a pair manifest: each
    pair's chosen and rejected image against its prompt, with ``chosen_wins``; the pairwise accuracy, ties
    counted half, goes to stderr). User errors (a missing or tampered model folder, an unreadable image or line,
    a bad prompt) exit with status 2 and one line ``spatialscore score: error: ...`` on stderr, no traceback.
    """
    parser = argparse.ArgumentParser(prog="spatialscore score", description=score_main.__doc__)
    parser.add_argument("--model", required=True, help="folder written by SpatialScore.save_pretrained")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--prompt", help="the prompt every IMAGE is judged against")
    inputs.add_argument("--list", type=Path, help='JSONL of {"prompt": ..., "image": ...} (paths relative to it)')
    inputs.add_argument("--manifest", type=Path, help="pair manifest (JSONL/Parquet): chosen and rejected scored")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON lines here (default: stdout)")
    parser.add_argument("--base-path", default=None, help="override the base Qwen2.5-VL checkpoint path")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (>= 1)")
    parser.add_argument("--device", default="cpu", help="torch device to score on (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    parser.add_argument("images", nargs="*", help="image files (with --prompt)")
    args = parser.parse_args(argv)
    if (args.prompt is not None) != bool(args.images):
        parser.error("IMAGE files go with --prompt (and only with it)")

    def fail(message: str) -> int:
        print(f"{parser.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2

    try:
        rows, pairs = _score_inputs(args)
    except (OSError, ValueError) as error:  # unreadable list or manifest, bad lines, missing images
        return fail(str(error) or type(error).__name__)
    from spatialscore.model import SpatialScore

    try:
        model = SpatialScore.from_pretrained(args.model, base_path=args.base_path, device=args.device)
        out = model.score(
            prompts=[prompt for prompt, _, _ in rows],
            images=[str(image) for _, image, _ in rows],
            batch_size=args.batch_size,
            show_progress=args.progress,
        )
    except (OSError, ValueError) as error:  # FileNotFoundError, corrupt images/weights, tampered config, prompts
        return fail(str(error) or type(error).__name__)
    results = [
        {**extra, "image": str(image), "score": mu, "sigma": sigma}
        for (_, image, extra), mu, sigma in zip(rows, out.mu.tolist(), out.sigma.tolist(), strict=True)
    ]
    if pairs is not None:
        results = [
            _pair_result(record, chosen, rejected)
            for record, chosen, rejected in zip(pairs, results[0::2], results[1::2], strict=True)
        ]
        wins = sum(
            1.0 if r["chosen_wins"] else 0.5 if r["chosen_score"] == r["rejected_score"] else 0.0 for r in results
        )
        print(
            f"pairwise accuracy {wins / len(results):.4f} over {len(results)} pairs (ties count half)", file=sys.stderr
        )
    text = "".join(json.dumps(result, ensure_ascii=False) + "\n" for result in results)
    if args.out is None:
        sys.stdout.write(text)
    else:
        from spatialscore.files import atomic_write

        atomic_write(args.out, lambda f: f.write(text.encode("utf-8")))
        print(f"wrote {len(results)} lines to {args.out}", file=sys.stderr)
    return 0


def _score_inputs(args: argparse.Namespace) -> tuple[list[tuple[str, Path, dict[str, Any]]], list[Any] | None]:
    """The ``(prompt, image, extra)`` rows to score, and the manifest's records (chosen, rejected interleaved)."""
    if args.manifest is not None:
        from spatialscore.data.manifest import read_manifest

        records = read_manifest(args.manifest, show_progress=args.progress).records
        rows = [(r.prompt, image, {}) for r in records for image in (r.chosen, r.rejected)]
        return rows, records
    if args.list is not None:
        rows = read_score_list(args.list)
    else:
        rows = [(args.prompt, Path(image), {}) for image in args.images]
    missing = [str(image) for _, image, _ in rows if not image.is_file()]
    if missing:  # before loading the model, which can take minutes
        raise ValueError(f"no such image file: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    return rows, None


def _pair_result(record: Any, chosen: dict[str, Any], rejected: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record.id,
        "prompt": record.prompt,
        "chosen": chosen["image"],
        "rejected": rejected["image"],
        "chosen_score": chosen["score"],
        "chosen_sigma": chosen["sigma"],
        "rejected_score": rejected["score"],
        "rejected_sigma": rejected["sigma"],
        "chosen_wins": chosen["score"] > rejected["score"],
    }


def _tool(module: str, name: str = "cli_main") -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        return importlib.import_module(module).__dict__[name](argv)

    return run


TOOLS: dict[str, Callable[[list[str]], int]] = {
    "synth": _tool("spatialscore.data.synthetic"),
    "perturb": _tool("spatialscore.data.perturb"),
    "verify-perturbations": _tool("spatialscore.data.verify_perturbations"),
    "make-pairs": _tool("spatialscore.data.pairs"),
    "filter-pairs": _tool("spatialscore.data.verify"),
    "review": _tool("spatialscore.review"),
    "score": score_main,
    "export": _tool("spatialscore.export"),
    "benchmark": _tool("spatialscore.benchmark"),
    "serve": _tool("spatialscore.serve"),
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
    hint = " (score a manifest or a prompt/image list: spatialscore score --help)" if argv[0] == "predict" else ""
    commands = ", ".join(LIGHTNING_COMMANDS + tuple(TOOLS))
    print(f"unknown command {argv[0]!r}{hint}; commands: {commands}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

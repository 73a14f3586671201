"""``spatialscore`` command line: LightningCLI for fit/validate/test, plus data and scoring tools; and the one
command layer of the tools of both CLIs (:func:`run_command`: a typed entry function as a jsonargparse command).

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

import inspect
import json
import logging
import math
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, NoReturn, Union, get_args, get_origin, get_type_hints

from docstring_parser import parse as parse_docstring
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser
from jsonargparse.typing import register_type

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


class UsageError(Exception):
    """A command line that an entry function refuses after parsing (a bad combination, an unusable value):
    :func:`run_command` prints ``PROG: error: MESSAGE`` on one line and exits with status 2, as argparse did."""


class PositiveInt(int):
    """Option type: an integer >= 1 (the message says so and shows the value, like the other typed options)."""

    def __new__(cls, value: Any) -> PositiveInt:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a positive integer, got {value!r}") from None
        if number < 1 or (number != value and not isinstance(value, str)):  # 0, -2; 2.5 from a YAML file
            raise ValueError(f"must be a positive integer, got {value}")
        return super().__new__(cls, number)


class PositiveFloat(float):
    """Option type: a finite number > 0."""

    def __new__(cls, value: Any) -> PositiveFloat:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a positive float, got {value!r}") from None
        if not (number > 0 and math.isfinite(number)):
            raise ValueError(f"must be a positive float, got {value!r}")
        return super().__new__(cls, number)


for _kind in (PositiveInt, PositiveFloat):  # values, not classes to pick a subclass of
    register_type(_kind, serializer=_kind.__base__)
_COMMAND_LINE: ContextVar[list[str] | None] = ContextVar("command_line", default=None)
_BOOLEAN_WORDS = ("true", "false")


def invoked_command() -> list[str]:
    """The command line of the tool :func:`run_command` is running (its program words and arguments as typed),
    for the results files that record how they were made; ``sys.argv`` outside a tool."""
    return list(_COMMAND_LINE.get() or sys.argv)


def run_command(function: Callable[..., int], argv: Sequence[str] | None, *, prog: str) -> int:
    """Parse ``argv`` (``None``: ``sys.argv[1:]``) into ``function``'s parameters and return what it returns: the
    one runner of every ``spatialscore`` and ``spatialrl`` tool.

    ``function`` is a typed entry function: its keyword-only parameters are the options (``--name``, type from
    the hint, help from the docstring's ``Args:``), the parameters before ``*`` the positional arguments (a
    ``list`` one takes any number of values: one or more if it has no default). Every tool so gets jsonargparse's
    typed validation, ``--config FILE.yaml`` (its keys are the parameter names) and ``--print_config``.
    Options are spelled with underscores, as LightningCLI's; the dash spelling is read too (:func:`_canonical`).
    An ``epilog`` attribute of ``function`` (text built from the module's tables, as the spec forms) is shown
    after the options. A parse error or a :class:`UsageError` prints one line ``PROG: error: ...`` and exits
    with status 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = command_parser(function, prog=prog)

    def refuse(message: str) -> NoReturn:
        print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2)

    try:
        config = parser.parse_args(_canonical(argv, function=function, parser=parser))
    except ArgumentError as error:
        refuse(_one_line(str(error), options=list(_options(function))))
    token = _COMMAND_LINE.set([*prog.split(), *argv])
    try:
        return function(
            *(config[name] for name in _positional(function)),
            **{name: config[name] for name in _options(function)},
        )
    except UsageError as error:
        refuse(str(error))
    finally:
        _COMMAND_LINE.reset(token)


def command_parser(function: Callable[..., int], *, prog: str) -> ArgumentParser:
    """The jsonargparse parser :func:`run_command` reads ``function``'s command line with (``--help`` shows it)."""
    doc = parse_docstring(function.__doc__ or "")
    parser = ArgumentParser(
        prog=prog,
        description="\n\n".join(filter(None, (doc.short_description, doc.long_description))),
        epilog=getattr(function, "epilog", None),
        exit_on_error=False,
    )
    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        help="YAML file of these options, keyed by their names in the underscore spelling (later options win)",
    )
    positional = _positional(function)
    parser.add_function_arguments(function, as_group=False, skip=set(positional))
    helps = {param.arg_name: param.description for param in doc.params}
    for name, parameter in positional.items():
        element, many = _element(parameter.annotation)
        nargs = ("*" if parameter.default is not parameter.empty else "+") if many else None
        default = {} if parameter.default is parameter.empty else {"default": parameter.default}
        parser.add_argument(name, type=element, nargs=nargs, help=helps.get(name), **default)
    return parser


def _parameters(function: Callable[..., int]) -> dict[str, inspect.Parameter]:
    hints = get_type_hints(function)
    return {
        name: parameter.replace(annotation=hints.get(name, parameter.annotation))
        for name, parameter in inspect.signature(function).parameters.items()
    }


def _positional(function: Callable[..., int]) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in _parameters(function).items() if p.kind is not inspect.Parameter.KEYWORD_ONLY}


def _options(function: Callable[..., int]) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in _parameters(function).items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _element(hint: Any) -> tuple[Any, bool]:
    """``(type, many)`` of a hint without its ``None``: ``list[Path] | None`` -> ``(Path, True)``."""
    args = [arg for arg in get_args(hint) if arg is not type(None)]
    if get_origin(hint) in (Union, UnionType) and len(args) == 1:
        return _element(args[0])
    if get_origin(hint) in (list, tuple, Sequence):
        return (get_args(hint) or (str,))[0], True
    return hint, False


def _canonical(argv: list[str], *, function: Callable[..., int], parser: ArgumentParser) -> list[str]:
    """``argv`` in the one spelling jsonargparse reads; what every command line that worked before still means.

    ``--num-pairs`` is ``--num_pairs`` (any option the parser knows, ``=VALUE`` kept); a ``bool`` option given
    alone (``--merged``, ``--no-progress``) is ``--merged=true``, and ``--no-X`` of a ``bool`` option ``X`` is
    ``--X=false``; the values of a ``list`` option, repeated (``--policy A --policy B``) or several after one
    flag (``--stages 0 1``), become one list in the place of its first occurrence (given after ``--config``,
    it replaces the file's list). ``--`` ends the options, as in argparse.
    """
    known = parser._option_string_actions  # argparse's map of option strings to their actions
    kinds = {name: _element(parameter.annotation) for name, parameter in _options(function).items()}
    lists: dict[str, list[str]] = {}
    out: list[str] = []
    position = 0
    while position < len(argv):
        token = argv[position]
        position += 1
        if token == "--":
            out += argv[position - 1 :]
            break
        if not token.startswith("--"):
            out.append(token)
            continue
        name, equals, value = token[2:].partition("=")
        underscored = name.replace("-", "_")
        if f"--{underscored}" in known:
            name = underscored
        elif underscored.startswith("no_") and kinds.get(underscored[3:]) == (bool, False):
            name, equals, value = underscored[3:], "=", "false"
        kind = kinds.get(name)
        if kind == (bool, False) and not equals:
            take = position < len(argv) and argv[position].lower() in _BOOLEAN_WORDS
            equals, value, position = "=", argv[position] if take else "true", position + take
        elif kind is not None and kind[1]:
            values = lists.setdefault(name, [])
            if not values:
                out.append(f"--{name}")
            if equals:
                values.append(value)
            while not equals and position < len(argv) and not argv[position].startswith("-"):
                values.append(argv[position])
                position += 1
            continue
        out.append(f"--{name}{equals}{value}")
    for name, values in lists.items():
        given = out.index(f"--{name}")
        single_list = len(values) == 1 and values[0].lstrip().startswith("[")
        out.insert(given + 1, values[0] if single_list else json.dumps(values))
    return out


def _one_line(message: str, *, options: Sequence[str]) -> str:
    """jsonargparse's parse error as one line that names the option: ``argument --NAME: what is wrong``."""
    match = re.match(r'Parser key "([^"]+)"(?: element \d+)?:\s*(.*)', message, re.DOTALL)
    if match is None:  # argparse's own: unrecognised arguments, missing ones (options named by their key)
        named = lambda m: m[1] + ", ".join(f"--{n}" if n in options else n for n in m[2].split(", "))  # noqa: E731
        return re.sub(r"(required: )(.*)", named, message)
    key, detail = match.groups()
    union_errors = [e for e in re.findall(r"^\s*- (.*)$", detail, re.MULTILINE) if "NoneType" not in e]
    if union_errors:  # ``X | None``: what X said, and the value
        given = re.search(r"Given value: (.*)", detail)
        detail = union_errors[0] + (f". Got value: {given[1]}" if given and "Got value" not in union_errors[0] else "")
    detail = re.sub(r"^Not of type \w+: ", "", detail).replace("typing.", "")
    return f"argument --{key}: " + re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", detail)


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


def score_command(
    images: Sequence[Path] = (),
    *,
    model: str,
    prompt: str | None = None,
    list: Path | None = None,
    manifest: Path | None = None,
    out: Path | None = None,
    base_path: str | None = None,
    batch_size: PositiveInt = 16,
    device: str = "cpu",
    no_progress: bool = False,
) -> int:
    """Score images with a saved SpatialScore and write one JSON line per image (or per pair); the CLI's predict.

    Three inputs, one of them: --prompt P IMAGE... (every image against one prompt), --list FILE (JSONL of
    {"prompt", "image"}; other keys are copied to the output) or --manifest FILE (a pair manifest: each pair's
    chosen and rejected image against its prompt, with chosen_wins; the pairwise accuracy, ties counted half, goes
    to stderr). User errors (a missing or tampered model folder, an unreadable image or line, a bad prompt) exit
    with status 2 and one line "spatialscore score: error: ..." on stderr, no traceback.

    Args:
        images: image files (with --prompt)
        model: folder written by SpatialScore.save_pretrained
        prompt: the prompt every IMAGE is judged against
        list: JSONL of {"prompt": ..., "image": ...} (paths relative to it)
        manifest: pair manifest (JSONL/Parquet): chosen and rejected scored
        out: write the JSON lines here (default: stdout)
        base_path: override the base Qwen2.5-VL checkpoint path
        batch_size: images per forward pass (>= 1)
        device: torch device to score on (cpu, cuda, cuda:1, ...)
        no_progress: no progress bar on stderr
    """
    given = [
        name for name, value in (("--prompt", prompt), ("--list", list), ("--manifest", manifest)) if value is not None
    ]
    if len(given) != 1:
        raise UsageError(f"give one of --prompt, --list, --manifest (got {', '.join(given) or 'none'})")
    if (prompt is not None) != bool(images):
        raise UsageError("IMAGE files go with --prompt (and only with it)")

    def fail(message: str) -> int:
        print(f"spatialscore score: error: {' '.join(message.split())}", file=sys.stderr)
        return 2

    try:
        rows, pairs = _score_inputs(
            prompt=prompt, images=images, list_file=list, manifest=manifest, progress=not no_progress
        )
    except (OSError, ValueError) as error:  # unreadable list or manifest, bad lines, missing images
        return fail(str(error) or type(error).__name__)
    from spatialscore.model import SpatialScore

    try:
        scorer = SpatialScore.from_pretrained(model, base_path=base_path, device=device)
        scores = scorer.score(
            prompts=[p for p, _, _ in rows],
            images=[str(image) for _, image, _ in rows],
            batch_size=batch_size,
            show_progress=not no_progress,
        )
    except (OSError, ValueError) as error:  # FileNotFoundError, corrupt images/weights, tampered config, prompts
        return fail(str(error) or type(error).__name__)
    results = [
        {**extra, "image": str(image), "score": mu, "sigma": sigma}
        for (_, image, extra), mu, sigma in zip(rows, scores.mu.tolist(), scores.sigma.tolist(), strict=True)
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
    if out is None:
        sys.stdout.write(text)
    else:
        from spatialscore.files import atomic_write

        atomic_write(out, lambda f: f.write(text.encode("utf-8")))
        print(f"wrote {len(results)} lines to {out}", file=sys.stderr)
    return 0


def score_main(argv: list[str] | None = None) -> int:
    """``spatialscore score`` (:func:`score_command`)."""
    return run_command(score_command, argv, prog="spatialscore score")


def _score_inputs(
    *, prompt: str | None, images: Sequence[Path], list_file: Path | None, manifest: Path | None, progress: bool
) -> tuple[list[tuple[str, Path, dict[str, Any]]], list[Any] | None]:
    """The ``(prompt, image, extra)`` rows to score, and the manifest's records (chosen, rejected interleaved)."""
    if manifest is not None:
        from spatialscore.data.manifest import read_manifest

        records = read_manifest(manifest, show_progress=progress).records
        rows = [(r.prompt, image, {}) for r in records for image in (r.chosen, r.rejected)]
        return rows, records
    if list_file is not None:
        rows = read_score_list(list_file)
    else:
        rows = [(prompt, Path(image), {}) for image in images]
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


def tool(entry: str, *, prog: str) -> Callable[[list[str]], int]:
    """A ``TOOLS`` entry: the typed entry function ``module:function`` run by :func:`run_command` (imported on
    use, so ``spatialscore synth`` loads neither Lightning nor the model)."""

    def run(argv: list[str]) -> int:
        import importlib

        module, _, name = entry.partition(":")
        return run_command(getattr(importlib.import_module(module), name), argv, prog=prog)

    return run


TOOLS: dict[str, Callable[[list[str]], int]] = {
    name: tool(entry, prog=f"spatialscore {name}")
    for name, entry in {
        "synth": "spatialscore.data.synthetic.write:synth_command",
        "perturb": "spatialscore.data.perturb.cli:perturb_command",
        "verify-perturbations": "spatialscore.data.verify_perturbations:verify_perturbations_command",
        "make-pairs": "spatialscore.data.pairs:make_pairs_command",
        "filter-pairs": "spatialscore.data.verify:filter_pairs_command",
        "review": "spatialscore.review.cli:review_command",
        "score": "spatialscore.cli:score_command",
        "export": "spatialscore.export:export_command",
        "benchmark": "spatialscore.benchmark:benchmark_command",
        "serve": "spatialscore.serve:serve_command",
    }.items()
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


if __name__ == "__main__":  # python -m spatialscore.cli: run the importable module's main, whose UsageError and
    from spatialscore.cli import main as imported_main  # option types are the ones the tools' modules import

    sys.exit(imported_main())

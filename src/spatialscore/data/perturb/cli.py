"""``spatialscore perturb``: reading prompts, loading a perturber, writing results and skipped prompts."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from spatialscore.cli import run_command
from spatialscore.data.perturb.batch import _run
from spatialscore.data.perturb.edits import Num, Perturber, SkippedPrompt
from spatialscore.data.perturb.rules import RulePerturber
from spatialscore.specs import import_plugin

# --------------------------------------------------------------------------------------------- CLI
PERTURBER_ALIASES = {"llm": "spatialscore.data.llm_perturb:LLMPerturber"}


def load_perturber(spec: str, options: dict[str, Any] | None = None) -> Perturber:
    """Import ``"module:Class"`` (or an alias of :data:`PERTURBER_ALIASES`) and return an instance made with
    keyword ``options`` (or the object itself if it is not a class and there are no options). A class with a
    ``from_options(options)`` classmethod reads the flat options itself (the LLM perturber builds its
    :class:`~spatialscore.chat.EndpointConfig` from them)."""
    spec = PERTURBER_ALIASES.get(spec, spec)
    obj = import_plugin(spec, what="perturber")
    if options and not isinstance(obj, type):
        raise ValueError(f"perturber {spec!r} is not a class and takes no options")
    try:
        if isinstance(obj, type) and callable(getattr(obj, "from_options", None)):
            perturber = obj.from_options(options or {})
        else:
            perturber = obj(**(options or {})) if isinstance(obj, type) else obj
    except TypeError as exc:
        raise ValueError(f"cannot create perturber {spec!r}: {exc}") from exc
    if not callable(perturber):
        raise ValueError(f"perturber {spec!r} is not callable")
    return perturber


def read_prompts(path: str | Path) -> list[tuple[Any, str]]:
    """Read ``(id, prompt)`` pairs: JSONL (``.jsonl``, a ``prompt`` field, optional ``id``) or plain text.

    Blank lines are ignored; the id defaults to the 1-based line number. Errors name the file and line.
    """
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if path.suffix.lower() != ".jsonl":
                records.append((lineno, line.strip()))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string field 'prompt'")
            records.append((obj.get("id", lineno), obj["prompt"]))
    return records


def _skipped_path(out: Path) -> Path:
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".skipped.jsonl")


def perturb_command(
    *,
    prompts: Path,
    out: Path,
    num: Num = "1",
    seed: int = 0,
    perturber: str | None = None,
    perturber_option: list[str] | None = None,
) -> int:
    """Make minimally perturbed variants of scene prompts that change only spatial relations: perturbed prompts
    as JSONL, skipped ones to OUT.skipped.jsonl.

    Args:
        prompts: text file (one prompt per line) or .jsonl with a 'prompt' field
        out: output JSONL
        num: perturbations per prompt
        seed: random seed; prompt i draws from (seed, i), so the output is reproducible
        perturber: custom perturber class as MODULE:CLASS, or 'llm' (the LLM perturber; default: the built-in
            rule perturber)
        perturber_option: an option of the perturber as KEY=VALUE (repeatable; JSON values parsed): a keyword
            argument of its class; for 'llm' an endpoint setting (base_url=URL, model=M, concurrency=N,
            timeout=S, ...), kinds or attempts
    """
    fatal: tuple[type[Exception], ...] = ()  # perturber errors that stop the run (an endpoint that is down)
    try:
        records = read_prompts(prompts)
        if perturber:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            from spatialscore.chat import ChatEndpointError, parse_options

            fatal = (ChatEndpointError,)
            chosen = load_perturber(perturber, parse_options(perturber_option or [], what="--perturber_option"))
        elif perturber_option:
            raise ValueError("--perturber_option needs --perturber")
        else:
            chosen = RulePerturber()
    except (OSError, ValueError) as exc:
        print(f"spatialscore perturb: error: {exc}", file=sys.stderr)
        return 2
    try:
        done = _run([p for _, p in records], num=num, seed=seed, perturber=chosen)
    except fatal as exc:
        print(
            f"spatialscore perturb: error: {exc} (replies received are cached; rerun to resume)",
            file=sys.stderr,
        )
        return 1
    skipped_path = _skipped_path(out)
    reasons: Counter[str] = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as sink, skipped_path.open("w", encoding="utf-8") as skip:
        for (rec_id, _), item in zip(records, done, strict=True):
            if isinstance(item, SkippedPrompt):
                reasons[item.reason] += 1
                row = {"id": rec_id, "prompt": item.prompt, "reason": item.reason}
                skip.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                sink.write(json.dumps({"id": rec_id, **item.to_dict()}, ensure_ascii=False) + "\n")
    n_skipped = sum(reasons.values())
    print(
        f"spatialscore perturb: {len(records) - n_skipped} of {len(records)} prompts perturbed -> {out}; "
        f"{n_skipped} skipped -> {skipped_path}",
        file=sys.stderr,
    )
    for reason, count in reasons.most_common():
        print(f"  {count} x {reason}", file=sys.stderr)
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore perturb`` (:func:`perturb_command`)."""
    return run_command(perturb_command, argv, prog="spatialscore perturb")

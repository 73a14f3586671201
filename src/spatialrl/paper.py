"""``spatialrl paper``: the paper in miniature, stage by stage, resumable.

    spatialrl paper --out runs/paper/seed0 --seed 0

1. ``sft``: the tiny FLUX's supervised start (``configs/paper/sft_tiny.yaml``: the embedded default's, on the
   loop's stage-1 prompts, red named first, left or right).
2. ``prompts``: the RL training prompts and the held-out prompts of the RL config's data (procedural scenes), each
   perturbed by ``spatialscore perturb`` (the path a user of real prompts takes); a training perturbation that
   lands on a held-out prompt is dropped, so neither the reward model nor the policy sees a held-out prompt.
3. ``pairs``: ``spatialscore make-pairs`` with the supervised tiny FLUX: its own images, one seed per pair.
4. ``filter``: ``spatialscore filter-pairs --verifier rule --pool`` (the paper's human check, by the strict judge);
   the training pairs also get edited copies of their verified chosen images as negatives (an object erased,
   duplicated, recoloured, or an extra one; the image mirrored; :mod:`spatialscore.data.negatives`;
   ``--no-hard-negatives``: none).
5. ``spatialscore``: the reward model trained on the kept training pairs, validated on the held-out pairs, until
   its held-out accuracy exceeds the bar of the config's ``TrainUntil`` callback (``spatialscore.callbacks``); a
   model that ends below it is refused (:class:`RewardModelBelowBar`), never handed to RL.
6. Hardening rounds (``--rounds``, default 1: without one, seed 1's reward model was gamed with split, bar-shaped
   objects; README), each: ``probe-R``, a short GRPO run on the current reward model, shows how a policy games it;
   ``pairs-R`` renders the training prompts with that probe policy; ``filter-R`` verifies all renders so far as
   one pool, so the probe's failures become rejected images next to verified chosen ones; ``spatialscore-R`` is
   the reward model retrained on them. These are the hard negatives the paper's perturbation kinds do not make:
   the extra and duplicated objects a policy produces to game the reward model.
7. ``rl-spatialscore``: GRPO with the last reward model as the only reward (the strict judge is an eval metric).
8. ``rl-rule`` (``--compare-rule``): the same GRPO with the strict rule reward (``configs/paper/rule_tiny.yaml``),
   for comparison. ``--rl-minutes``
   sets the wall-clock cap of both (their configs' is 10 minutes; their step cap, 330, still applies).
9. ``evaluate``: ``spatialrl evaluate`` of the supervised start, the probes and the RL policies on the held-out
   prompts, by the strict judge (and by the last reward model, to see whether it was gamed).

``--until STAGE`` stops after that stage (e.g. ``--until pairs`` to look at the rendered pairs with ``spatialscore
review`` first); a later run without it goes on from there.

Every stage writes into ``OUT/<stage>/`` and, when it finishes, ``OUT/<stage>/stage.json`` (its settings and
seconds). A rerun skips finished stages and refuses a finished stage whose settings changed (delete its folder to
redo it); an interrupted stage starts again. Lightning stages run as ``spatialrl fit`` / ``spatialscore fit``
subprocesses on a copy of their base config (``OUT/<stage>/config.yaml``) in which each config's
``trainer.default_root_dir`` is moved into ``OUT`` (:func:`run_folders`: the GRPO configs must start from the
supervised config's folder and read the reward model from the reward-model config's, else the loop refuses them).
``OUT/summary.md`` / ``summary.json`` report every stage: pairs kept and why others were dropped, the reward model's
held-out pairwise accuracy, strict accuracy and extra-object share of each policy, whether the training reward and
the strict judge diverged during RL (or, at the run's last validation only, began to: too late for the two-in-a-row
rule, still reported), and the wall-clock of each stage.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from spatialrl.callbacks import diverged
from spatialscore.cli import run_command
from spatialscore.data.verify import RejectedCheck
from spatialscore.report import ci_cell, markdown_table

__all__ = [
    "PaperConfig",
    "RewardModelBelowBar",
    "StageChanged",
    "accuracy_bar",
    "check_reward_model",
    "cli_main",
    "paper_command",
    "run_folders",
    "run_paper",
    "run_stage",
    "stage_names",
]

STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class PaperConfig:
    """Everything the loop depends on; each stage records the part it uses."""

    out: str
    seed: int = 0
    sft_config: str = "configs/paper/sft_tiny.yaml"
    rm_config: str = "configs/paper/spatialscore_tiny.yaml"
    rl_config: str = "configs/paper/rl_spatialscore_tiny.yaml"
    rule_config: str = "configs/paper/rule_tiny.yaml"
    images_per_prompt: int = 64
    heldout_images_per_prompt: int = 32
    steps: int = 20
    size: int = 32
    rejected: str = "violates"
    hard_negatives: bool = True
    rounds: int = 1
    probe_minutes: int = 3
    rl_minutes: int | None = None
    probe_images_per_prompt: int = 32
    compare_rule: bool = False
    eval_samples: int = 32
    eval_seed: int = 999
    until: str | None = None


def stage_names(settings: PaperConfig) -> list[str]:
    """The loop's stages in the order they run (each one a folder of the run)."""
    names = ["sft", "prompts", "pairs", "filter", "spatialscore"]
    for r in range(1, settings.rounds + 1):
        names += [f"probe-{r}", f"pairs-{r}", f"filter-{r}", f"spatialscore-{r}"]
    return [*names, "rl-spatialscore", *(["rl-rule"] if settings.compare_rule else []), "evaluate"]


class StageChanged(RuntimeError):
    """A finished stage was asked to run again with other settings."""


class RewardModelBelowBar(RuntimeError):
    """A reward model ended its fit with held-out accuracy not above its config's bar (RL would game a model that
    cannot judge its pairs, as seed 3's did: README)."""


class _Until(Exception):
    """Raised after the ``until`` stage to end the run there."""


def run_stage(
    folder: Path,
    settings: Mapping[str, Any],
    work: Callable[[], Mapping[str, Any] | None],
    *,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Run ``work`` unless ``folder/stage.json`` records the same ``settings``; return the stage record.

    The record holds the settings, what ``work`` returned (``result``) and the stage's ``seconds``. A finished stage
    with other settings raises :class:`StageChanged` naming the changed keys.
    """
    marker = folder / STAGE_FILE
    wanted = json.loads(json.dumps(settings))
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record["settings"] == wanted:
            log(f"{folder.name}: done before ({record['seconds']:.0f} s), skipped")
            return record
        changed = sorted(k for k in set(wanted) | set(record["settings"]) if wanted.get(k) != record["settings"].get(k))
        raise StageChanged(
            f"{marker}: stage {folder.name!r} finished with other settings (changed: {', '.join(changed)}); "
            f"delete {folder} to run it again with the new ones"
        )
    folder.mkdir(parents=True, exist_ok=True)
    log(f"{folder.name}: running")
    start = time.perf_counter()
    result = work()
    record = {"settings": wanted, "result": dict(result or {}), "seconds": round(time.perf_counter() - start, 1)}
    marker.write_text(json.dumps(record, indent=2) + "\n")
    log(f"{folder.name}: finished in {record['seconds']:.0f} s")
    return record


def stage_config(base: str | Path, *, moves: Mapping[str, str]) -> str:
    """The text of ``base`` with each ``runs/...`` folder of ``moves`` replaced (longest first)."""
    text = Path(base).read_text()
    for old in sorted(moves, key=len, reverse=True):
        text = text.replace(old, moves[old])
    return text


def run_folders(settings: PaperConfig) -> dict[str, str]:
    """Each stage config's ``trainer.default_root_dir`` (``sft``, ``rm``, ``rl``, and ``rule`` with ``compare_rule``):
    the folders the loop moves into its run folder. The RL configs must start from the supervised start's folder and
    the RL config must read its reward model from the reward model's, else the loop would train from (or on)
    something it did not make: :class:`ValueError` names the file and field."""
    configs = {"sft": settings.sft_config, "rm": settings.rm_config, "rl": settings.rl_config}
    if settings.compare_rule:
        configs["rule"] = settings.rule_config
    for key, path in configs.items():
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such file (--{key}-config, relative to {Path.cwd()})")
    loaded = {key: yaml.safe_load(Path(path).read_text()) or {} for key, path in configs.items()}
    roots = {}
    for key, config in loaded.items():
        root = (config.get("trainer") or {}).get("default_root_dir")
        if not root:
            raise ValueError(f"{configs[key]}: trainer.default_root_dir is not set (the loop moves it into its run)")
        roots[key] = str(root).rstrip("/")
    needs = [("rl", "policy", ("policy", "path"), "sft"), ("rl", "reward", ("reward", "init_args", "path"), "rm")]
    if "rule" in configs:
        needs.append(("rule", "policy", ("policy", "path"), "sft"))
    for key, what, fields, source in needs:
        value: Any = (loaded[key].get("model") or {}).get("init_args") or {}
        for field in fields:
            value = value.get(field) if isinstance(value, dict) else None
        if not (isinstance(value, str) and value.startswith(roots[source] + "/")):
            raise ValueError(
                f"{configs[key]}: model.init_args.{'.'.join(fields)} is {value!r}, not inside {roots[source]!r} "
                f"(trainer.default_root_dir of {configs[source]}): the loop's {what} would not be its own"
            )
    return roots


def accuracy_bar(config_text: str) -> float | None:
    """The ``bar`` of a reward-model config's ``TrainUntil`` callback (None: the config has none)."""
    callbacks = (yaml.safe_load(config_text).get("trainer") or {}).get("callbacks") or []
    for callback in callbacks:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).rsplit(".", 1)[-1] == "TrainUntil":
            return float(callback["init_args"]["bar"])
    return None


def check_reward_model(folder: Path, *, bar: float | None, config: str) -> None:
    """Raise :class:`RewardModelBelowBar` unless the last validation logged in ``folder/csv`` is above ``bar``."""
    if bar is None:
        return
    row = _last_row_with(folder / "csv", "val/accuracy")
    accuracy = float(row["val/accuracy"])
    if not accuracy > bar:
        raise RewardModelBelowBar(
            f"{folder}: the reward model ends at held-out pairwise accuracy {accuracy:.3f} (step {int(row['step']) + 1}"
            f"), not above the bar {bar} of {config}'s TrainUntil, so it is not handed to RL. Train it longer "
            f"(trainer.max_steps in a copy of {config}, passed with --rm-config) or try another --seed, after "
            f"deleting {folder}"
        )


def _fit(package: str, config: Path, args: Sequence[str]) -> None:
    command = [sys.executable, "-m", f"{package}.cli", "fit", "--config", str(config), *args]
    subprocess.run(command, check=True)


def _last_row_with(csv_dir: Path, key: str) -> dict[str, str]:
    rows = [r for f in sorted(csv_dir.glob("version_*/metrics.csv")) for r in csv.DictReader(f.open())]
    rows = [r for r in rows if r.get(key)]
    if not rows:
        raise RuntimeError(f"{csv_dir}: no logged {key}")
    return rows[-1]


def _series(csv_dir: Path, keys: Sequence[str]) -> list[dict[str, float]]:
    rows = [r for f in sorted(csv_dir.glob("version_*/metrics.csv")) for r in csv.DictReader(f.open())]
    return [{"step": float(r["step"]), **{k: float(r[k]) for k in keys}} for r in rows if all(r.get(k) for k in keys)]


def _prompt_sets(rl_config: str) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts) of the RL config's data, held-out ones (and mirrors) removed."""
    from spatialscore.data.datamodule import PreferenceDataModule, SyntheticData

    init = dict(yaml.safe_load(Path(rl_config).read_text())["data"]["init_args"])
    if init.get("synthetic") is not None:
        init["synthetic"] = SyntheticData(**init["synthetic"])
    data = PreferenceDataModule(**init)
    data.prepare_data()
    data.setup("fit")
    train = sorted({p.prompt for p in data.without_eval_prompts(data.manifests["train"].prompts())})
    held = sorted({p for r in data.load("val").records for p in (r.prompt, r.perturbed_prompt) if p})
    return train, held


def run_paper(settings: PaperConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) every stage; write and return the summary (module docstring), or, with ``until``, the
    settings and the records of the stages run so far."""
    names = stage_names(settings)
    if settings.until is not None and settings.until not in names:
        raise ValueError(f"until must name a stage of this run ({', '.join(names)}), got {settings.until!r}")
    out = Path(settings.out)
    records: dict[str, dict[str, Any]] = {}
    try:
        _run_stages(settings, out, records, log=log)
    except _Until:
        log(f"stopped after stage {settings.until!r} (--until); run again without it to go on")
        return {"settings": asdict(settings), "stages": records}
    summary = summarize(settings, out, records)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    log(summary_markdown(summary))
    return summary


def _run_stages(
    settings: PaperConfig, out: Path, records: dict[str, dict[str, Any]], *, log: Callable[[str], None]
) -> None:
    """Run (or skip) each stage in turn, recording it in ``records``; raise :class:`_Until` after ``until``."""
    from spatialscore.data import perturb
    from spatialscore.data.pairs import make_pairs
    from spatialscore.data.verify import filter_pairs

    seed = settings.seed

    def stage(name: str, wanted: Mapping[str, Any], work: Callable[[], Mapping[str, Any] | None]) -> None:
        records[name] = run_stage(out / name, wanted, work, log=log)
        if name == settings.until:
            raise _Until

    seed_arg = [f"--seed_everything={seed}"]
    runs = run_folders(settings)

    def lightning(name: str, package: str, base: str, moves: Mapping[str, str], extra: Sequence[str] = ()) -> Path:
        folder = out / name
        text = stage_config(base, moves={runs[key]: str(out / folder_name) for key, folder_name in moves.items()})

        def work() -> None:
            config = folder / "config.yaml"
            config.write_text(text)
            _fit(package, config, [*seed_arg, *extra])

        stage(name, {"config": text, "args": [*seed_arg, *extra]}, work)
        return folder

    policy = lightning("sft", "spatialrl", settings.sft_config, {"sft": "sft"}) / "policy"
    prompts_dir = out / "prompts"

    def prompts() -> dict[str, Any]:
        train, held = _prompt_sets(settings.rl_config)
        counts = {}
        for split, texts in (("train", train), ("heldout", held)):
            (prompts_dir / f"{split}.txt").write_text("\n".join(texts) + "\n")
            code = perturb.cli_main(
                [
                    "--prompts",
                    str(prompts_dir / f"{split}.txt"),
                    "--out",
                    str(prompts_dir / f"{split}_perturbed.jsonl"),
                    "--num",
                    "1",
                    "--seed",
                    str(seed),
                ]
            )
            if code:
                raise RuntimeError(f"spatialscore perturb failed on {split} prompts")
            counts[split] = len(texts)
        leaked = _drop_heldout(prompts_dir / "train_perturbed.jsonl", held=set(held))
        return {"prompts": counts, "train_perturbations_dropped_as_heldout": leaked}

    stage("prompts", {"rl_config": Path(settings.rl_config).read_text(), "seed": seed}, prompts)
    render = {
        "steps": settings.steps,
        "height": settings.size,
        "width": settings.size,
        "call_kwargs": {"max_sequence_length": _max_sequence_length(policy)},
    }

    def rendering(name: str, generator: Path, jobs: Sequence[tuple[str, int, int, str]]) -> None:
        """make-pairs with ``generator`` for each (split, images per prompt, seed, id prefix)."""

        def work() -> dict[str, Any]:
            done = {}
            for split, per_prompt, pair_seed, prefix in jobs:
                source = prompts_dir / f"{split}_perturbed.jsonl"
                if prefix:
                    source = _prefixed(source, out / name / f"{split}_perturbed.jsonl", prefix=prefix)
                result = make_pairs(
                    prompts=source,
                    pipeline=generator,
                    out=out / name / split,
                    seed=pair_seed,
                    batch_size=64,
                    images_per_prompt=per_prompt,
                    **render,
                )
                done[split] = result.written + result.already_done
            return {"pairs": done}

        stage(name, {**render, "generator": str(generator), "jobs": jobs}, work)

    rendering(
        "pairs",
        policy,
        [
            ("train", settings.images_per_prompt, 2 * seed, ""),
            ("heldout", settings.heldout_images_per_prompt, 2 * seed + 1, ""),
        ],
    )

    def filtering(name: str, splits: Mapping[str, Sequence[Path]]) -> None:
        def work() -> dict[str, Any]:  # hard negatives for training only: held-out pairs stay the generator's own
            return {
                split: filter_pairs(
                    pairs=sources,
                    out=out / name / f"{split}.jsonl",
                    verifier="rule",
                    rejected=settings.rejected,
                    pool=True,
                    hard_negatives=settings.hard_negatives and split == "train",
                ).to_dict()
                for split, sources in splits.items()
            }

        wanted = {
            "verifier": "rule",
            "rejected": settings.rejected,
            "pool": True,
            "hard_negatives": settings.hard_negatives,
            "splits": {k: [str(p) for p in v] for k, v in splits.items()},
        }
        stage(name, wanted, work)

    bar = accuracy_bar(Path(settings.rm_config).read_text())
    train_sources = [out / "pairs" / "train" / "pairs.jsonl"]
    filtering("filter", {"train": train_sources, "heldout": [out / "pairs" / "heldout" / "pairs.jsonl"]})
    heldout = out / "filter" / "heldout.jsonl"
    reward_model = "spatialscore"
    lightning(
        reward_model,
        "spatialscore",
        settings.rm_config,
        {"rm": reward_model},
        [f"--data.train={out / 'filter' / 'train.jsonl'}", f"--data.val={heldout}"],
    )
    check_reward_model(out / reward_model, bar=bar, config=settings.rm_config)
    for r in range(1, settings.rounds + 1):
        # Hardening: a short RL run shows how the policy games the current reward model; its renders of the
        # training prompts join the pool, their failures become rejected images, and the reward model is retrained.
        probe = lightning(
            f"probe-{r}",
            "spatialrl",
            settings.rl_config,
            {"sft": "sft", "rm": reward_model, "rl": f"probe-{r}"},
            [_max_time(settings.probe_minutes)],
        )
        rendering(
            f"pairs-{r}",
            probe / "policy",
            [("train", settings.probe_images_per_prompt, 2 * seed + 2 * r, f"probe{r}-")],
        )
        train_sources.append(out / f"pairs-{r}" / "train" / "pairs.jsonl")
        filtering(f"filter-{r}", {"train": list(train_sources)})
        reward_model = f"spatialscore-{r}"
        lightning(
            reward_model,
            "spatialscore",
            settings.rm_config,
            {"rm": reward_model},
            [f"--data.train={out / f'filter-{r}' / 'train.jsonl'}", f"--data.val={heldout}"],
        )
        check_reward_model(out / reward_model, bar=bar, config=settings.rm_config)
    rl_budget = [] if settings.rl_minutes is None else [_max_time(settings.rl_minutes)]
    lightning(
        "rl-spatialscore",
        "spatialrl",
        settings.rl_config,
        {"sft": "sft", "rm": reward_model, "rl": "rl-spatialscore"},
        rl_budget,
    )
    policies = {
        "sft": policy,
        **{f"probe-{r}": out / f"probe-{r}" / "policy" for r in range(1, settings.rounds + 1)},
        "spatialscore": out / "rl-spatialscore" / "policy",
    }
    if settings.compare_rule:
        policies["rule"] = (
            lightning("rl-rule", "spatialrl", settings.rule_config, {"sft": "sft", "rule": "rl-rule"}, rl_budget)
            / "policy"
        )
    evaluate_args = [
        *(f"--policy={name}={path}" for name, path in policies.items()),
        f"--prompts={prompts_dir / 'heldout.txt'}",
        "--reward=strict",
        f"--reward=spatialscore=spatialscore:{out / reward_model / 'export'}",
        f"--out={out / 'evaluate'}",
        f"--seed={settings.eval_seed}",
        f"--samples-per-prompt={settings.eval_samples}",
        f"--steps={settings.steps}",
        f"--height={settings.size}",
        f"--width={settings.size}",
        "--device=cpu",
    ]

    def evaluate() -> None:
        from spatialrl.evaluate import cli_main as evaluate_main

        if evaluate_main(evaluate_args):
            raise RuntimeError("spatialrl evaluate failed")

    stage("evaluate", {"args": evaluate_args}, evaluate)


def _max_time(minutes: int) -> str:
    """The Lightning override of a stage's wall-clock budget."""
    return f"--trainer.max_time=00:{minutes // 60:02d}:{minutes % 60:02d}:00"


def _prefixed(source: Path, target: Path, *, prefix: str) -> Path:
    """A copy of a perturbed-prompts file with every id prefixed, so renders of another generator get own ids."""
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    target.write_text("".join(json.dumps({**row, "id": f"{prefix}{row['id']}"}) + "\n" for row in rows))
    return target


def _drop_heldout(path: Path, *, held: set[str]) -> int:
    """Remove from a perturbed-prompts file the records whose perturbed prompt is a held-out prompt (the reward
    model must not see images of held-out prompts); returns how many were removed."""
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["perturbed_prompt"] not in held]
    path.write_text("".join(kept))
    return len(lines) - len(kept)


def _max_sequence_length(policy: Path) -> int:
    from spatialrl.flux import SETTINGS_FILE

    path = policy / SETTINGS_FILE
    return int(json.loads(path.read_text())["max_sequence_length"]) if path.is_file() else 512


def summarize(settings: PaperConfig, out: Path, records: Mapping[str, Any]) -> dict[str, Any]:
    """The loop's numbers, read back from the stages' outputs."""
    results = json.loads((out / "evaluate" / "results.json").read_text())
    filters = {name: record["result"] for name, record in records.items() if name.startswith("filter")}
    last_validations = {
        name: _last_row_with(out / name / "csv", "val/accuracy") for name in records if name.startswith("spatialscore")
    }
    reward_models = {name: round(float(row["val/accuracy"]), 4) for name, row in last_validations.items()}
    divergence = {}
    for name in records:
        if not (name.startswith(("probe-", "rl-"))):
            continue
        series = _series(out / name / "csv", ["val/reward", "val/strict_correct"])
        rewards = [r["val/reward"] for r in series]
        judge = [r["val/strict_correct"] for r in series]
        divergence[name] = {
            "diverged": diverged(rewards=rewards, judge=judge, tolerance=0.05, patience=2),
            # the last validation alone: a fall the run ended too soon to confirm (patience 2) is still a finding
            "diverging_at_end": diverged(rewards=rewards, judge=judge, tolerance=0.05, patience=1),
            "val/reward": [round(v, 4) for v in rewards],
            "val/strict_correct": [round(v, 4) for v in judge],
        }
    keys = ("strict_correct", "strict_extra", "strict_missing", "spatialscore")
    policies = {
        name: {key: round(values["rewards"][key]["mean"], 4) for key in keys}
        for name, values in results["policies"].items()
    }
    baseline = results["baseline"]
    for name, values in policies.items():  # paired difference from the supervised start, same noise, with its CI
        paired = results["paired"].get(f"{name} - {baseline}")
        if paired is not None:
            values["vs_start"] = {
                key: [round(paired[key][k], 4) for k in ("mean", "ci_low", "ci_high")] for key in keys[:2]
            }
    seconds = {name: record["seconds"] for name, record in records.items()}
    return {
        "settings": asdict(settings),
        "filter": filters,
        "reward_model_heldout_accuracy": reward_models,
        # a validation is logged at the step before its batch's optimiser step is counted
        "reward_model_steps": {name: int(row["step"]) + 1 for name, row in last_validations.items()},
        "policies": policies,
        "divergence": divergence,
        "seconds": seconds,
        "loop_seconds": round(sum(v for name, v in seconds.items() if name != "rl-rule"), 1),
    }


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as Markdown: filter counts, reward model accuracy, the policies' table, divergence, times."""
    lines = [f"# The paper in miniature (seed {summary['settings']['seed']})", ""]
    for name, splits in summary["filter"].items():
        for split, result in splits.items():
            dropped = "; ".join(f"{n} {reason}" for reason, n in result["dropped"].items())
            lines.append(
                f"- {name}, {split} pairs: {result['kept']} of {result['total']} kept, {result['pooled']} "
                f"pooled across seeds (dropped: {dropped})"
            )
    for name, accuracy in summary["reward_model_heldout_accuracy"].items():
        steps = summary["reward_model_steps"][name]
        lines.append(f"- {name}: pairwise accuracy on held-out generated pairs {accuracy:.3f} after {steps} steps")

    def paired(values: Mapping[str, Any], key: str) -> str:
        return ci_cell(*values["vs_start"][key], signed=True) if "vs_start" in values else "-"

    header = ["policy", "strict accuracy", "vs start (95% CI)", "extra objects", "vs start (95% CI)"]
    rows = [
        [
            name,
            f"{values['strict_correct']:.3f}",
            paired(values, "strict_correct"),
            f"{values['strict_extra']:.3f}",
            paired(values, "strict_extra"),
            f"{values['strict_missing']:.3f}",
            f"{values['spatialscore']:.3f}",
        ]
        for name, values in summary["policies"].items()
    ]
    lines += ["", markdown_table([*header, "missing objects", "SpatialScore"], rows).rstrip()]
    lines.append("")
    for name, values in summary["divergence"].items():
        verdict = "diverged over the validations" if values["diverged"] else "did not diverge over the validations"
        if values.get("diverging_at_end") and not values["diverged"]:
            verdict = (
                "began to diverge at the last validation, too late for a second one to confirm it (strict "
                f"{max(values['val/strict_correct']):.3f} at its best, then more than 0.05 lower while the reward rose)"
            )
        lines.append(
            f"- {name}: training reward and strict judge {verdict} "
            f"(val/reward {values['val/reward'][0]:.3f} -> {values['val/reward'][-1]:.3f}, "
            f"val/strict_correct {values['val/strict_correct'][0]:.3f} -> "
            f"{values['val/strict_correct'][-1]:.3f})"
        )
    times = ", ".join(f"{name} {s:.0f} s" for name, s in summary["seconds"].items())
    lines += [f"- wall-clock: {times}; the loop (without rl-rule): {summary['loop_seconds'] / 60:.1f} min", ""]
    return "\n".join(lines)


def paper_command(
    *,
    out: str,
    seed: int = PaperConfig.seed,
    sft_config: str = PaperConfig.sft_config,
    rm_config: str = PaperConfig.rm_config,
    rl_config: str = PaperConfig.rl_config,
    rule_config: str = PaperConfig.rule_config,
    images_per_prompt: int = PaperConfig.images_per_prompt,
    heldout_images_per_prompt: int = PaperConfig.heldout_images_per_prompt,
    rejected: RejectedCheck = PaperConfig.rejected,
    hard_negatives: bool = PaperConfig.hard_negatives,
    rounds: int = PaperConfig.rounds,
    probe_minutes: int = PaperConfig.probe_minutes,
    rl_minutes: int | None = PaperConfig.rl_minutes,
    probe_images_per_prompt: int = PaperConfig.probe_images_per_prompt,
    compare_rule: bool = PaperConfig.compare_rule,
    eval_samples: int = PaperConfig.eval_samples,
    until: str | None = None,
) -> int:
    """Run or resume the paper in miniature, stage by stage (the module docstring of spatialrl.paper).

    Args:
        out: run folder (resumed if it exists)
        seed: seed of every stage (prompt data stay fixed)
        sft_config: base config of the supervised start
        rm_config: base config of the reward model
        rl_config: base config of GRPO on the reward model
        rule_config: base config of GRPO on the rule reward (--compare_rule)
        images_per_prompt: pairs rendered per training prompt (one seed each)
        heldout_images_per_prompt: pairs rendered per held-out prompt (the reward model's validation pairs)
        rejected: filter-pairs' check of the rejected image
        hard_negatives: train the reward model also on edited copies of its verified chosen images
            (filter-pairs --hard_negatives; without them the policy games it, README; --no_hard_negatives: off)
        rounds: hardening rounds: probe RL, its renders as negatives, reward model retrained
        probe_minutes: RL minutes per probe
        rl_minutes: wall-clock cap of both final GRPO runs (default: their configs' 10; their max_steps, 330, still
            applies)
        probe_images_per_prompt: pairs rendered per training prompt by each hardening round's probe policy
        compare_rule: also run GRPO with the strict rule reward
        eval_samples: samples per held-out prompt
        until: stop after this stage (sft, prompts, pairs, filter, ...)
    """
    settings = PaperConfig(
        out=out,
        seed=seed,
        sft_config=sft_config,
        rm_config=rm_config,
        rl_config=rl_config,
        rule_config=rule_config,
        images_per_prompt=images_per_prompt,
        heldout_images_per_prompt=heldout_images_per_prompt,
        rejected=rejected,
        hard_negatives=hard_negatives,
        rounds=rounds,
        probe_minutes=probe_minutes,
        rl_minutes=rl_minutes,
        probe_images_per_prompt=probe_images_per_prompt,
        compare_rule=compare_rule,
        eval_samples=eval_samples,
        until=until,
    )
    try:
        run_paper(settings, log=lambda line: print(f"[spatialrl paper] {line}", file=sys.stderr, flush=True))
    except (StageChanged, subprocess.CalledProcessError, RuntimeError, ValueError) as exc:
        print(f"spatialrl paper: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialrl paper`` (:func:`paper_command`)."""
    return run_command(paper_command, argv, prog="spatialrl paper")

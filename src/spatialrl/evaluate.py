"""Generator evaluation: ODE samples of held-out prompts from several policies, scored by several rewards.

    spatialrl evaluate --policy base=tiny --policy tuned=runs/spatialrl/export \\
        --prompts data/test.jsonl --reward rule --reward spatialscore:runs/spatialscore/export --out results/eval

Every policy samples every prompt ``samples_per_prompt`` times with the Euler ODE sampler
(:func:`spatialrl.rollout.sample` with ``noise_level=0``) from the same initial noise, seeded by
``(seed, crc32(prompt), sample index)`` exactly as :meth:`FluxGRPOModule.evaluate` does: the same policy gives
the same images here and in the module's validation, and different policies are compared on paired samples.
Each reward reports its mean with a 95% bootstrap CI (prompts are resampled, since the samples of one prompt
are not independent) and, for every policy after the first, the paired difference to the first policy with its
CI (the same resampled prompts for both) and the fraction of samples where the policy scores higher.

Policy specs (optionally ``NAME=SPEC``): ``tiny`` or ``tiny:SEED`` (a random tiny FLUX built offline), or a
diffusers FLUX folder (FLUX.1-dev, or one written by :class:`spatialrl.callbacks.ExportPolicy`).
Reward specs (optionally ``NAME=SPEC``; default ``strict``): ``strict`` (:class:`~spatialrl.rewards.StrictReward`,
the strict judge, reported with its shares of images with extra and missing objects and the lenient score as a
labelled diagnostic), ``rule`` (:class:`~spatialrl.rewards.RuleReward`, the lenient checker),
``spatialscore:PATH`` (:class:`~spatialrl.rewards.SpatialScoreReward`) or the class path of a
:class:`~spatialrl.rewards.Reward` subclass that takes no arguments (``module:Class``; the older
``package.module.Class`` still works, with a deprecation warning).
Prompts: a pair manifest (its unique perfect prompts) or a text file with one prompt per line.

Image size and ODE steps default to what the policy folders recorded at export (``height``, ``width`` and
``num_steps`` in ``spatialrl.json``, written by :func:`spatialrl.callbacks.export_policy`: the size the policy was
trained at and its validation's steps), else 512x512 and 28 steps; policies that recorded different values need
them given explicitly (:func:`resolve_sampling`).

Writes ``results.json`` (settings, per-policy means and CIs, paired differences, per-prompt scores, timings),
``table.md`` and ``grid.png`` (rows: prompts under their text, columns: policies; the first ``grid_samples``
samples of each, captioned with the first reward).
"""

from __future__ import annotations

import inspect
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from spatialrl.config import EvalConfig, SamplingConfig
from spatialrl.flux import SETTINGS_FILE, FluxSource, recorded_settings
from spatialrl.rewards import Reward, RuleReward, SpatialScoreReward, StrictReward, reward_components
from spatialrl.rollout import ode_images
from spatialscore.cli import PositiveInt, UsageError, invoked_command, run_command
from spatialscore.data.datamodule import PromptDataset
from spatialscore.data.manifest import read_manifest
from spatialscore.report import ci_cell, markdown_table, write_json
from spatialscore.specs import SpecError, import_plugin, split_name
from spatialscore.visualize import image_grid

__all__ = [
    "POLICY_FORMS",
    "REWARD_FORMS",
    "PolicySpec",
    "SpecError",
    "bootstrap_mean_ci",
    "cli_main",
    "describe_sampling",
    "evaluate_policies",
    "format_tables",
    "parse_policy_spec",
    "parse_reward_spec",
    "read_prompts",
    "recorded_sampling",
    "resolve_sampling",
]

POLICY_FORMS = ("tiny or tiny:SEED (random tiny FLUX)", "PATH (a diffusers FLUX folder)", "NAME=SPEC")
REWARD_FORMS = (
    "strict (StrictReward: the strict judge, with the shares of images with extra and missing objects)",
    "rule (RuleReward: the lenient centroid checker, a diagnostic)",
    "spatialscore:PATH (SpatialScoreReward of a saved SpatialScore)",
    "module:Class (a Reward subclass taking no arguments; the older module.Class still works, deprecated)",
    "NAME=SPEC",
)
_MANIFEST_SUFFIXES = (".jsonl", ".json", ".parquet", ".pq")
# Sampling settings a policy folder may record at export: (key in spatialrl.json, CLI flag, default).
_SAMPLING_KEYS = (
    ("height", "--height", SamplingConfig.height),
    ("width", "--width", SamplingConfig.width),
    ("num_steps", "--steps", EvalConfig.num_steps),
)


@dataclass(frozen=True)
class PolicySpec:
    """A named policy: where its FLUX comes from."""

    name: str
    source: FluxSource


def parse_policy_spec(spec: str, *, dtype: str = "float32", max_sequence_length: int | None = None) -> PolicySpec:
    """Parse ``[NAME=]tiny[:SEED]`` or ``[NAME=]PATH`` (see :data:`POLICY_FORMS`); checks that a path exists."""
    name, body = split_name(spec)
    common = {"dtype": dtype, "max_sequence_length": max_sequence_length}
    head, colon, tail = body.partition(":")
    if head == "tiny":
        try:
            tiny_seed = int(tail) if colon else 0
        except ValueError:
            raise SpecError(f"policy {spec!r}: tiny seed must be an integer, got {tail!r}") from None
        return PolicySpec(name, FluxSource(tiny_seed=tiny_seed, **common))
    if not (Path(body) / "transformer" / "config.json").is_file():
        raise SpecError(
            f"policy {spec!r}: {body} is not a diffusers FLUX folder (no transformer/config.json); "
            f"forms: {'; '.join(POLICY_FORMS)}"
        )
    return PolicySpec(name, FluxSource(path=body, **common))


def recorded_sampling(spec: PolicySpec) -> dict[str, int]:
    """The ``height``, ``width`` and ``num_steps`` (ODE steps) ``spec``'s folder recorded at export, those it has
    (``{}`` for ``tiny`` and folders without ``spatialrl.json``, e.g. FLUX.1-dev)."""
    if spec.source.path is None:
        return {}
    path = Path(spec.source.path) / SETTINGS_FILE
    try:
        recorded = recorded_settings(spec.source.path)
    except (OSError, ValueError) as error:
        raise SpecError(f"policy {spec.name!r}: cannot read {path}: {error}") from error
    if not isinstance(recorded, dict):
        raise SpecError(f"policy {spec.name!r}: {path} does not hold a JSON object")
    out = {}
    for key, _, _ in _SAMPLING_KEYS:
        if key in recorded:
            value = recorded[key]
            if type(value) is not int or value < 1:
                raise SpecError(f"policy {spec.name!r}: {path}: {key} must be a positive integer, got {value!r}")
            out[key] = value
    return out


def resolve_sampling(
    policies: Sequence[PolicySpec],
    *,
    height: int | None = None,
    width: int | None = None,
    num_steps: int | None = None,
) -> tuple[dict[str, int], dict[str, str]]:
    """The ``height``, ``width`` and ``num_steps`` to sample with, and where each came from.

    A value given wins; else the one the policies recorded at export (:func:`recorded_sampling`; policies that
    recorded none, e.g. ``tiny`` or FLUX.1-dev, follow the others), else the default (512, 512, 28). Policies
    that recorded different values raise :class:`SpecError` naming them: give that value explicitly.
    """
    given = {"height": height, "width": width, "num_steps": num_steps}
    recorded = {spec.name: recorded_sampling(spec) for spec in policies} if None in given.values() else {}
    values: dict[str, int] = {}
    sources: dict[str, str] = {}
    conflicts = []
    for key, flag, default in _SAMPLING_KEYS:
        if given[key] is not None:
            values[key], sources[key] = given[key], "given"
            continue
        seen = {name: settings[key] for name, settings in recorded.items() if key in settings}
        if len(set(seen.values())) > 1:
            conflicts.append(f"{key} {', '.join(f'{name}={value}' for name, value in seen.items())} (give {flag})")
        elif seen:
            values[key], sources[key] = next(iter(seen.values())), f"recorded by {', '.join(seen)}"
        else:
            values[key], sources[key] = default, "default"
    if conflicts:
        raise SpecError(
            f"the policies were exported with different sampling settings ({SETTINGS_FILE}): " + "; ".join(conflicts)
        )
    return values, sources


def describe_sampling(values: Mapping[str, int], sources: Mapping[str, str]) -> str:
    """One line: the size and steps :func:`resolve_sampling` chose, each with where it came from."""
    names = {"height": "height", "width": "width", "num_steps": "ODE steps"}
    return "sampling " + ", ".join(f"{names[key]} {values[key]} ({sources[key]})" for key in names)


def parse_reward_spec(spec: str, *, batch_size: int = 16, device: str | None = None) -> Reward:
    """The reward of ``[NAME=]strict``, ``rule``, ``spatialscore:PATH`` or ``module:Class`` (spatialscore.specs)."""
    name, body = split_name(spec)
    named = name != body
    if body in ("strict", "rule"):
        cls = StrictReward if body == "strict" else RuleReward
        return cls(name=name if named else body)
    head, colon, tail = body.partition(":")
    if head == "spatialscore" and colon:
        if not Path(tail).is_dir():
            raise SpecError(f"reward {spec!r}: no SpatialScore folder at {tail}")
        return SpatialScoreReward(tail, batch_size=batch_size, device=device, name=name if named else "spatialscore")
    if ":" not in body and "." not in body:
        raise SpecError(f"reward {spec!r}: unknown form; forms: {'; '.join(REWARD_FORMS)}")
    cls = import_plugin(body, what="reward", dotted=True)
    if not (inspect.isclass(cls) and issubclass(cls, Reward)):
        raise SpecError(f"reward {spec!r}: {body} is not a subclass of spatialrl.rewards.Reward")
    reward = cls()
    if named:
        reward.name = name
    return reward


def read_prompts(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Prompts and per-prompt metadata: a manifest's unique perfect prompts (metadata as the data module's
    prompts view gives it) or the non-blank lines of a text file (metadata ``{"line": n}``). Lines end at "\n"
    only (a "\r" before it is stripped): U+2028, U+2029 and U+0085, line breaks to ``str.splitlines``, stay
    inside their prompt."""
    path = Path(path)
    if path.suffix.lower() in _MANIFEST_SUFFIXES:
        dataset = PromptDataset(read_manifest(path, check_images=False).prompts())
        items = [dataset[i] for i in range(len(dataset))]
        return [item["prompt"] for item in items], [item["metadata"] for item in items]
    prompts, metadata = [], []
    for number, line in enumerate(path.read_bytes().decode("utf-8").split("\n"), start=1):
        if line.strip():
            prompts.append(line.strip())
            metadata.append({"line": number})
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts, metadata


def bootstrap_mean_ci(
    values: np.ndarray, *, resamples: np.ndarray | None, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Mean of per-prompt ``values`` (P,) and its percentile bootstrap CI over ``resamples`` (S, P) indices
    (None or no prompts: NaN bounds). Shared resamples keep CIs of paired quantities paired."""
    mean = float(values.mean()) if values.size else float("nan")
    if resamples is None or not values.size:
        return mean, float("nan"), float("nan")
    low, high = np.quantile(values[resamples].mean(axis=1), [alpha / 2, 1 - alpha / 2])
    return mean, float(low), float(high)


def evaluate_policies(
    *,
    policies: Sequence[PolicySpec],
    prompts: Sequence[str],
    rewards: Sequence[Reward],
    metadata: Sequence[Mapping[str, Any]] | None = None,
    num_steps: int | None = None,
    samples_per_prompt: int = EvalConfig.samples_per_prompt,
    height: int | None = None,
    width: int | None = None,
    seed: int = EvalConfig.seed,
    guidance: float = SamplingConfig.guidance,
    batch_size: int = SamplingConfig.rollout_batch,
    device: str = "cpu",
    bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    grid_prompts: int = 8,
    grid_samples: int = 1,
    out_dir: str | os.PathLike[str] | None = None,
    command: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Sample ``prompts`` from every policy (one loaded at a time), score with every reward, summarise.

    ``height``, ``width`` and ``num_steps`` left None are the ones the policies recorded at export, else 512, 512
    and 28 (:func:`resolve_sampling`). ``progress`` shows a progress bar per policy (images sampled and scored).

    Returns the ``results.json`` dict: ``policies[name]["rewards"][reward]`` holds ``mean``, ``ci_low``,
    ``ci_high``, ``std`` and ``n``; ``paired["B - A"][reward]`` the difference of policy B to the first policy A
    (``mean``, CI, ``win_rate``, ``tie_rate`` over samples); ``per_prompt`` every sample's scores. With
    ``out_dir`` also writes ``results.json``, ``table.md`` and ``grid.png``. ``bootstrap=0`` disables CIs.
    """
    if not policies or not rewards or not prompts:
        raise ValueError("need at least one policy, one reward and one prompt")
    for kind, names in (("policy", [p.name for p in policies]), ("reward", [r.name for r in rewards])):
        if len(set(names)) != len(names):
            raise ValueError(f"{kind} names must be unique, got {names}; name them with NAME=SPEC")
    if samples_per_prompt < 1 or batch_size < 1 or grid_samples < 1 or bootstrap < 0:
        raise ValueError("samples_per_prompt, batch_size and grid_samples must be >= 1 and bootstrap >= 0")
    chosen, sources = resolve_sampling(policies, height=height, width=width, num_steps=num_steps)
    height, width, num_steps = chosen["height"], chosen["width"], chosen["num_steps"]
    metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
    n = samples_per_prompt
    flat = [p for p in prompts for _ in range(n)]
    flat_meta = [m for m in metadata for _ in range(n)]
    grid_rows = min(grid_prompts, len(prompts))
    columns = [name for reward in rewards for name in reward.component_names()]
    if len(set(columns)) != len(columns):
        raise ValueError(f"reward and diagnostic names must be unique, got {columns}; name rewards with NAME=SPEC")
    scores: dict[str, dict[str, np.ndarray]] = {}
    grid: dict[str, Tensor] = {}
    seconds: dict[str, dict[str, float]] = {}
    for number, spec in enumerate(policies, start=1):
        with tqdm(
            total=len(flat),
            desc=f"policy {number}/{len(policies)} {spec.name}",
            unit="img",
            disable=not progress,
            postfix="loading",
            dynamic_ncols=True,
        ) as bar:
            start = time.perf_counter()
            policy = spec.source.load(device=device)
            loaded = time.perf_counter()
            parts: dict[str, list[Tensor]] = {name: [] for name in columns}
            firsts: list[Tensor] = []
            sampling = scoring = 0.0
            offset, tick = 0, time.perf_counter()
            bar.set_postfix_str("sampling")
            for images in ode_images(
                policy,
                prompts=prompts,
                samples_per_prompt=n,
                seed=seed,
                num_steps=num_steps,
                height=height,
                width=width,
                guidance=guidance,
                batch_size=batch_size,
            ):
                mid = time.perf_counter()
                sampling += mid - tick
                bar.set_postfix_str("scoring")
                rows = slice(offset, offset + len(images))
                for reward in rewards:
                    values = reward_components(reward, images=images, prompts=flat[rows], metadata=flat_meta[rows])
                    for name, value in values.items():
                        parts[name].append(value.cpu())
                firsts += [
                    images[j - offset].cpu()
                    for j in range(offset, offset + len(images))
                    if j % n < grid_samples and j // n < grid_rows
                ]  # first samples of the grid's prompts
                offset += len(images)
                tick = time.perf_counter()
                scoring += tick - mid
                bar.set_postfix_str("sampling", refresh=False)
                bar.update(len(images))
        scores[spec.name] = {
            name: torch.cat(values).double().numpy().reshape(len(prompts), n) for name, values in parts.items()
        }
        grid[spec.name] = torch.stack(firsts)
        seconds[spec.name] = {"load": loaded - start, "sampling": sampling, "scoring": scoring}
        del policy  # one policy in memory at a time
    results = _summarise(scores, policies=policies, columns=columns, bootstrap=bootstrap, bootstrap_seed=bootstrap_seed)
    results["settings"] = {
        "prompts": len(prompts),
        "samples_per_prompt": n,
        "num_steps": num_steps,
        "height": height,
        "width": width,
        "sampling_from": sources,
        "seed": seed,
        "guidance": guidance,
        "batch_size": batch_size,
        "device": device,
        "bootstrap": bootstrap,
        "bootstrap_seed": bootstrap_seed,
        "policies": {p.name: p.source.path or f"tiny:{p.source.tiny_seed}" for p in policies},
        "dtype": policies[0].source.dtype,
        "max_sequence_length": {p.name: p.source.sequence_length() for p in policies},
    }
    results["per_prompt"] = [
        {
            "prompt": prompt,
            "metadata": dict(meta),
            "scores": {p: {r: scores[p][r][i].tolist() for r in scores[p]} for p in scores},
        }
        for i, (prompt, meta) in enumerate(zip(prompts, metadata, strict=True))
    ]
    results["seconds"] = seconds
    results["machine"] = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    results["command"] = list(sys.argv if command is None else command)
    if out_dir is not None:
        _write_outputs(
            Path(out_dir),
            results,
            grid=grid,
            prompts=prompts[:grid_rows],
            reward=rewards[0].name,
            samples=min(grid_samples, n),
        )
    return results


def _summarise(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    *,
    policies: Sequence[PolicySpec],
    columns: Sequence[str],
    bootstrap: int,
    bootstrap_seed: int,
) -> dict[str, Any]:
    """Means, CIs and paired differences from ``scores[policy][column]`` of shape (P, n); columns are the rewards'
    :meth:`~spatialrl.rewards.Reward.components` (a reward and its diagnostics)."""
    first = policies[0].name
    num_prompts = next(iter(scores[first].values())).shape[0]
    rng = np.random.default_rng(bootstrap_seed)
    resamples = rng.integers(0, num_prompts, size=(bootstrap, num_prompts)) if bootstrap else None
    out: dict[str, Any] = {"baseline": first, "rewards": list(columns), "policies": {}, "paired": {}}
    for spec in policies:
        block = {}
        for column in columns:
            values = scores[spec.name][column]
            mean, low, high = bootstrap_mean_ci(values.mean(axis=1), resamples=resamples)
            block[column] = {
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "std": float(values.std()),
                "n": int(values.size),
            }
        out["policies"][spec.name] = {"rewards": block}
    for spec in policies[1:]:
        block = {}
        for column in columns:
            diff = scores[spec.name][column] - scores[first][column]
            mean, low, high = bootstrap_mean_ci(diff.mean(axis=1), resamples=resamples)
            block[column] = {
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "win_rate": float((diff > 0).mean()),
                "tie_rate": float((diff == 0).mean()),
            }
        out["paired"][f"{spec.name} - {first}"] = block
    return out


def _cell(stats: Mapping[str, float], *, signed: bool = False) -> str:
    text = ci_cell(stats["mean"], stats["ci_low"], stats["ci_high"], signed=signed)
    return text + (f", wins {stats['win_rate']:.2f}" if "win_rate" in stats else "")


def format_tables(results: Mapping[str, Any]) -> str:
    """Markdown: mean [95% CI] per policy (rows) and reward (columns), then the paired differences."""
    rewards = list(results["rewards"])
    rows = [[name, *(_cell(block["rewards"][r]) for r in rewards)] for name, block in results["policies"].items()]
    lines = [markdown_table(["policy", *rewards], rows).rstrip()]
    if results["paired"]:
        rows = [[name, *(_cell(block[r], signed=True) for r in rewards)] for name, block in results["paired"].items()]
        lines.append(markdown_table(["paired difference", *rewards], rows).rstrip())
    s = results["settings"]
    ci = f"95% bootstrap CI over prompts ({s['bootstrap']} resamples)" if s["bootstrap"] else "no CIs"
    lines.append(
        f"{s['prompts']} prompts x {s['samples_per_prompt']} samples, {s['num_steps']} ODE steps, "
        f"{s['height']}x{s['width']}, noise seed {s['seed']} (the same initial noise for every policy); mean [{ci}]; "
        "paired: policy minus the first policy, wins = fraction of samples where it scores higher."
    )
    return "\n\n".join(lines) + "\n"


def _write_outputs(
    out_dir: Path,
    results: Mapping[str, Any],
    *,
    grid: Mapping[str, Tensor],
    prompts: Sequence[str],
    reward: str,
    samples: int,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    listing = "\n".join(f"{i + 1}. {p}" for i, p in enumerate(prompts))
    (out_dir / "table.md").write_text(format_tables(results) + f"\ngrid.png rows:\n\n{listing}\n", encoding="utf-8")
    names = list(grid)
    images, captions = [], []
    for row in range(len(prompts)):
        for name in names:
            for k in range(samples):
                images.append(grid[name][row * samples + k])
                score = results["per_prompt"][row]["scores"][name][reward][k]
                captions.append(f"{name[:9]} {score:.2f}")
    picture = image_grid(
        images=images,
        captions=captions,
        columns=len(names) * samples,
        cell=128 if samples == 1 else 64,
        row_titles=[f"{p[:100]}  ({', '.join(names)}: {samples} sample(s) each, {reward})" for p in prompts],
    )
    Image.fromarray(picture).save(out_dir / "grid.png")


def evaluate_command(
    *,
    policy: list[str],
    prompts: str,
    reward: list[str] | None = None,
    out: Path,
    steps: PositiveInt | None = None,
    samples_per_prompt: PositiveInt = EvalConfig.samples_per_prompt,
    height: PositiveInt | None = None,
    width: PositiveInt | None = None,
    seed: int = EvalConfig.seed,
    guidance: float = SamplingConfig.guidance,
    batch_size: PositiveInt = SamplingConfig.rollout_batch,
    reward_batch_size: PositiveInt = 16,
    device: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    max_sequence_length: int | None = None,
    max_prompts: int | None = None,
    bootstrap: int = 1000,
    grid_prompts: PositiveInt = 8,
    grid_samples: PositiveInt = 1,
    no_progress: bool = False,
) -> int:
    """Sample held-out prompts from one or more FLUX policies (ODE, shared initial noise) and score them with one
    or more rewards: mean and 95% bootstrap CI, paired differences, image grid.

    Args:
        policy: policy spec (repeatable; the first is the baseline of the paired differences)
        prompts: pair manifest (.jsonl/.parquet) or text file with one prompt per line
        reward: reward spec (repeatable; default: strict, the strict judge and its diagnostics)
        out: output folder
        steps: ODE steps (default: what the policy folders recorded in spatialrl.json at export, else
            EvalConfig.num_steps)
        samples_per_prompt: samples of each prompt per policy
        height: image height (default: what the policy folders recorded at export, else SamplingConfig.height)
        width: image width (default: what the policy folders recorded at export, else SamplingConfig.width)
        seed: initial-noise seed (as eval.seed)
        guidance: FLUX guidance scale (as sampling.guidance)
        batch_size: images per sampling pass
        reward_batch_size: images per SpatialScore forward
        device: default: cuda if available
        dtype: policy dtype
        max_sequence_length: T5 prompt length (default: the one each policy folder was trained with, else 512)
        max_prompts: only the first N prompts
        bootstrap: bootstrap resamples (0: no CIs)
        grid_prompts: prompts (rows) in grid.png
        grid_samples: samples of each prompt per policy in grid.png
        no_progress: no progress bars (one per policy, over its images, on stderr)
    """
    if bootstrap < 0:
        raise UsageError("--bootstrap must be >= 0")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        policies = [parse_policy_spec(s, dtype=dtype, max_sequence_length=max_sequence_length) for s in policy]
        rewards = [parse_reward_spec(s, batch_size=reward_batch_size, device=device) for s in reward or ["strict"]]
        texts, metadata = read_prompts(prompts)
        chosen, sources = resolve_sampling(policies, height=height, width=width, num_steps=steps)
    except (SpecError, OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    if max_prompts is not None:
        texts, metadata = texts[:max_prompts], metadata[:max_prompts]
    for name, names in (("policy", [p.name for p in policies]), ("reward", [r.name for r in rewards])):
        if len(set(names)) != len(names):
            raise UsageError(f"duplicate {name} names {names}; name them with NAME=SPEC")
    print(describe_sampling(chosen, sources), file=sys.stderr, flush=True)
    results = evaluate_policies(
        policies=policies,
        prompts=texts,
        metadata=metadata,
        rewards=rewards,
        num_steps=steps,
        samples_per_prompt=samples_per_prompt,
        height=height,
        width=width,
        seed=seed,
        guidance=guidance,
        batch_size=batch_size,
        device=device,
        bootstrap=bootstrap,
        grid_prompts=grid_prompts,
        grid_samples=grid_samples,
        out_dir=out,
        command=invoked_command(),
        progress=not no_progress,
    )
    print(format_tables(results), end="")
    print(f"wrote {out}/results.json, table.md, grid.png")
    return 0


evaluate_command.epilog = "policy specs: " + "; ".join(POLICY_FORMS) + ". reward specs: " + "; ".join(REWARD_FORMS)  # type: ignore[attr-defined]


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialrl evaluate`` (:func:`evaluate_command`)."""
    return run_command(evaluate_command, argv, prog="spatialrl evaluate")

"""The data set writer (write_synthetic_dataset) and ``spatialscore synth``."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spatialscore.cli import UsageError, run_command
from spatialscore.data.manifest import check_settings
from spatialscore.data.synthetic.generate import _STAGES, FULL_STAGE
from spatialscore.data.synthetic.pairs import _checked_size, _generate
from spatialscore.files import atomic_write

# ----------------------------------------------------------------------------------------------------------
# Data set writer and CLI
# ----------------------------------------------------------------------------------------------------------


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    num_pairs: int,
    seed: int,
    image_size: int = 64,
    stages: Sequence[int] = (FULL_STAGE,),
    split: str = "train",
    palette_order: bool = False,
    show_progress: bool = True,
) -> Path:
    """Write ``2 * num_pairs`` preference records to ``out_dir/{split}.jsonl`` and PNGs to ``out_dir/images``.

    Each scene pair yields the record (perfect prompt, chosen=perfect, rejected=perturbed) and its mirror
    (perturbed prompt, chosen=perturbed, rejected=perfect), so a scorer that ignores the prompt is exactly
    at chance; stage 0, a warm-up whose prompts all say "red to the left of blue", has no mirrors. Stages are
    spread evenly over the pairs in order (a stage listed k times gets k shares). Output is byte-identical for a
    seed (with the same numpy and Pillow). Pair i is ``generate_pair(seed=(seed, i), stage=...)``; its record ids are
    ``{split}-{i:06d}`` and ``{split}-{i:06d}-mirror``; ``category`` joins the perturbation kinds with "+".
    ``palette_order`` names every pair relation in palette order (red first) at any stage (:func:`generate_pair`).

    The settings are recorded in ``out_dir/{split}.synth.json`` before anything else is written, and the manifest
    appears (atomically) only once every image is written. A rerun with the same settings finds the manifest and
    writes nothing; a rerun with other settings, or a ``{split}.jsonl`` that synth did not write (no settings
    file beside it), raises ``ValueError``: a data set is never overwritten nor mixed with stale images.
    """
    return _write_synthetic(
        out_dir,
        num_pairs=num_pairs,
        seed=seed,
        image_size=image_size,
        stages=stages,
        split=split,
        palette_order=palette_order,
        show_progress=show_progress,
    )[0]


def _write_synthetic(
    out_dir: str | Path,
    *,
    num_pairs: int,
    seed: int,
    image_size: int,
    stages: Sequence[int],
    split: str,
    palette_order: bool,
    show_progress: bool,
) -> tuple[Path, bool]:
    """:func:`write_synthetic_dataset`, and whether it wrote anything (False: the same data set was there)."""
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be positive, got {num_pairs}")
    stages = [int(s) for s in stages]
    if not stages or any(s not in _STAGES for s in stages):
        raise ValueError(f"stages must be a non-empty selection of {sorted(_STAGES)}, got {stages}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
        raise ValueError(f"split must be a plain file-name stem, got {split!r}")
    image_size = _checked_size(image_size)
    out_dir = Path(out_dir)
    manifest = out_dir / f"{split}.jsonl"
    record_path = out_dir / f"{split}.synth.json"
    if manifest.exists() and not record_path.is_file():
        raise ValueError(
            f"{manifest} was not written by spatialscore synth (there is no {record_path}): "
            f"use another --out folder or --split (or move {manifest} away)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "split": split,
        "num_pairs": num_pairs,
        "seed": int(seed),
        "image_size": image_size,
        "stages": stages,
        "palette_order": palette_order,
    }
    check_settings(
        record_path,
        settings,
        made=f"holds a {split!r} split written",
        hint=f"use another --out folder (or delete {out_dir} to write it anew)",
        defaults={"palette_order": False},  # folders written before the option
    )
    if manifest.is_file():
        return manifest, False
    (out_dir / "images").mkdir(exist_ok=True)

    def write(sink: Any) -> None:
        for index in tqdm(range(num_pairs), desc=f"synth {split}", unit="pair", disable=not show_progress):
            stage = stages[index * len(stages) // num_pairs]
            pair, perfect_image, perturbed_image = _generate(
                np.random.default_rng((seed, index)), stage, image_size, palette_order=palette_order
            )
            name = f"{split}-{index:06d}"
            paths = {}
            for role, image in (("perfect", perfect_image), ("perturbed", perturbed_image)):
                paths[role] = f"images/{name}-{role}.png"
                image.save(out_dir / paths[role], format="PNG")
            scenes = {
                role: scene.to_dict(image_size=image_size)
                for role, scene in (("perfect", pair.perfect), ("perturbed", pair.perturbed))
            }
            roles = ((False, ("perfect", "perturbed")), (True, ("perturbed", "perfect")))
            for mirror, (good, bad) in roles if _STAGES[stage].mirrored else roles[:1]:
                record = {
                    "id": f"{name}-mirror" if mirror else name,
                    "prompt": scenes[good]["prompt"],
                    "chosen": paths[good],
                    "rejected": paths[bad],
                    "subset": pair.subset,
                    "perturbed_prompt": scenes[bad]["prompt"],
                    "category": pair.category,
                    "meta": {
                        "stage": stage,
                        "mirror": mirror,
                        "seed": seed,
                        "pair_index": index,
                        "image_size": image_size,
                        **({"palette_order": True} if palette_order else {}),  # off: records byte-identical to before
                        "scene": scenes[good],
                        "rejected_scene": scenes[bad],
                    },
                }
                sink.write((json.dumps(record) + "\n").encode("utf-8"))

    atomic_write(manifest, write)
    return manifest, True


def synth_command(
    *,
    out: Path,
    num_pairs: int,
    seed: int = 0,
    image_size: int = 64,
    stages: Sequence[int] = (FULL_STAGE,),
    split: str = "train",
    palette_order: bool = False,
    no_progress: bool = False,
) -> int:
    """Write procedural spatial preference pairs (PNG + JSON Lines) and print what was written.

    Args:
        out: output folder; rerunning with the same settings writes nothing, other settings are refused
        num_pairs: scene pairs (two records each)
        seed: generation seed; the output is byte-identical for a seed
        image_size: side of the square images in pixels
        stages: curriculum stages, spread evenly over the pairs (0 = red/blue warm-up ... 4 = two objects of all
            colours ... the last = the full task, the default; a stage listed k times gets k shares)
        split: manifest name: OUT/SPLIT.jsonl
        palette_order: name the objects of every pair relation in palette order (red first) at any stage, as
            stages 0-1 do: with stage 3, red/blue left/right/above/below where only the relation word differs
            from the mirror
        no_progress: hide the progress bar
    """
    try:
        manifest, wrote = _write_synthetic(
            out,
            num_pairs=num_pairs,
            seed=seed,
            image_size=image_size,
            stages=stages,
            split=split,
            palette_order=palette_order,
            show_progress=not no_progress,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").split("\n") if line]
    if wrote:
        print(f"wrote {len(records)} records ({num_pairs} pairs, {2 * num_pairs} images) to {manifest}")
    else:
        print(f"{manifest} already holds these {len(records)} records (same settings): nothing written")
    for title, key in (("subset", "subset"), ("category", "category")):
        counts = Counter(r[key] for r in records)
        print(f"  per {title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    stage_counts = Counter(r["meta"]["stage"] for r in records)
    print("  per stage: " + ", ".join(f"{k}={v}" for k, v in sorted(stage_counts.items())))
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore synth`` (:func:`synth_command`)."""
    return run_command(synth_command, argv, prog="spatialscore synth")

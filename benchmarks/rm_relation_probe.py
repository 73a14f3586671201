"""Does a SpatialScore export read the relation, or only the objects? Pairwise accuracy on held-out generated pairs,
split by why the rejected image fails, and on edits of their chosen images: each object edit, the image mirrored
(preferred under its prompt) and the mirror reversed (the flipped image preferred under the mirrored prompt). A model
that reads the relation is right on both mirror rows; one that spots flipped renderings is right on the first only.

    python benchmarks/rm_relation_probe.py --export RUN/spatialscore/export --pairs RUN/filter/heldout.jsonl \
        --out benchmarks/results/paper/rm_relation_probe_seed0
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from spatialscore.data.images import open_rgb
from spatialscore.data.manifest import read_manifest
from spatialscore.data.negatives import MIRRORED, NEGATIVE_KINDS, edit_object, mirror_image
from spatialscore.data.strict import judge
from spatialscore.data.verify import why_wrong
from spatialscore.model import SpatialScore


def probe_rows(pairs: Path) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """(prompt, preferred image, other image) triples per probe row."""
    rows: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = defaultdict(list)
    seen = set()
    for record in read_manifest(pairs).records:
        chosen, rejected = np.asarray(open_rgb(record.chosen)), np.asarray(open_rgb(record.rejected))
        rows[f"pair: {why_wrong(judge(rejected, record.prompt))}"].append((record.prompt, chosen, rejected))
        if str(record.chosen) in seen:
            continue
        seen.add(str(record.chosen))
        mirrored = mirror_image(chosen, prompt=record.prompt)
        if mirrored is not None:
            rows[f"edit: {MIRRORED}"].append((record.prompt, chosen, mirrored[0]))
            rows[f"edit: {MIRRORED}-reversed"].append((mirrored[1], mirrored[0], chosen))
        rng = np.random.default_rng(zlib.crc32(str(record.chosen).encode()))
        for kind in NEGATIVE_KINDS:
            edited = edit_object(chosen, prompt=record.prompt, kind=kind, rng=rng)
            if edited is not None:
                rows[f"edit: {kind}"].append((record.prompt, chosen, edited))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", required=True, help="a SpatialScore export folder")
    parser.add_argument("--pairs", required=True, type=Path, help="held-out generated pairs (filter-pairs output)")
    parser.add_argument("--out", required=True, type=Path, help="output stem: OUT.json and OUT.md")
    args = parser.parse_args()
    model = SpatialScore.from_pretrained(args.export)
    results = {}
    for name, items in sorted(probe_rows(args.pairs).items()):
        prompts = [p for p, _, _ in items]
        better = model.score(prompts=prompts, images=[a for _, a, _ in items]).mu
        worse = model.score(prompts=prompts, images=[b for _, _, b in items]).mu
        accuracy = float(((better > worse).float() + 0.5 * (better == worse).float()).mean())
        results[name] = {"n": len(items), "accuracy": round(accuracy, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"export": args.export, "rows": results}, indent=2) + "\n")
    lines = [f"# Reward-model probe: {args.export}", "", "| row | n | accuracy |", "|---|---|---|"]
    lines += [f"| {name} | {row['n']} | {row['accuracy']:.3f} |" for name, row in results.items()]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Assemble the perturbation evaluation set from the raw copies in ``raw/`` (seeded, reproducible).

Writes ``prompts.jsonl`` (``id``, ``source``, ``group``, ``prompt``; ``split: "blind"`` for the blind sources) and
``to_label.txt`` (the ids drawn for hand labelling, with their dev/test split, or ``blind``). The labels themselves
are written by hand in ``labels.jsonl``. The blind sources were added after the rule engine's long-prompt fixes and
are never used to develop them: all their prompts form the ``blind`` split.
Run from the repository root: ``python benchmarks/data/perturb_prompts/build.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
RAW = HERE / "raw"

# source -> (raw file, group, prompts drawn, of them hand-labelled)
SOURCES = {
    "geneval_position": ("geneval_position.txt", "short_position", 100, 40),
    "compbench_2d": ("compbench_spatial_val.txt", "templated_2d3d", 70, 40),
    "compbench_3d": ("compbench_3d_spatial_val.txt", "templated_2d3d", 70, 40),
    "compbench_complex": ("compbench_complex_val_spatial.txt", "templated_2d3d", 40, 20),
    "lpd_long": ("lpd_bench.jsonl", "long_dense", 22, 22),
    "dpg_long": ("dpg_bench.jsonl", "long_dense", 2, 2),
    "lpd_long_blind": ("lpd_bench_blind.jsonl", "long_dense", 16, 12),
    "detailmaster_long": ("detailmaster.jsonl", "long_dense", 10, 10),
}
BLIND = {"lpd_long_blind", "detailmaster_long"}


def _read(name: str) -> list[tuple[str, str]]:
    """(line key, prompt) pairs of a raw file: line numbers for text, file names for JSONL."""
    path = RAW / name
    if name.endswith(".jsonl"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [(row["file"], row["prompt"]) for row in rows]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(f"L{i + 1}", line.strip()) for i, line in enumerate(lines) if line.strip()]


def build() -> tuple[list[dict], list[tuple[str, str]]]:
    """The evaluation prompts and the (id, split) pairs drawn for labelling."""
    prompts, to_label = [], []
    for source, (name, group, n_draw, n_label) in SOURCES.items():
        rows = _read(name)
        rng = random.Random(f"perturb-eval:{source}")
        drawn = sorted(rng.sample(range(len(rows)), n_draw)) if n_draw < len(rows) else list(range(len(rows)))
        ids = []
        for index in drawn:
            key, prompt = rows[index]
            ids.append(f"{source}:{key}")
            prompts.append({"id": ids[-1], "source": source, "group": group, "prompt": prompt})
            if source in BLIND:
                prompts[-1]["split"] = "blind"
        labelled = rng.sample(ids, n_label)
        if source in BLIND:
            to_label += [(i, "blind") for i in labelled]
            continue
        dev = set(rng.sample(labelled, len(labelled) // 2))
        to_label += [(i, "dev" if i in dev else "test") for i in labelled]
    return prompts, to_label


def main() -> None:
    prompts, to_label = build()
    with (HERE / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for row in prompts:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (HERE / "to_label.txt").write_text("".join(f"{i}\t{s}\n" for i, s in to_label), encoding="utf-8")
    print(f"{len(prompts)} prompts, {len(to_label)} to label")


if __name__ == "__main__":
    main()

"""Scoring throughput: batched ``SpatialScore.score`` against scoring one image at a time, same run.

    OMP_NUM_THREADS=1 python benchmarks/scoring.py [--images 64] [--repeats 5]

Scores the same prompts and images (encoding included) one ``score`` call per image, as a caller looping over
files does, and in batched calls of 8 and 32 (``score`` groups prompts of similar length into a batch; here
prompts of two lengths alternate, so arrival-order batches would pad half their sequences to the long prompt's
length, a cost one-by-one scoring never pays). The batched scores are first checked against the
one-by-one scores (right padding, read at each sequence's last token: only float reassociation may differ).
Variants are interleaved so that machine noise hits them alike. Models: the tiny default backbone (64 px) and
the 18 M-parameter ``bench`` backbone of benchmarks/reward_step.py (128 px). Writes
benchmarks/results/scoring.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from reward_step import BENCH, PROMPT, make_images

from spatialscore.backbone import BackboneConfig, TinyBackboneConfig
from spatialscore.model import SpatialScore, SpatialScoreConfig

MODELS = {"tiny": TinyBackboneConfig(), "bench": BENCH}
BATCHES = (8, 32)


def bench_model(name: str, tiny: TinyBackboneConfig, *, images: int, repeats: int) -> dict:
    """Median seconds of scoring ``images`` images for each variant on one model, plus the equality check."""
    model = SpatialScore.build(SpatialScoreConfig(backbone=BackboneConfig(tiny=tiny))).eval()
    # Prompts of different lengths, so batches are padded as in real use.
    prompts = [PROMPT.format(i) if i % 2 else f"a red circle left of a blue square, scene {i}" for i in range(images)]
    pictures = make_images(count=images, size=tiny.image_size, seed=0)

    def one_by_one() -> torch.Tensor:
        return torch.cat(
            [model.score(prompts=[p], images=[x], batch_size=1).mu for p, x in zip(prompts, pictures, strict=True)]
        )

    variants: dict[str, Callable[[], torch.Tensor]] = {"one_by_one": one_by_one}
    for size in BATCHES:
        variants[f"batch_{size}"] = lambda size=size: model.score(prompts=prompts, images=pictures, batch_size=size).mu
    reference = one_by_one()
    max_diff = max(float((fn() - reference).abs().max()) for fn in variants.values())
    times: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": tiny.image_size,
        "images": images,
        "median_ms": {key: value * 1e3 for key, value in median.items()},
        "images_per_s": {key: images / value for key, value in median.items()},
        "speedup_vs_one_by_one": {key: median["one_by_one"] / value for key, value in median.items()},
        "max_abs_diff_vs_one_by_one": max_diff,
        "score_scale": float(reference.abs().mean()),
        "sequence_lengths": sorted(
            {int(n) for n in model.encoder(prompts=prompts[:2], images=pictures[:2])["attention_mask"].sum(-1)}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    with torch.no_grad():
        rows = [bench_model(name, tiny, images=args.images, repeats=args.repeats) for name, tiny in MODELS.items()]
    result = {
        "benchmark": "scoring",
        "repeats": args.repeats,
        "results": rows,
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_avg": os.getloadavg(),
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoring.json").write_text(json.dumps(result, indent=2))
    keys = list(rows[0]["median_ms"])
    lines = [
        "| model | params | px | " + " | ".join(f"{k} images/s" for k in keys) + " | best speed-up | max abs diff |",
        "|---|---|---|" + "---|" * len(keys) + "---|---|",
    ]
    for row in rows:
        best = max(row["speedup_vs_one_by_one"].values())
        lines.append(
            f"| {row['model']} | {row['parameters'] / 1e6:.1f} M | {row['image_size']} | "
            + " | ".join(f"{row['images_per_s'][k]:.1f}" for k in keys)
            + f" | {best:.1f}x | {row['max_abs_diff_vs_one_by_one']:.1e} |"
        )
    lengths = "; ".join(f"{r['model']} {' and '.join(map(str, r['sequence_lengths']))}" for r in rows)
    lines += [
        "",
        f"{args.images} images, prompts of two lengths alternating (tokens: {lengths}), encoding included; "
        f"medians of {args.repeats} "
        f"interleaved runs, {torch.get_num_threads()} thread(s). Max abs diff: batched vs one-by-one scores "
        f"(mean |score| {np.mean([r['score_scale'] for r in rows]):.2f}).",
    ]
    (out / "scoring.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

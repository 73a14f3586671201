"""Collation speed: the vectorised RewardInputEncoder against the stock Qwen2.5-VL processor, same run.

    python benchmarks/collation.py [--images 64] [--size 64] [--patch 8] [--repeats 30]

Both encode the same prompts and images (and are checked to give identical tensors first); timings interleave
the two variants so that machine noise hits both alike. Writes benchmarks/results/collation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spatialscore.backbone import BackboneConfig, TinyBackboneConfig, load_processor, resolve_backbone_path
from spatialscore.encode import PromptTemplate, RewardInputEncoder, processor_encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images per batch (2 x pairs)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--patch", type=int, default=8, help="vision patch size of the tiny backbone")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    tiny = TinyBackboneConfig(patch_size=args.patch, image_size=args.size)
    processor = load_processor(resolve_backbone_path(BackboneConfig(tiny=tiny)))
    template = PromptTemplate()
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)) for _ in range(args.images)
    ]
    prompts = [f"a red circle to the left of a blue square; scene {i // 2}" for i in range(args.images)]
    encoder = RewardInputEncoder(processor, template=template)

    ours = encoder(prompts=prompts, images=images)
    ref = processor_encode(processor, template=template, prompts=prompts, images=images)
    identical = all(torch.equal(ours[k], ref[k]) for k in ref)

    times: dict[str, list[float]] = {"vectorised": [], "processor": []}
    for _ in range(args.repeats):
        for name, fn in (
            ("vectorised", lambda: encoder(prompts=prompts, images=images)),
            ("processor", lambda: processor_encode(processor, template=template, prompts=prompts, images=images)),
        ):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    result = {
        "benchmark": "collation",
        "images_per_batch": args.images,
        "image_size": args.size,
        "patch_size": args.patch,
        "repeats": args.repeats,
        "bit_identical": identical,
        "median_ms": median,
        "speedup": median["processor"] / median["vectorised"],
        "machine": {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "collation.json").write_text(json.dumps(result, indent=2))
    table = (
        f"| variant | median ms / {args.images} images ({args.size}px) |\n|---|---|\n"
        f"| stock processor | {median['processor']:.1f} |\n| vectorised encoder | {median['vectorised']:.1f} |\n\n"
        f"speed-up {result['speedup']:.1f}x, bit-identical: {identical}\n"
    )
    (out / "collation.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

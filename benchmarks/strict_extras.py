"""What does the strict judge count as extra in a policy's images? Samples every held-out prompt (the evaluation's
seed-999 noise, 20 Euler steps), judges each image, and tallies every extra object (``Judgement.extras``) by colour
and size: a named colour's components beyond its largest, a component of an unnamed palette colour, or one of
off-palette ("unmatched") pixels; "small" is under 2% of the image, "large" over 30%. Writes the tally (Markdown)
and a grid of the images with extras.

    python benchmarks/strict_extras.py --policy RUN/rl-spatialscore/policy --prompts RUN/prompts/heldout.txt \
        --out benchmarks/results/paper/strict_extras_wide_seed1
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spatialrl.evaluate import parse_policy_spec
from spatialrl.rollout import ode_images
from spatialscore.data.strict import judge


def size_label(area: float) -> str:
    """``small`` under 2% of the image, ``large`` over 30%, else ``medium``."""
    return "large" if area > 0.3 else "small" if area < 0.02 else "medium"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="an exported policy folder")
    parser.add_argument("--prompts", required=True, help="a text file, one prompt per line")
    parser.add_argument("--out", required=True, help="output prefix: OUT.md and OUT.png")
    parser.add_argument("--samples", type=int, default=16, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=999)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    prompts = [line for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    policy = parse_policy_spec(f"policy={args.policy}").source.load(device="cpu")
    batches = ode_images(
        policy,
        prompts=prompts,
        samples_per_prompt=args.samples,
        seed=args.seed,
        num_steps=20,
        height=args.size,
        width=args.size,
        guidance=3.5,
        batch_size=64,
    )
    images = (torch.cat(list(batches)).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    flat = [p for p in prompts for _ in range(args.samples)]
    tally: Counter[str] = Counter()
    correct = with_extra = 0
    shown = []
    for image, prompt in zip(images, flat, strict=True):
        judgement = judge(image, prompt)
        correct += judgement.correct
        if judgement.has_extra:
            with_extra += 1
            tally.update(f"{obj.colour}/{size_label(obj.detection.area)}" for obj in judgement.extras)
            if len(shown) < 32:
                shown.append(image)
    lines = [
        f"# Extra objects by the strict judge: {args.policy}",
        "",
        f"{len(flat)} images ({len(prompts)} prompts x {args.samples}, seed {args.seed}): strict accuracy "
        f"{correct / len(flat):.3f}, images with extra objects {with_extra / len(flat):.3f}",
        "",
        "| extra object (colour/size) | count |",
        "|---|---:|",
        *(f"| {label} | {count} |" for label, count in tally.most_common()),
        "",
    ]
    Path(f"{args.out}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if shown:
        rows = [
            np.concatenate(shown[i : i + 8] + [np.zeros_like(shown[0])] * (8 - len(shown[i : i + 8])), 1)
            for i in range(0, len(shown), 8)
        ]
        grid = np.concatenate(rows, 0)
        Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(f"{args.out}.png")


if __name__ == "__main__":
    main()

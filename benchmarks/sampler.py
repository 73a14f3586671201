"""Sampler overhead: the rollout sampler (spatialrl.rollout.sample) against diffusers' FluxPipeline, same run.

    python benchmarks/sampler.py [--repeats 20] [--steps 8] [--batch 4]

Both samplers run the same components, prompts, initial latents and step count (the ODE rollout is first
checked to give FluxPipeline's images). Prompt embeddings are precomputed for both, so the timing covers the
sampling loop and VAE decode only. Variants are interleaved so that machine noise hits them alike. Models: the
default tiny FLUX, and a larger random transformer (2.3 M parameters, 64px). Writes
benchmarks/results/sampler.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spatialrl.flux import FluxPolicy, TinyFluxConfig, build_tiny_flux
from spatialrl.rollout import sample

MODELS = {
    "tiny": (TinyFluxConfig(), 32),
    "medium": (
        TinyFluxConfig(layers=2, single_layers=4, heads=4, head_dim=32, axes_dims_rope=(8, 12, 12)),
        64,
    ),
}


def bench_model(name: str, folder: Path, *, size: int, steps: int, batch: int, repeats: int) -> dict:
    """Median seconds per batch for each sampler variant on one model, plus the equality check."""
    policy = FluxPolicy.from_pretrained(folder, dtype=torch.float32, max_sequence_length=32)
    pipe = policy.pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"a red circle left of a blue square, scene {i}" for i in range(batch)]
    embeds, pooled = policy.encode_prompts(prompts)
    tokens = (size // 16) ** 2
    noise = torch.randn(batch, tokens, 4 * policy.latent_channels, generator=torch.Generator().manual_seed(0))
    common = {"prompts": prompts, "height": size, "width": size, "num_steps": steps, "initial_noise": noise}

    def pipeline() -> torch.Tensor:
        return pipe(
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=3.5,
            latents=noise,
            output_type="pt",
        ).images

    variants: dict[str, Callable[[], object]] = {
        "pipeline": pipeline,
        "rollout_ode": lambda: sample(policy, noise_level=0.0, sde_steps=[], **common),
        "rollout_sde": lambda: sample(policy, noise_level=0.9, generator=torch.Generator().manual_seed(0), **common),
    }
    max_abs_diff = (sample(policy, noise_level=0.0, **common).images - pipeline()).abs().max().item()
    times: dict[str, list[float]] = {key: [] for key in variants}
    with torch.no_grad():
        for _ in range(repeats):
            for key, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    median = {key: statistics.median(values) * 1000 for key, values in times.items()}
    return {
        "model": name,
        "transformer_params": sum(p.numel() for p in policy.transformer.parameters()),
        "image_size": size,
        "image_tokens": tokens,
        "steps": steps,
        "batch": batch,
        "repeats": repeats,
        "ode_max_abs_diff_vs_pipeline": max_abs_diff,
        "median_ms": median,
        "ratio_ode_over_pipeline": median["rollout_ode"] / median["pipeline"],
        "ratio_sde_over_pipeline": median["rollout_sde"] / median["pipeline"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, size) in MODELS.items():
            folder = build_tiny_flux(Path(tmp) / name, seed=0, config=config)
            rows.append(bench_model(name, folder, size=size, steps=args.steps, batch=args.batch, repeats=args.repeats))
    result = {
        "benchmark": "sampler",
        "results": rows,
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampler.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| model | params | px | FluxPipeline ms | rollout ODE ms | rollout SDE ms | ODE / pipeline | "
        "SDE / pipeline | max abs diff |\n|---|---|---|---|---|---|---|---|---|"
    ]
    for row in rows:
        ms = row["median_ms"]
        lines.append(
            f"| {row['model']} | {row['transformer_params']:,} | {row['image_size']} | {ms['pipeline']:.1f} | "
            f"{ms['rollout_ode']:.1f} | {ms['rollout_sde']:.1f} | {row['ratio_ode_over_pipeline']:.2f} | "
            f"{row['ratio_sde_over_pipeline']:.2f} | {row['ode_max_abs_diff_vs_pipeline']:.1e} |"
        )
    table = (
        "\n".join(lines) + f"\n\n{args.batch} images x {args.steps} steps, median of {args.repeats} interleaved runs, "
        f"{torch.get_num_threads()} thread(s); prompt embeddings precomputed for both. The SDE rollout also "
        "records latents, means and log-probs of all but the last step.\n"
    )
    (out / "sampler.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

"""Top-k group filtering: training passes and wall-clock per GRPO step, k=6 of G=24 against no filtering.

    python benchmarks/topk.py [--steps 3] [--repeats 3] [--prompts 2]
    python benchmarks/topk.py --model flux-dev --device cuda --dtype bfloat16 --size 512   # on a GPU machine

Both variants run FluxGRPOModule with the same policy, prompts, seeds, sampler (6 steps, 5 trained) and
micro-batch; only ``grpo.filter`` differs. Runs alternate between variants so machine noise hits both alike.
"Passes" counts training forward+backward calls of the transformer per step (the rollout's forward passes are
the same for both). Model: a random 2.3 M-parameter FLUX transformer at 64 px (the "medium" model of
benchmarks/sampler.py), or ``--model flux-dev``: FLUX.1-dev's transformer widths (3072 wide, 24 heads of 128,
rope axes 16/56/56, T5 width 4096, CLIP 768, 16 latent channels, its VAE widths) with random weights and
``--double-layers``/``--single-layers`` blocks (19/38 is the full 12 B model; fewer make the path runnable on a
CPU). Writes benchmarks/results/topk[_<model>_<device>].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import lightning as L
import torch

from spatialrl.config import EvalConfig, GRPOConfig, SamplingConfig
from spatialrl.flux import FluxSource, TinyFluxConfig
from spatialrl.lora import FluxLoraConfig
from spatialrl.module import FluxGRPOModule
from spatialrl.rewards import RuleReward
from spatialscore.data.datamodule import PreferenceDataModule, SyntheticData

MEDIUM = TinyFluxConfig(layers=2, single_layers=4, heads=4, head_dim=32, axes_dims_rope=(8, 12, 12))


def flux_dev_config(*, double_layers: int = 19, single_layers: int = 38) -> TinyFluxConfig:
    """FLUX.1-dev's published transformer/VAE/text widths with ``double_layers`` + ``single_layers`` blocks."""
    return TinyFluxConfig(
        layers=double_layers,
        single_layers=single_layers,
        heads=24,
        head_dim=128,
        axes_dims_rope=(16, 56, 56),
        latent_channels=16,
        vae_channels=(128, 256, 512, 512),
        t5_dim=4096,
        clip_dim=768,
    )


class StepTimes(L.Callback):
    """Per-step logged seconds and pass counts."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        m = trainer.callback_metrics
        self.rows.append(
            {k: float(m[f"train/{k}"]) for k in ("passes", "seconds_rollout", "seconds_reward", "seconds_update")}
        )


def run(
    variant: str,
    data: SyntheticData,
    *,
    steps: int,
    prompts: int,
    sde_steps: list[int] | None = None,
    model: TinyFluxConfig = MEDIUM,
    size: int = 64,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[dict[str, float]]:
    """Logged per-step seconds and pass counts of ``steps`` GRPO steps with ``grpo.filter=variant`` and the
    trained-step window ``sde_steps`` (None: all but the last), the first step (one-off costs) dropped."""
    module = FluxGRPOModule(
        policy=FluxSource(tiny=model, max_sequence_length=32, dtype=dtype),
        reward=RuleReward(),
        lora=FluxLoraConfig(rank=16),
        sampling=SamplingConfig(height=size, width=size, num_steps=6, rollout_batch=24, sde_steps=sde_steps),
        grpo=GRPOConfig(group_size=24, k=6, filter=variant, micro_batch=4, kl_beta=0.01),
        eval=EvalConfig(at_start=False),
        seed=0,
    )
    times = StepTimes()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[times],
    )
    trainer.fit(module, PreferenceDataModule(synthetic=data, batch_size=prompts, view="prompts"))
    return times.rows[1:]  # the first step pays one-off costs (prompt encoding, allocations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--model", choices=["medium", "flux-dev"], default="medium")
    parser.add_argument("--double-layers", type=int, default=19, help="flux-dev only")
    parser.add_argument("--single-layers", type=int, default=38, help="flux-dev only")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--out", default=None, help="output path without suffix (default: benchmarks/results/topk...)")
    args = parser.parse_args()
    model = (
        MEDIUM
        if args.model == "medium"
        else flux_dev_config(double_layers=args.double_layers, single_layers=args.single_layers)
    )
    suffix = "" if args.model == "medium" and args.device == "cpu" else f"_{args.model}_{args.device}"
    args.out = args.out or str(Path(__file__).parent / "results" / f"topk{suffix}")
    setting = {"model": model, "size": args.size, "device": args.device, "dtype": args.dtype}
    folder = tempfile.mkdtemp()
    data = SyntheticData(directory=folder, train_pairs=16, val_pairs=0, test_pairs=0, stages=(1,), eval_stages=(1,))
    rows: dict[str, list[dict[str, float]]] = {"topk": [], "none": []}
    for _ in range(args.repeats):
        for variant in rows:
            rows[variant] += run(variant, data, steps=args.steps + 1, prompts=args.prompts, **setting)
    result = {
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "model": args.model,
        "size": args.size,
        "device": args.device,
        "dtype": args.dtype,
        "prompts": args.prompts,
        "group_size": 24,
        "k": 6,
        "trained_steps": 5,
    }
    for variant, values in rows.items():
        result[variant] = {k: statistics.median(r[k] for r in values) for k in values[0]}
        result[variant]["step"] = statistics.median(
            r["seconds_rollout"] + r["seconds_reward"] + r["seconds_update"] for r in values
        )
    top, full = result["topk"], result["none"]
    result["ratios"] = {k: top[k] / full[k] for k in ("passes", "seconds_update", "step")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    r = result["ratios"]
    lines = [
        "| variant | training passes / step | update s | rollout s | reward s | step s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {v['passes']:.0f} | {v['seconds_update']:.2f} | {v['seconds_rollout']:.2f} | "
            f"{v['seconds_reward']:.3f} | {v['step']:.2f} |"
            for name, v in (("top-k (k=6 of 24)", top), ("no filtering", full))
        ),
        f"| **ratio** | **{r['passes']:.2f}** | **{r['seconds_update']:.2f}** | | | **{r['step']:.2f}** |",
        "",
        f"{args.prompts} prompts x G=24, 6 sampling steps (5 trained), micro-batch 4, LoRA rank 16, model "
        f"{args.model} at {args.size} px on {args.device} ({args.dtype}); "
        f"medians over {args.repeats} x {args.steps} interleaved steps, "
        f"{result['threads']} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

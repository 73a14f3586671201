"""Reward-model training step: pairs/s of one SpatialScore step under each lever, and the FLOP/s it achieves.

    OMP_NUM_THREADS=1 python benchmarks/reward_step.py [--pairs 8] [--repeats 5]
    python benchmarks/reward_step.py --device cuda --model 7b [--pairs 8]     # bf16 Qwen2.5-VL-7B, random weights
    OMP_NUM_THREADS=1 python benchmarks/reward_step.py --model 7b --layers 1 --pairs 1 --repeats 1 --image-size 224

One step = encode a batch of B (prompt, chosen, rejected) triples, score, Bradley-Terry loss, backward, AdamW.
Variants, each changing one thing from ``baseline`` (chosen+rejected fused into one forward of 2B sequences,
vectorised encoder, LoRA rank 16 on the language model, no activation checkpointing, fp32 weights on CPU and
bf16 on CUDA): ``two_forwards`` (a forward of B chosen and one of B rejected, as HPSv3/VideoAlign do),
``processor`` (the stock Qwen2.5-VL processor instead of RewardInputEncoder), ``full_ft`` (the whole language
model trained, no LoRA), ``checkpointing`` (activation checkpointing on, as SpatialScoreConfig sets it),
``checkpointing_fixed`` (the same without transformers' input-grad hooks, see :func:`make_variants`), ``bf16``
(bf16 weights on CPU).
Variants run interleaved, round after round, in an order rotated each round, so machine noise (and CPU clock
changes after bf16/AMX work) hits all alike; medians are reported. ``baseline`` and ``processor`` run the same
model on the same inputs, so their model times differ only by noise: a built-in control.

FLOPs of forward+backward are counted once per variant by ``torch.utils.flop_counter.FlopCounterMode`` (with a
formula added for the CPU flash-attention kernel, which it does not know) and divided by the median model time
(encode excluded): achieved FLOP/s, as a fraction of the matmul peak measured in the same run (a 2048^2 GEMM in
fp32 and bf16 on CPU; 8192^2 bf16 on CUDA, besides the H100/H200 datasheet's 989 TFLOP/s dense bf16).
Checkpointing recomputes the forward: its counted FLOPs include the recompute ("hardware" FLOPs), its MFU uses
the baseline's ("model" FLOPs).

Models: ``bench`` (default), a random Qwen2.5-VL of 18 M parameters with 128 px images (64 visual tokens each),
big enough that matmuls dominate; ``7b``, Qwen2.5-VL-7B's published architecture with random weights (built in
memory; ``--layers N`` keeps N text layers and N vision blocks so the path runs on a CPU). Writes
benchmarks/results/reward_step[_MODEL_DEVICE].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import flop_counter
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from spatialscore.backbone import (
    BackboneConfig,
    SpatialProcessor,
    TinyBackboneConfig,
    add_reward_token,
    build_tiny_tokenizer,
)
from spatialscore.encode import processor_encode
from spatialscore.losses import bradley_terry_loss
from spatialscore.model import RewardLoraConfig, SpatialScore, SpatialScoreConfig

BENCH = TinyBackboneConfig(
    text_hidden_size=512,
    text_layers=4,
    text_heads=8,
    text_kv_heads=4,
    text_intermediate_size=1408,
    vision_hidden_size=256,
    vision_depth=4,
    vision_heads=4,
    vision_intermediate_size=640,
    patch_size=8,
    image_size=128,
)

# Qwen/Qwen2.5-VL-7B-Instruct config.json (text model and vision tower).
QWEN2_5_VL_7B_TEXT: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN2_5_VL_7B_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "hidden_act": "silu",
    "in_chans": 3,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
HPSV3_PIXELS = 256 * 28 * 28  # 256 visual tokens per image (HPSv3's fixed budget)
H100_BF16_DENSE = 989e12  # H100/H200 SXM datasheet, dense bf16 tensor-core FLOP/s

VARIANTS = {
    "baseline": "fused 2B forward, vectorised encoder, LoRA r16",
    "two_forwards": "forward B chosen + forward B rejected",
    "processor": "stock Qwen2.5-VL processor",
    "full_ft": "full fine-tune of the language model",
    "checkpointing": "activation checkpointing on (SpatialScoreConfig.activation_checkpointing)",
    "checkpointing_fixed": "checkpointing without transformers' input-grad hooks",
    "bf16": "bf16 weights (CPU)",
}
PROMPT = (
    "a red circle to the left of a blue square; a green star above the blue square; a yellow triangle "
    "in the lower-right corner; from left to right: a cyan diamond, a purple ring and an orange cup; "
    "a gray cube behind the red circle, scene {}"
)


def qwen2_5_vl_7b_config(*, tokenizer: Any, layers: int | None = None) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B's architecture with ``tokenizer``'s special-token ids; ``layers`` keeps only that many text
    layers and vision blocks (full attention in the last one), for running the 7B path on a small machine."""
    text, vision = dict(QWEN2_5_VL_7B_TEXT), dict(QWEN2_5_VL_7B_VISION)
    if layers is not None:
        text["num_hidden_layers"], vision["depth"] = layers, layers
        vision["fullatt_block_indexes"] = [i for i in vision["fullatt_block_indexes"] if i < layers] or [layers - 1]
    ids = {
        f"{name}_token_id": tokenizer.convert_tokens_to_ids(f"<|{token}|>")
        for name, token in (
            ("image", "image_pad"),
            ("video", "video_pad"),
            ("vision_start", "vision_start"),
            ("vision_end", "vision_end"),
        )
    }
    text.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **ids,
    )


def qwen2_5_vl_7b_processor() -> SpatialProcessor:
    """The project's offline tokenizer (with the reward token) and a Qwen2.5-VL image processor at HPSv3's
    256-token budget: the real model's inputs in shape, not in vocabulary."""
    tokenizer = build_tiny_tokenizer()
    add_reward_token(tokenizer)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=HPSV3_PIXELS, max_pixels=HPSV3_PIXELS
    )
    return SpatialProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(
    *, model: str, layers: int | None, dtype: torch.dtype, device: str, lora_rank: int, checkpointing: bool
) -> SpatialScore:
    """A SpatialScore in training mode: ``bench`` through the project's tiny-checkpoint loader, ``7b`` in memory."""
    settings = {"lora": RewardLoraConfig(rank=lora_rank), "activation_checkpointing": checkpointing}
    if model == "bench":
        dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
        config = SpatialScoreConfig(backbone=BackboneConfig(tiny=BENCH, dtype=dtype_name), **settings)
        return SpatialScore.build(config).to(device).train()
    processor = qwen2_5_vl_7b_processor()
    config = qwen2_5_vl_7b_config(tokenizer=processor.tokenizer, layers=layers)
    with torch.device(device):
        backbone = Qwen2_5_VLModel._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return SpatialScore(backbone, processor, SpatialScoreConfig(**settings)).to(device).train()


def gemm_flops_per_s(*, dtype: torch.dtype, device: str, size: int, tries: int = 3) -> float:
    """Best FLOP/s of ``tries`` ``size``^2 GEMMs (after one untimed): one sample of the matmul peak, taken
    between training rounds so that it sees the same machine load as they do."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(tries):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
}


@dataclass
class Variant:
    """One benchmarked configuration: a model (possibly shared), how the step runs, and its measurements."""

    name: str
    model: SpatialScore
    optimizer: torch.optim.Optimizer
    fused: bool = True
    encoder: str = "vectorised"
    checkpointing: bool = False


def make_variants(args: argparse.Namespace, names: list[str]) -> list[Variant]:
    """Build the models: variants that differ only in how the step runs share the baseline's model.

    ``checkpointing_fixed`` removes the forward hooks that transformers' ``activation_checkpointing_enable`` puts
    on every input embedding, the vision tower's patch embedding included: they make the frozen tower's
    activations require grad, so it is recomputed and back-propagated for nothing (non-reentrant checkpointing
    does not need them; the LoRA gradients are identical without them).
    """
    base_dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32

    def new(dtype: torch.dtype = base_dtype, rank: int = 16, checkpointing: bool = False) -> dict[str, Any]:
        model = build_model(
            model=args.model,
            layers=args.layers,
            dtype=dtype,
            device=args.device,
            lora_rank=rank,
            checkpointing=checkpointing,
        )
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        return {"model": model, "optimizer": optimizer, "checkpointing": checkpointing}

    shared = new()
    variants = []
    for name in names:
        if name == "full_ft":
            variants.append(Variant(name, **new(rank=0)))
        elif name == "bf16":
            variants.append(Variant(name, **new(dtype=torch.bfloat16)))
        elif name.startswith("checkpointing"):
            variants.append(Variant(name, **new(checkpointing=True)))
            if name == "checkpointing_fixed":
                variants[-1].model.backbone.disable_input_require_grads()
        else:
            variants.append(
                Variant(
                    name,
                    **shared,
                    fused=name != "two_forwards",
                    encoder="processor" if name == "processor" else "vectorised",
                )
            )
    return variants


def make_images(*, count: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def encode(variant: Variant, prompts: list[str], images: list[np.ndarray]) -> dict[str, torch.Tensor]:
    model = variant.model
    if variant.encoder == "processor":
        return processor_encode(model.processor, template=model.config.template, prompts=prompts, images=images)
    return model.encoder(prompts=prompts, images=images)


def run_step(
    variant: Variant, *, step: int, pairs: int, image_size: int, device: str, counter: Callable | None = None
) -> tuple[float, float]:
    """One training step on fresh prompts (no tokenizer-cache hits); returns (encode seconds, model seconds).

    With ``counter`` (a FlopCounterMode), forward and backward run inside it and nothing is timed for real.
    """
    prompts = [PROMPT.format(f"{step}-{i}") for i in range(pairs)]
    chosen = make_images(count=pairs, size=image_size, seed=2 * step)
    rejected = make_images(count=pairs, size=image_size, seed=2 * step + 1)
    start = time.perf_counter()
    if variant.fused:
        batches = [encode(variant, prompts + prompts, chosen + rejected)]
    else:
        batches = [encode(variant, prompts, chosen), encode(variant, prompts, rejected)]
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    encoded = time.perf_counter()
    with counter if counter is not None else nullcontext():
        mus = [variant.model(**batch).mu for batch in batches]
        mu = torch.cat(mus)
        loss = bradley_terry_loss(chosen=mu[:pairs], rejected=mu[pairs:])
        loss.backward()
    variant.optimizer.step()
    variant.optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    done = time.perf_counter()
    return encoded - start, done - encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["bench", "7b"], default="bench")
    parser.add_argument("--layers", type=int, default=None, help="7b only: keep N text layers and vision blocks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=8, help="preference pairs per step (2x sequences)")
    parser.add_argument("--image-size", type=int, default=None, help="default: 128 (bench), 448 (7b)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=None,
        help="default: all on CPU; all but full_ft and bf16 on CUDA",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile 2 steps of baseline and bf16 with torch.profiler (reward_step_profile.md)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    image_size = args.image_size or (BENCH.image_size if args.model == "bench" else 448)
    names = args.variants or [n for n in VARIANTS if not (cuda and n in ("full_ft", "bf16"))]
    if "baseline" not in names:
        names.insert(0, "baseline")

    variants = make_variants(args, names)
    common = {"pairs": args.pairs, "image_size": image_size, "device": args.device}
    flops = {}
    for v in variants:
        counter = flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
        run_step(v, step=args.repeats, counter=counter, **common)  # also the warm-up
        flops[v.name] = counter.get_total_flops()
    gemms = {"bf16": torch.bfloat16} if cuda else {"fp32": torch.float32, "bf16": torch.bfloat16}
    times: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
    samples: dict[str, list[float]] = {name: [] for name in gemms}
    for step in range(args.repeats):
        for i in range(len(variants)):  # the order rotates each round: no variant always follows another
            v = variants[(i + step) % len(variants)]
            times[v.name].append(run_step(v, step=step, **common))
        for name, dtype in gemms.items():
            samples[name].append(gemm_flops_per_s(dtype=dtype, device=args.device, size=8192 if cuda else 2048))
    peaks = {name: statistics.median(values) for name, values in samples.items()}
    if cuda:
        peaks["bf16_datasheet"] = H100_BF16_DENSE

    base = variants[0]
    rows = []
    for v in variants:
        enc = statistics.median(t[0] for t in times[v.name])
        mod = statistics.median(t[1] for t in times[v.name])
        model_flops = flops["baseline"] if v.checkpointing else flops[v.name]
        rows.append(
            {
                "variant": v.name,
                "change": VARIANTS[v.name],
                "encode_ms": enc * 1e3,
                "model_ms": mod * 1e3,
                "model_ms_all": [t[1] * 1e3 for t in times[v.name]],
                "pairs_per_s": args.pairs / (enc + mod),
                "gflop_counted": flops[v.name] / 1e9,
                "model_gflop_per_s": model_flops / mod / 1e9,
                "mfu": {name: model_flops / mod / peak for name, peak in peaks.items()},
            }
        )
    speed = {r["variant"]: r["pairs_per_s"] for r in rows}
    for r in rows:
        r["speed_vs_baseline"] = r["pairs_per_s"] / speed[base.name]
    model = base.model
    result = {
        "benchmark": "reward_step",
        "model": args.model,
        "layers": args.layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_lora": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "pairs": args.pairs,
        "image_size": image_size,
        "sequence_length": int(
            model.encoder(prompts=[PROMPT.format(0)], images=make_images(count=1, size=image_size, seed=0))[
                "attention_mask"
            ].sum()
        ),
        "repeats": args.repeats,
        "device": args.device,
        "peak_gflop_per_s": {k: v / 1e9 for k, v in peaks.items()},
        "results": rows,
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_avg": os.getloadavg(),
            "gpu": torch.cuda.get_device_name() if cuda else None,
        },
    }
    suffix = (
        "" if args.model == "bench" and not cuda else f"_{args.model}{args.layers or ''}_{args.device.split(':')[0]}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"reward_step{suffix}.json").write_text(json.dumps(result, indent=2))
    peak_names = list(peaks)
    lines = [
        "| variant | change | encode ms | model ms (min-max) | pairs/s | vs baseline | GFLOP counted "
        "| achieved GFLOP/s | " + " | ".join(f"MFU vs {p}" for p in peak_names) + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(peak_names),
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['change']} | {r['encode_ms']:.1f} | {r['model_ms']:.0f} "
            f"({min(r['model_ms_all']):.0f}-{max(r['model_ms_all']):.0f}) | {r['pairs_per_s']:.2f} | "
            f"{r['speed_vs_baseline']:.2f} | {r['gflop_counted']:.1f} | {r['model_gflop_per_s']:.1f} | "
            + " | ".join(f"{100 * r['mfu'][p]:.1f}%" for p in peak_names)
            + " |"
        )
    lines += [
        "",
        f"Model {args.model}{f' ({args.layers} layers)' if args.layers else ''}: {result['parameters'] / 1e6:.1f} M "
        f"parameters, {args.pairs} pairs per step ({2 * args.pairs} sequences of ~{result['sequence_length']} tokens, "
        f"{image_size} px images), {args.device}, {result['machine']['threads']} thread(s); medians of "
        f"{args.repeats} interleaved rounds. Matmul peak (median over rounds of the best of 3 GEMMs): "
        + ", ".join(f"{p} {v / 1e9:,.0f} GFLOP/s" for p, v in peaks.items())
        + ". Achieved = counted FLOPs of forward+backward (the baseline's for checkpointing) / model time.",
    ]
    (out / f"reward_step{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.profile:
        tables = [profile_steps(v, **common) for v in variants if v.name in ("baseline", "bf16")]
        (out / f"reward_step{suffix}_profile.md").write_text("\n".join(tables))
        print("\n".join(tables))


def op_category(name: str) -> str:
    """Coarse kind of an ATen operator, for the profile summary."""
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
        return "matmul"
    if "scaled_dot_product" in name:
        return "attention"
    if "convolution" in name:
        return "convolution (patch embed)"
    if "_foreach" in name:
        return "optimizer"
    return "other (elementwise, copies, norms, ...)"


def profile_steps(variant: Variant, *, pairs: int, image_size: int, device: str, steps: int = 2) -> str:
    """torch.profiler over ``steps`` training steps: self time per category and the top operators (Markdown)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for step in range(steps):
            run_step(variant, step=1000 + step, pairs=pairs, image_size=image_size, device=device)
    events = prof.key_averages()
    key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events)
    categories: dict[str, float] = {}
    for e in events:
        categories[op_category(e.key)] = categories.get(op_category(e.key), 0.0) + getattr(e, key)
    lines = [
        f"### {variant.name}: {total / 1e3 / steps:.0f} ms of operator self time per step",
        "",
        "| category | ms / step | share |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {value / 1e3 / steps:.1f} | {100 * value / total:.1f}% |"
        for name, value in sorted(categories.items(), key=lambda item: -item[1])
    ]
    lines += ["", "| operator | calls / step | self ms / step | share |", "|---|---|---|---|"]
    for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:12]:
        value = getattr(e, key)
        lines.append(f"| `{e.key}` | {e.count // steps} | {value / 1e3 / steps:.1f} | {100 * value / total:.1f}% |")
    return "\n".join(lines) + f"\n\n{steps} steps profiled with torch.profiler, self time per operator ({key}).\n"


if __name__ == "__main__":
    main()

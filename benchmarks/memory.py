"""Peak memory of the reward-model training step: fp32, bf16 and 4-bit QLoRA, each in a fresh process.

    OMP_NUM_THREADS=1 python benchmarks/memory.py [--pairs 2] [--steps 2]
    python benchmarks/memory.py --device cuda --model 7b                  # Qwen2.5-VL-7B architecture, random
    OMP_NUM_THREADS=1 python benchmarks/memory.py --model 7b --layers 1 --pairs 1 --steps 1 --variants bf16

Every variant loads its backbone through the project's loader (``load_backbone``: dtype, bitsandbytes NF4
quantization with bf16 compute for QLoRA), adds LoRA rank 16, and runs ``--steps`` training steps of
benchmarks/reward_step.py (fused chosen+rejected forward, BT loss, backward, AdamW). On CPU, memory is the
process's resident set: the peak (``ru_maxrss``) and the size after loading, each minus the process's RSS
after imports, measured in a fresh subprocess per variant so no variant inherits another's high-water mark.
On CUDA, ``torch.cuda.max_memory_allocated``. Models: a random 90 M-parameter Qwen2.5-VL checkpoint (``mem``,
written to a temporary folder), or Qwen2.5-VL-7B's architecture (``7b``; ``--layers N`` keeps N layers).
Writes benchmarks/results/memory[_MODEL_DEVICE].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from reward_step import Variant, qwen2_5_vl_7b_config, qwen2_5_vl_7b_processor, run_step
from transformers import Qwen2_5_VLForConditionalGeneration

from spatialscore.backbone import BackboneConfig, TinyBackboneConfig, build_tiny_checkpoint
from spatialscore.model import SpatialScore, SpatialScoreConfig

MEM = TinyBackboneConfig(
    text_hidden_size=1024,
    text_layers=8,
    text_heads=16,
    text_kv_heads=4,
    text_intermediate_size=2816,
    vision_hidden_size=256,
    vision_depth=4,
    vision_heads=4,
    vision_intermediate_size=640,
    patch_size=8,
    image_size=128,
)
VARIANTS = {
    "fp32": {"dtype": "float32", "quantization": None},
    "bf16": {"dtype": "bfloat16", "quantization": None},
    "qlora_4bit": {"dtype": "bfloat16", "quantization": "4bit"},
}
MIB = 2**20


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident set (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_checkpoint(directory: Path, *, model: str, layers: int | None) -> Path:
    """A random checkpoint folder the project's loader reads: ``mem`` (tiny builder) or ``7b`` (bf16 weights)."""
    if model == "mem":
        return build_tiny_checkpoint(MEM, directory)
    processor = qwen2_5_vl_7b_processor()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        full = Qwen2_5_VLForConditionalGeneration._from_config(
            qwen2_5_vl_7b_config(tokenizer=processor.tokenizer, layers=layers), dtype=torch.bfloat16
        )
    full.save_pretrained(str(directory))
    processor.tokenizer.save_pretrained(str(directory))
    processor.image_processor.save_pretrained(str(directory))
    return directory


def child(args: argparse.Namespace) -> dict:
    """Load one variant and train ``args.steps`` steps in this (fresh) process; return its memory figures."""
    cuda = args.device.startswith("cuda")
    base_rss = rss_bytes()
    backbone = BackboneConfig(path=args.checkpoint, **VARIANTS[args.child])
    model = SpatialScore.build(SpatialScoreConfig(backbone=backbone)).to(args.device).train()
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    loaded_rss, loaded_cuda = rss_bytes(), torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    variant = Variant(args.child, model, optimizer)
    image_size = args.image_size or (MEM.image_size if args.model == "mem" else 448)
    for step in range(args.steps):
        run_step(variant, step=step, pairs=args.pairs, image_size=image_size, device=args.device)
    out = {
        "variant": args.child,
        **VARIANTS[args.child],
        "weights_mib": weights / MIB,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "rss_after_imports_mib": base_rss / MIB,
        "rss_load_growth_mib": (loaded_rss - base_rss) / MIB,
        "rss_peak_growth_mib": (peak_rss_bytes() - base_rss) / MIB,
    }
    if cuda:
        out["cuda_after_load_mib"] = loaded_cuda / MIB
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mem", "7b"], default="mem")
    parser.add_argument("--layers", type=int, default=None, help="7b only: keep N text layers and vision blocks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=None, help="default: 128 (mem), 448 (7b)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "checkpoint", model=args.model, layers=args.layers)
        rows = []
        for name in args.variants:
            command = [
                sys.executable,
                __file__,
                "--child",
                name,
                "--checkpoint",
                str(checkpoint),
                *(
                    f"--{k.replace('_', '-')}={v}"
                    for k, v in vars(args).items()
                    if k in ("model", "device", "pairs", "steps", "image_size") and v is not None
                ),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"variant {name} failed:\n{done.stderr[-4000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cuda = args.device.startswith("cuda")
    result = {
        "benchmark": "memory",
        "model": args.model,
        "layers": args.layers,
        "pairs": args.pairs,
        "steps": args.steps,
        "device": args.device,
        "results": rows,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg": os.getloadavg(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "gpu": torch.cuda.get_device_name() if cuda else None,
        },
    }
    suffix = "" if args.model == "mem" and not cuda else f"_{args.model}{args.layers or ''}_{args.device.split(':')[0]}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"memory{suffix}.json").write_text(json.dumps(result, indent=2))
    first = rows[0]
    if cuda:
        lines = [
            "| variant | weights MiB | allocated after load MiB | peak allocated MiB | peak vs first |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['variant']} | {r['weights_mib']:.0f} | {r['cuda_after_load_mib']:.0f} | "
            f"{r['cuda_peak_mib']:.0f} | {r['cuda_peak_mib'] / first['cuda_peak_mib']:.2f} |"
            for r in rows
        ]
    else:
        lines = [
            "| variant | weights MiB | RSS growth after load MiB | peak RSS growth MiB | peak vs first |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['variant']} | {r['weights_mib']:.0f} | {r['rss_load_growth_mib']:.0f} | "
            f"{r['rss_peak_growth_mib']:.0f} | {r['rss_peak_growth_mib'] / first['rss_peak_growth_mib']:.2f} |"
            for r in rows
        ]
    lines += [
        "",
        f"Model {args.model}{f' ({args.layers} layers)' if args.layers else ''}, LoRA r16, {args.steps} "
        f"training steps of {args.pairs} pairs, {args.device}; one fresh process per variant; growth is "
        f"measured from the process's RSS after imports ({rows[0]['rss_after_imports_mib']:.0f} MiB).",
    ]
    if not cuda:
        lines[-1] += (
            " Weights load memory-mapped: those kept in the checkpoint's dtype become resident only when "
            "first used (in the step), converted or quantized ones at load."
        )
    (out / f"memory{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

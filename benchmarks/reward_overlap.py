"""GRPO step wall time with a reward as costly as the rollout: in-process vs served, synchronous vs overlapped.

    OMP_NUM_THREADS=1 python benchmarks/reward_overlap.py [--steps 3] [--repeats 3] [--kinds delay,model]

One GRPO step: 2 prompts x G=16 on the random 2.3 M-parameter FLUX of benchmarks/topk.py at 64 px, 6 sampling
steps in rollout chunks of 2 (16 chunks), the first step trained (a Flow-GRPO-Fast window), Top-k k=2, no KL. The
reward is a tiny random SpatialScore made as costly as the rollout in one of two ways:

- ``delay``: scoring sleeps ``d`` seconds per image on top of the tiny model, ``d`` chosen so that in-process
  scoring costs what the rollout costs (measured without the delay first): a reward model on a device of its own
(another GPU), whose time costs the policy's processors
  nothing. In-process the sleep is in the reward; served, in the server's ``predict``.
- ``model``: a wider random SpatialScore (``bench`` widths at ``--model-size`` px) whose scoring really computes,
  in-process on the trainer's processors, or served by ``spatialscore serve`` in its own process.

Variants: in-process sync (``SpatialScoreReward``), in-process overlapped, served sync (``RemoteReward``) and
served overlapped (``overlap_reward: true``). Each run is ``--steps`` + 1 steps, the first dropped; variants
interleave, rotating their order each round; medians of the steps' wall times (batch start to batch end). Writes
benchmarks/results/reward_overlap.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from reward_step import BENCH
from serve import free_port, spatialscore_serve, start_server, stop
from topk import MEDIUM

from spatialrl.config import EvalConfig, GRPOConfig, SamplingConfig
from spatialrl.flux import FluxSource
from spatialrl.lora import FluxLoraConfig
from spatialrl.module import FluxGRPOModule
from spatialrl.rewards import RemoteReward, Reward, SpatialScoreReward
from spatialscore.backbone import BackboneConfig, TinyBackboneConfig
from spatialscore.data.datamodule import PreferenceDataModule, SyntheticData
from spatialscore.model import SpatialScore, SpatialScoreConfig
from spatialscore.serve import RequestLimits, SpatialScoreAPI, serve

GROUP = 16
IMAGES = 2 * GROUP  # per step: 2 prompts x G


class DelayedSpatialScoreReward(SpatialScoreReward):
    """In-process scoring plus ``delay`` seconds per image (a reward computed elsewhere)."""

    def __init__(self, path: str, *, delay: float) -> None:
        super().__init__(path, name="reward")
        self.delay = delay

    def __call__(self, *, images, prompts, metadata=None):
        time.sleep(self.delay * len(prompts))
        return super().__call__(images=images, prompts=prompts, metadata=metadata)


class DelayedAPI(SpatialScoreAPI):
    """The served model plus ``delay`` seconds per image of each batch."""

    def __init__(self, *, delay: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    def predict(self, x):
        time.sleep(self.delay * sum(len(prompts) for prompts, _ in (x if self.max_batch_size > 1 else [x])))
        return super().predict(x)


class StepClock(L.Callback):
    """Wall seconds of each training batch and the module's logged phase seconds."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        m = trainer.callback_metrics
        self.rows.append(
            {
                "step": time.perf_counter() - self.start,
                **{k: float(m[f"train/seconds_{k}"]) for k in ("rollout", "reward", "update")},
            }
        )


def run(reward: Reward, data: SyntheticData, *, overlap: bool, steps: int) -> list[dict[str, float]]:
    """``steps`` GRPO steps; the per-step rows after the first."""
    module = FluxGRPOModule(
        policy=FluxSource(tiny=MEDIUM, max_sequence_length=32),
        reward=reward,
        lora=FluxLoraConfig(rank=16),
        sampling=SamplingConfig(height=64, width=64, num_steps=6, rollout_batch=2, sde_steps=[0]),
        grpo=GRPOConfig(group_size=GROUP, k=2, micro_batch=8, kl_beta=0.0),
        eval=EvalConfig(at_start=False),
        overlap_reward=overlap,
        seed=0,
    )
    clock = StepClock()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, PreferenceDataModule(synthetic=data, batch_size=2, view="prompts"))
    return clock.rows[1:]


def served_delayed(export: Path, delay: float) -> tuple:
    port = free_port()
    command = [sys.executable, __file__, "--serve-delayed", str(export), "--port", str(port), "--delay", str(delay)]
    return start_server(command, port)


def bench_kind(kind: str, data: SyntheticData, folder: Path, *, steps: int, repeats: int, size: int) -> dict:
    """All four variants of one way of making the reward costly; the delay is calibrated on the rollout."""
    torch.manual_seed(0)
    tiny = TinyBackboneConfig() if kind == "delay" else replace(BENCH, image_size=size)
    export = folder / kind
    SpatialScore.build(SpatialScoreConfig(backbone=BackboneConfig(tiny=tiny))).save_pretrained(export)
    delay = 0.0
    if kind == "delay":
        calibration = run(SpatialScoreReward(str(export), name="reward"), data, overlap=False, steps=3)
        rollout, reward = (statistics.median(r[k] for r in calibration) for k in ("rollout", "reward"))
        delay = max(rollout - reward, 0.0) / IMAGES
        process, url = served_delayed(export, delay)
        local: Reward = DelayedSpatialScoreReward(str(export), delay=delay)
    else:
        process, url = spatialscore_serve(export, max_batch=1)  # batching off: see serve.py
        local = SpatialScoreReward(str(export), name="reward")
    remote = RemoteReward(url, batch_size=8, concurrency=2, name="reward")
    variants = {
        "in-process, sync": (local, False),
        "in-process, overlapped": (local, True),
        "served, sync": (remote, False),
        "served, overlapped": (remote, True),
    }
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    try:
        names = list(variants)
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                reward, overlap = variants[name]
                rows[name] += run(reward, data, overlap=overlap, steps=steps + 1)
    finally:
        stop(process)
    medians = {name: {k: statistics.median(r[k] for r in values) for k in values[0]} for name, values in rows.items()}
    sync = medians["in-process, sync"]["step"]
    for values in medians.values():
        values["vs_in_process_sync"] = values["step"] / sync
    medians["served, overlapped"]["vs_served_sync"] = (
        medians["served, overlapped"]["step"] / medians["served, sync"]["step"]
    )
    return {
        "kind": kind,
        "delay_s_per_image": delay,
        "reward_image_size": tiny.image_size,
        "reward_parameters": sum(p.numel() for p in SpatialScore.from_pretrained(export).parameters()),
        "steps_per_variant": len(rows[names[0]]),
        "medians": medians,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", default="delay,model")
    parser.add_argument("--model-size", type=int, default=96, help="image side of the 'model' kind's reward")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--serve-delayed", default=None, help=argparse.SUPPRESS)  # internal: run the delayed server
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_delayed:
        api = DelayedAPI(delay=args.delay, model_dir=args.serve_delayed, max_batch_size=1)
        serve(api, limits=RequestLimits(), port=args.port, log_level="warning")
        return
    folder = Path(tempfile.mkdtemp())
    data = SyntheticData(
        directory=str(folder / "data"), train_pairs=16, val_pairs=0, test_pairs=0, stages=(1,), eval_stages=(1,)
    )
    results = [
        bench_kind(kind, data, folder, steps=args.steps, repeats=args.repeats, size=args.model_size)
        for kind in args.kinds.split(",")
    ]
    load = os.getloadavg()
    result = {
        "benchmark": "reward_overlap",
        "steps": args.steps,
        "repeats": args.repeats,
        "results": results,
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_avg_at_end": load,
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reward_overlap.json").write_text(json.dumps(result, indent=2))
    lines = []
    for res in results:
        what = (
            f"tiny SpatialScore + {res['delay_s_per_image'] * 1e3:.1f} ms per image"
            if res["kind"] == "delay"
            else f"random SpatialScore of {res['reward_parameters'] / 1e6:.1f} M parameters at "
            f"{res['reward_image_size']} px"
        )
        lines += [
            f"**{res['kind']}** ({what}; {res['steps_per_variant']} steps per variant)",
            "",
            "| variant | step s | vs in-process sync | rollout s | reward s (after the rollout) | update s |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in res["medians"].items():
            lines.append(
                f"| {name} | {v['step']:.2f} | {v['vs_in_process_sync']:.2f}x | {v['rollout']:.2f} | "
                f"{v['reward']:.2f} | {v['update']:.2f} |"
            )
        served = res["medians"]["served, overlapped"]
        lines += ["", f"Served overlapped / served sync: **{served['vs_served_sync']:.2f}x**.", ""]
    lines.append(
        f"2 prompts x G={GROUP}, 64 px, 6 sampling steps in {IMAGES // 2} rollout chunks of 2, 1 trained step, k=2, "
        "no KL; served with max batch size 1 (LitServe's batched loop polls its queue every millisecond); medians "
        f"over {args.repeats} interleaved rounds of {args.steps} steps; OMP_NUM_THREADS=1 in trainer and server. "
        f"Machine: {os.cpu_count()} cores shared with other jobs (load average {load[0]:.1f} at the end)."
    )
    (out / "reward_overlap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Which sampling steps GRPO trains: all but the last (Flow-GRPO) against a window of the first 2 (Flow-GRPO-Fast).

    OMP_NUM_THREADS=1 python benchmarks/rl_window.py [--steps 3] [--repeats 3] [--prompts 2]

Both variants run FluxGRPOModule with the same policy, prompts, seeds, 6-step SDE sampler, Top-k filtering
(k=6 of G=24), KL to the reference and micro-batch; only ``sampling.sde_steps`` differs (None = steps 0-4, or
[0, 1]). Steps outside the window are ODE steps, so the rollout costs the same; training passes (transformer
forward+backward calls, each with a no-grad reference forward for the KL) scale with the trained steps. The
wall-clock of each GRPO step is split into rollout / reward / update as FluxGRPOModule logs it (read with
benchmarks/topk.py's callback). Runs alternate between variants so machine noise hits both alike. Model: the
2.3 M-parameter FLUX transformer at 64 px of benchmarks/topk.py. Writes benchmarks/results/rl_window.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch
from topk import run

from spatialscore.data.datamodule import SyntheticData

WINDOWS: dict[str, list[int] | None] = {"all_but_last": None, "first_2": [0, 1]}
KEYS = ("passes", "seconds_rollout", "seconds_reward", "seconds_update")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed GRPO steps per run (plus one dropped)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    data = SyntheticData(
        directory=tempfile.mkdtemp(), train_pairs=16, val_pairs=0, test_pairs=0, stages=(1,), eval_stages=(1,)
    )
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in WINDOWS}
    for _ in range(args.repeats):
        for name, window in WINDOWS.items():
            rows[name] += run("topk", data, steps=args.steps + 1, prompts=args.prompts, sde_steps=window)
    result: dict = {
        "benchmark": "rl_window",
        "prompts": args.prompts,
        "group_size": 24,
        "k": 6,
        "num_steps": 6,
        "trained_steps": {name: 5 if window is None else len(window) for name, window in WINDOWS.items()},
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_avg": os.getloadavg(),
        },
    }
    for name, values in rows.items():
        result[name] = {k: statistics.median(r[k] for r in values) for k in KEYS}
        result[name]["step"] = statistics.median(sum(r[k] for k in KEYS[1:]) for r in values)
    full, window = result["all_but_last"], result["first_2"]
    result["ratios"] = {k: window[k] / full[k] for k in ("passes", "seconds_rollout", "seconds_update", "step")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rl_window.json").write_text(json.dumps(result, indent=2))
    r = result["ratios"]
    lines = [
        "| trained steps | training passes / step | rollout s | reward s | update s | step s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {label} | {v['passes']:.0f} | {v['seconds_rollout']:.2f} | {v['seconds_reward']:.3f} | "
            f"{v['seconds_update']:.2f} | {v['step']:.2f} |"
            for label, v in (("all but last (0-4)", full), ("window of the first 2 (0-1)", window))
        ),
        f"| **ratio** | **{r['passes']:.2f}** | **{r['seconds_rollout']:.2f}** | | **{r['seconds_update']:.2f}** | "
        f"**{r['step']:.2f}** |",
        "",
        f"{args.prompts} prompts x G=24, Top-k k=6, 6 sampling steps, micro-batch 4, KL 0.01, LoRA rank 16, 2.3 M-"
        f"parameter transformer at 64 px; medians over {args.repeats} x {args.steps} interleaved steps, "
        f"{torch.get_num_threads()} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
    ]
    (out / "rl_window.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

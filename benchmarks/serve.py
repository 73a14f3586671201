"""``spatialscore serve`` throughput and latency against in-process scoring of the same images, same run.

    OMP_NUM_THREADS=1 python benchmarks/serve.py [--images 64] [--repeats 3] [--models tiny,bench]

For each model (random weights: the tiny default backbone at 64 px and the 18 M-parameter ``bench`` backbone of
benchmarks/reward_step.py at 128 px), two servers of the same export run side by side, one with
``--max-batch-size 1`` and one with ``--max-batch-size 8`` (``--batch-timeout 0.01``), each one inference worker
on one thread. ``c`` client threads (1, 4, 16, 32) share ``--images`` single-image requests (PNGs encoded before
the clock starts; the encoding cost is reported apart), each sending its next request when the last is answered:
images/s over the whole set, and p50/p99 of the request latencies. In-process rows score the same images with
``SpatialScore.score`` (one by one and in batches of 8) on one thread. Variants are interleaved, rotating their
order each round; the served scores are checked against the in-process ones. Writes
benchmarks/results/serve.{json,md}.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image
from reward_step import BENCH, PROMPT, make_images

from spatialscore.backbone import BackboneConfig, TinyBackboneConfig
from spatialscore.launch import start_server, stop_server
from spatialscore.model import SpatialScore, SpatialScoreConfig

MODELS = {"tiny": TinyBackboneConfig(), "bench": BENCH}
CLIENTS = (1, 4, 16, 32)
MAX_BATCH = (1, 8)


def spatialscore_serve(export: Path, *, max_batch: int, batch_timeout: float = 0.01) -> tuple[subprocess.Popen, str]:
    options = ["--max-batch-size", str(max_batch), "--batch-timeout", str(batch_timeout)]
    return start_server(export, options=options)


def png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def run_clients(url: str, bodies: list[dict], clients: int) -> tuple[float, list[float], list[float], list[int]]:
    """Send ``bodies`` from ``clients`` threads; wall seconds, per-request latencies, scores, batch sizes seen."""
    cursor = iter(range(len(bodies)))
    lock = threading.Lock()
    latencies: list[float] = []
    scores: list[float] = [float("nan")] * len(bodies)
    batches: list[int] = []

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                start = time.perf_counter()
                response = session.post(f"{url}/predict", json=bodies[index], timeout=300)
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
                answer = response.json()
                scores[index] = answer["mu"][0]
                batches.append(answer["batch_requests"])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies, scores, batches


def bench_model(name: str, tiny: TinyBackboneConfig, *, images: int, repeats: int, folder: Path) -> dict:
    """Every variant of one model: in-process and served, interleaved over ``repeats`` rounds."""
    torch.manual_seed(0)
    model = SpatialScore.build(SpatialScoreConfig(backbone=BackboneConfig(tiny=tiny))).eval()
    export = folder / name
    model.save_pretrained(export)
    prompts = [PROMPT.format(i) if i % 2 else f"a red circle left of a blue square, scene {i}" for i in range(images)]
    pictures = make_images(count=images, size=tiny.image_size, seed=0)
    start = time.perf_counter()
    bodies = [{"prompts": [p], "images": [png_base64(x)]} for p, x in zip(prompts, pictures, strict=True)]
    encode_ms = (time.perf_counter() - start) / images * 1e3
    reference = model.score(prompts=prompts, images=pictures, batch_size=1).mu

    servers = {mb: spatialscore_serve(export, max_batch=mb) for mb in MAX_BATCH}
    walls: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    batch_sizes: dict[str, list[int]] = {}
    max_diff = 0.0

    def in_process(batch: int) -> None:
        key = f"in-process, batch {batch}"
        start = time.perf_counter()
        model.score(prompts=prompts, images=pictures, batch_size=batch)
        walls.setdefault(key, []).append(time.perf_counter() - start)

    def served(max_batch: int, clients: int) -> None:
        nonlocal max_diff
        key = f"served, max batch {max_batch}, {clients} clients"
        wall, lat, scores, seen = run_clients(servers[max_batch][1], bodies, clients)
        walls.setdefault(key, []).append(wall)
        latencies.setdefault(key, []).extend(lat)
        batch_sizes.setdefault(key, []).extend(seen)
        max_diff = max(max_diff, float((torch.tensor(scores) - reference).abs().max()))

    variants = [lambda b=b: in_process(b) for b in (1, 8)]
    variants += [lambda m=m, c=c: served(m, c) for m in MAX_BATCH for c in CLIENTS]
    try:
        for warm_up in (*variants[:2], lambda: served(1, 4), lambda: served(8, 4)):  # first passes, connections
            warm_up()
        walls.clear()
        latencies.clear()
        batch_sizes.clear()
        for round_index in range(repeats):
            shift = round_index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                variant()
    finally:
        for process, _ in servers.values():
            stop_server(process)
    rows = []
    for key, values in walls.items():
        wall = statistics.median(values)
        row = {"variant": key, "images_per_s": images / wall, "median_wall_s": wall}
        if key in latencies:
            lat = np.array(latencies[key]) * 1e3
            row |= {
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "mean_batch_requests": float(np.mean(batch_sizes[key])),
            }
        rows.append(row)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": tiny.image_size,
        "images": images,
        "png_encode_ms_per_image": encode_ms,
        "max_abs_diff_served_vs_in_process": max_diff,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    with torch.no_grad():
        results = [
            bench_model(n, MODELS[n], images=args.images, repeats=args.repeats, folder=folder)
            for n in args.models.split(",")
        ]
    load = os.getloadavg()
    result = {
        "benchmark": "serve",
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
    (out / "serve.json").write_text(json.dumps(result, indent=2))
    lines = []
    for res in results:
        base = next(r for r in res["rows"] if r["variant"] == "in-process, batch 1")["images_per_s"]
        lines += [
            f"**{res['model']}** ({res['parameters'] / 1e6:.1f} M parameters, {res['image_size']} px; served scores "
            f"equal in-process ones to {res['max_abs_diff_served_vs_in_process']:.1e}; PNG encoding "
            f"{res['png_encode_ms_per_image']:.2f} ms/image, not timed)",
            "",
            "| variant | images/s | vs in-process batch 1 | p50 ms | p99 ms | requests per server batch |",
            "|---|---|---|---|---|---|",
        ]
        for row in res["rows"]:
            latency = (
                f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['mean_batch_requests']:.1f}"
                if "p50_ms" in row
                else "| |"
            )
            lines.append(
                f"| {row['variant']} | {row['images_per_s']:.1f} | {row['images_per_s'] / base:.2f}x | {latency} |"
            )
        lines.append("")
    lines.append(
        f"{args.images} single-image requests per variant, medians of {args.repeats} interleaved rounds; server: one "
        "inference worker, OMP_NUM_THREADS=1, batch timeout 0.01 s; clients in this process. "
        f"Machine: {os.cpu_count()} cores shared with other jobs (load average {load[0]:.1f} at the end)."
    )
    (out / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

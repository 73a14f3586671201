"""``spatialscore benchmark``: scorer specs, pairwise accuracy of known scorers, outputs and the CLI."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialscore import benchmark
from spatialscore.benchmark import (
    ConstantScorer,
    RandomScorer,
    ScorerSpec,
    ScorerSpecError,
    build_scorer,
    parse_scorer_spec,
    run_benchmark,
)
from spatialscore.cli import main
from spatialscore.data.manifest import write_manifest
from spatialscore.data.synthetic import RuleChecker, write_synthetic_dataset

CELL = r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]"
PLUGIN = """
import numpy as np


class Brightness:
    def __call__(self, *, prompts, images):
        return [float(np.asarray(image, dtype=np.float64).mean()) for image in images]


def prompt_length(*, prompts, images):
    return [len(p) for p in prompts]


def fails(*, prompts, images):
    return [float("nan")] * len(prompts)
"""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 procedural scene pairs (stages 1 and 6), 24 records with mirrors."""
    out = tmp_path_factory.mktemp("bench-pairs")
    return write_synthetic_dataset(out, num_pairs=12, seed=0, stages=(1, 6), split="test", show_progress=False)


def _red(*, prompts: list[str], images: list[Image.Image]) -> list[float]:
    """Mean red channel: known outputs for the hand-built manifest."""
    return [float(np.asarray(image)[..., 0].mean()) for image in images]


@pytest.fixture()
def colours(tmp_path: Path) -> Path:
    """Four solid images (red channel 255, 0, 0, 128) in four pairs with hand-computable outcomes."""
    for name, rgb in {"a": (255, 0, 0), "b": (0, 0, 255), "c": (0, 255, 0), "d": (128, 128, 128)}.items():
        Image.new("RGB", (8, 8), rgb).save(tmp_path / f"{name}.png")
    rows = [  # red scores: win, loss, tie, win
        {"prompt": "p1", "chosen": "a.png", "rejected": "b.png", "subset": "s1", "category": "c1"},
        {"prompt": "p2", "chosen": "b.png", "rejected": "a.png", "subset": "s1", "category": "c2"},
        {"prompt": "p3", "chosen": "b.png", "rejected": "c.png", "subset": "s2", "category": "c1"},
        {"prompt": "p4", "chosen": "d.png", "rejected": "b.png", "subset": "s2", "category": "c2"},
    ]
    write_manifest(tmp_path / "pairs.jsonl", rows)
    return tmp_path / "pairs.jsonl"


@pytest.fixture()
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A plug-in module in the current directory; ``sys.path`` is restored afterwards."""
    (tmp_path / "bench_plugin.py").write_text(PLUGIN)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "bench_plugin", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_parse_scorer_specs() -> None:
    assert parse_scorer_spec("rule") == ScorerSpec("rule", "rule")
    assert parse_scorer_spec("constant") == ScorerSpec("constant", "constant")
    assert parse_scorer_spec("random") == ScorerSpec("random", "random")
    assert parse_scorer_spec("random:7") == ScorerSpec("random:7", "random", "7")
    assert parse_scorer_spec("ours=spatialscore:runs/a=b") == ScorerSpec("ours", "spatialscore", "runs/a=b")
    assert parse_scorer_spec("spatialscore:/x/y") == ScorerSpec("spatialscore:/x/y", "spatialscore", "/x/y")
    assert parse_scorer_spec("pkg.mod:Cls") == ScorerSpec("pkg.mod:Cls", "plugin", "pkg.mod:Cls")
    for bad in ("bogus", "random:x", "spatialscore:", "a b:c", "=rule"):
        with pytest.raises(ScorerSpecError, match="accepted forms"):
            parse_scorer_spec(bad)


def test_rule_is_perfect_and_constant_ties(pairs: Path) -> None:
    results = run_benchmark(
        manifest=pairs,
        scorers={"rule": RuleChecker(), "constant": ConstantScorer()},
        bootstrap=200,
        show_progress=False,
    )
    assert results["num_pairs"] == 24 and results["subsets"] == ["1-pert", "2-3-pert"]
    rule, constant = results["scorers"]["rule"], results["scorers"]["constant"]
    for group in [rule["overall"], *rule["subsets"].values(), *rule["categories"].values()]:
        assert group["accuracy"] == 1.0 and group["tie_rate"] == 0.0 and group["ci_low"] == 1.0
    assert rule["overall"]["n"] == 24
    assert sum(g["n"] for g in rule["subsets"].values()) == 24
    assert constant["overall"] == {
        "accuracy": 0.5,
        "accuracy_no_ties": None,
        "tie_rate": 1.0,
        "n": 24,
        "ci_low": 0.5,
        "ci_high": 0.5,
    }


def test_prompt_blind_plugin_is_exactly_at_chance(pairs: Path, plugin_dir: Path) -> None:
    spec = parse_scorer_spec("bright=bench_plugin:Brightness")
    scorer = build_scorer(spec)
    results = run_benchmark(manifest=pairs, scorers={"bright": scorer}, bootstrap=0, show_progress=False)
    bright = results["scorers"]["bright"]
    for group in [bright["overall"], *bright["subsets"].values(), *bright["categories"].values()]:
        assert group["accuracy"] == 0.5
        assert group["ci_low"] is None


def test_hand_computed_accuracy_and_images_decoded_once(
    colours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Path] = []
    load = benchmark._load_rgb
    monkeypatch.setattr(benchmark, "_load_rgb", lambda path: loads.append(path) or load(path))
    results = run_benchmark(
        manifest=colours,
        scorers={"red": _red, "constant": ConstantScorer()},
        out_dir=tmp_path / "out",
        batch_size=3,
        bootstrap=0,
        show_progress=False,
    )
    assert sorted(p.name for p in loads) == ["a.png", "b.png", "c.png", "d.png"]
    red = results["scorers"]["red"]
    assert red["overall"] == {
        "accuracy": 0.625,
        "accuracy_no_ties": pytest.approx(2 / 3),
        "tie_rate": 0.25,
        "n": 4,
        "ci_low": None,
        "ci_high": None,
    }
    assert red["subsets"]["s1"]["accuracy"] == 0.5
    assert red["subsets"]["s2"] == {
        "accuracy": 0.75,
        "accuracy_no_ties": 1.0,
        "tie_rate": 0.5,
        "n": 2,
        "ci_low": None,
        "ci_high": None,
    }
    assert red["categories"]["c1"]["accuracy"] == 0.75 and red["categories"]["c2"]["accuracy"] == 0.5
    rows = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [r["scores"]["red"] for r in rows] == [
        {"chosen": 255.0, "rejected": 0.0},
        {"chosen": 0.0, "rejected": 255.0},
        {"chosen": 0.0, "rejected": 0.0},
        {"chosen": 128.0, "rejected": 0.0},
    ]
    table = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert "| subset | n | red | constant |" in table
    assert "| s1 | 2 | 0.500 | 0.500 |" in table
    assert "| s2 | 2 | 0.750 | 0.500 |" in table
    assert "| overall | 4 | 0.625 | 0.500 |" in table
    assert any(line.startswith("| red | 0.625 | 0.667 | 0.250 | ") for line in table)


def test_outputs_layout(pairs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_benchmark(
        manifest=pairs,
        scorers={"rule": RuleChecker(), "constant": ConstantScorer(), "random": RandomScorer(seed=0)},
        out_dir=out,
        bootstrap=100,
        seed=1,
        show_progress=False,
        command=["spatialscore", "benchmark"],
    )
    results = json.loads((out / "results.json").read_text())
    assert {
        "command",
        "manifest",
        "num_pairs",
        "versions",
        "subsets",
        "categories",
        "scorers",
        "bootstrap",
    } <= set(results)
    assert results["command"] == ["spatialscore", "benchmark"] and results["manifest"] == str(pairs)
    assert results["versions"]["spatialreward"] and results["versions"]["torch"]
    assert list(results["scorers"]) == ["rule", "constant", "random"]
    assert set(results["scorers"]["random"]) == {"seconds", "overall", "subsets", "categories"}
    assert set(results["scorers"]["random"]["overall"]) == {
        "accuracy",
        "accuracy_no_ties",
        "tie_rate",
        "n",
        "ci_low",
        "ci_high",
    }

    lines = (out / "table.md").read_text().splitlines()
    start = lines.index("| subset | n | rule | constant | random |")
    assert lines[start + 1] == "| --- | ---: | ---: | ---: | ---: |"
    body = [line.split(" | ") for line in lines[start + 2 : start + 5]]
    assert [row[0] for row in body] == ["| 1-pert", "| 2-3-pert", "| overall"]
    assert [row[1] for row in body] == ["18", "6", "24"]
    assert body[2][2] == "1.000 [1.000, 1.000]" and body[2][3] == "0.500 [0.500, 0.500]"
    assert all(re.fullmatch(CELL, cell.rstrip(" |")) for row in body for cell in row[2:])

    category_lines = (out / "categories.md").read_text().splitlines()
    header = category_lines.index("| category | n | rule | constant | random |")
    labels = [line.split(" | ")[0][2:] for line in category_lines[header + 2 :]]
    assert labels == [*results["categories"], "overall"] and "swap" in labels

    with Image.open(out / "accuracy.png") as png:
        assert png.format == "PNG" and png.size == (800, 480)
        assert len(png.convert("RGB").getcolors(1 << 16)) > 10


def test_cli_end_to_end(pairs: Path, plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = plugin_dir / "bench"
    argv = ["benchmark", "--pairs", str(pairs), "--scorer", "rule", "--scorer", "bench_plugin:prompt_length"]
    argv += [
        "--scorer",
        "random:3",
        "--out",
        str(out),
        "--bootstrap",
        "50",
        "--batch-size",
        "5",
        "--no-progress",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == ["spatialscore", *argv]
    assert list(results["scorers"]) == ["rule", "bench_plugin:prompt_length", "random:3"]
    assert results["scorers"]["rule"]["overall"]["accuracy"] == 1.0
    for name in results["scorers"]:
        overall = results["scorers"][name]["overall"]
        assert overall["n"] == 24 and 0.0 <= overall["ci_low"] <= overall["accuracy"] <= overall["ci_high"] <= 1.0
    assert "| overall | 24 | 1.000 [1.000, 1.000] |" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "results.json",
        "table.md",
        "categories.md",
        "scores.jsonl",
        "accuracy.png",
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scorer", "nonsense"], "accepted forms"),
        (["--scorer", "rule", "--scorer", "rule"], "duplicate scorer names"),
        (["--scorer", "no_such_module_xyz:f"], "cannot import module"),
        (["--scorer", "spatialscore:/does/not/exist"], "not a SpatialScore folder"),
    ],
)
def test_cli_errors(
    pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--no-progress", *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_missing_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["benchmark", "--pairs", str(tmp_path / "nope.jsonl"), "--scorer", "rule", "--out", str(tmp_path)])
    assert "manifest not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        run_benchmark(manifest=tmp_path / "nope.jsonl", scorers={"c": ConstantScorer()})


def test_plugin_with_wrong_output_length(colours: Path) -> None:
    with pytest.raises(ValueError, match="returned 1 scores for 8 images"):
        run_benchmark(manifest=colours, scorers={"bad": lambda **_: [0.0]}, bootstrap=0, show_progress=False)


def test_undefined_score_differences_fail_the_run(
    colours: Path, plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN scores, or both images at the same infinity, have no outcome: an error, never silent losses."""

    def infinite_p3(*, prompts: list[str], images: list[Image.Image]) -> list[float]:
        return [float("inf") if p == "p3" else -float("inf") if p == "p4" else 0.0 for p in prompts]

    with pytest.raises(ValueError) as info:
        run_benchmark(
            manifest=colours,
            scorers={"ok": ConstantScorer(), "inf": infinite_p3, "nan": lambda **kw: [float("nan")] * 8},
            bootstrap=0,
            show_progress=False,
        )
    assert str(info.value) == (
        "undefined score differences (a NaN score, or the same infinite score for both images), which pairwise "
        "accuracy would count as losses:\n"
        f"  scorer 'inf': 2 of 4 pairs, e.g. pair 'pairs-3' ({colours}:3)\n"
        f"  scorer 'nan': 4 of 4 pairs, e.g. pair 'pairs-1' ({colours}:1)"
    )
    out = plugin_dir / "bench"
    argv = ["benchmark", "--pairs", str(colours), "--scorer", "constant", "--scorer", "bench_plugin:fails"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spatialscore benchmark: error: undefined score differences")
    assert f"scorer 'bench_plugin:fails': 4 of 4 pairs, e.g. pair 'pairs-1' ({colours}:1)" in err
    assert not out.exists()


def test_spatialscore_scorer(pairs: Path, tmp_path: Path) -> None:
    from spatialscore.model import SpatialScore, SpatialScoreConfig

    SpatialScore.build(SpatialScoreConfig()).save_pretrained(tmp_path / "m")
    scorer = build_scorer(parse_scorer_spec(f"tiny=spatialscore:{tmp_path / 'm'}"), batch_size=8, device="cpu")
    results = run_benchmark(manifest=pairs, scorers={"tiny": scorer}, bootstrap=100, show_progress=False)
    overall = results["scorers"]["tiny"]["overall"]
    assert overall["n"] == 24
    assert 0.0 <= overall["ci_low"] <= overall["accuracy"] <= overall["ci_high"] <= 1.0
    assert sum(g["n"] for g in results["scorers"]["tiny"]["subsets"].values()) == 24

"""`spatialrl paper`'s bookkeeping: stages skipped when done, refused when their settings changed, rerun when
interrupted; stage configs moved into the run folder; the held-out guard; the summary."""

from __future__ import annotations

import json

import pytest

from spatialrl.paper import StageChanged, _drop_heldout, run_stage, stage_config, summary_markdown


def test_stage_runs_once_then_skips_and_refuses_changed_settings(tmp_path):
    calls, lines = [], []
    work = lambda: calls.append(1) or {"kept": 3}  # noqa: E731
    first = run_stage(tmp_path / "pairs", {"steps": 20, "seed": 0}, work, log=lines.append)
    again = run_stage(tmp_path / "pairs", {"seed": 0, "steps": 20}, work, log=lines.append)
    assert calls == [1] and first == again and first["result"] == {"kept": 3} and first["seconds"] >= 0
    assert lines[-1].startswith("pairs: done before")
    with pytest.raises(StageChanged, match=r"stage 'pairs' finished with other settings \(changed: steps\)"):
        run_stage(tmp_path / "pairs", {"steps": 8, "seed": 0}, work, log=lines.append)
    assert calls == [1]


def test_interrupted_stage_runs_again(tmp_path):
    def crash():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path / "rl", {"a": 1}, crash, log=lambda _: None)
    assert not (tmp_path / "rl" / "stage.json").exists()
    record = run_stage(tmp_path / "rl", {"a": 1}, lambda: None, log=lambda _: None)
    assert record["result"] == {} and (tmp_path / "rl" / "stage.json").is_file()


def test_stage_config_moves_run_folders(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("dirpath: runs/spatialrl/sft-tiny/checkpoints\npath: runs/spatialrl/sft-tiny/policy\n"
                    "root: runs/spatialrl/tiny\n")
    moved = stage_config(base, moves={"runs/spatialrl/tiny": "out/rl-rule", "runs/spatialrl/sft-tiny": "out/sft"})
    assert moved == "dirpath: out/sft/checkpoints\npath: out/sft/policy\nroot: out/rl-rule\n"


def test_drop_heldout_removes_perturbations_onto_heldout_prompts(tmp_path):
    path = tmp_path / "perturbed.jsonl"
    rows = [{"id": 1, "prompt": "a", "perturbed_prompt": "held"}, {"id": 2, "prompt": "b", "perturbed_prompt": "c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _drop_heldout(path, held={"held"}) == 1
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [2]


def test_summary_markdown_reports_every_number():
    summary = {
        "settings": {"seed": 3},
        "filter": {"filter": {"train": {"kept": 5, "total": 10, "pooled": 4,
                                        "dropped": {"chosen: missing objects": 5}}}},
        "reward_model_heldout_accuracy": {"spatialscore": 0.9123, "spatialscore-1": 0.95},
        "policies": {"sft": {"strict_correct": 0.15, "strict_extra": 0.36, "strict_missing": 0.63,
                             "spatialscore": -1.2}},
        "divergence": {"probe-1": {"diverged": True, "val/reward": [0.1, 0.9], "val/strict_correct": [0.5, 0.2]}},
        "seconds": {"sft": 240.0, "rl-rule": 600.0},
        "loop_seconds": 240.0,
    }
    text = summary_markdown(summary)
    assert "(seed 3)" in text and "filter, train pairs: 5 of 10 kept, 4 pooled across seeds" in text
    assert "(dropped: 5 chosen: missing objects)" in text and "spatialscore-1: pairwise accuracy" in text
    assert "held-out generated pairs 0.912" in text and "| sft | 0.150 | 0.360 | 0.630 | -1.200 |" in text
    assert "probe-1: training reward and strict judge diverged" in text and "val/strict_correct 0.500 -> 0.200" in text
    assert "the loop (without rl-rule): 4.0 min" in text


def test_prompt_sets_hold_out_the_validation_prompts_and_their_mirrors(tmp_path):
    from spatialrl.paper import _prompt_sets

    config = tmp_path / "rl.yaml"
    config.write_text(
        "data:\n  class_path: spatialscore.data.datamodule.PreferenceDataModule\n  init_args:\n"
        "    view: prompts\n    holdout_eval_prompts: true\n    batch_size: 2\n    synthetic:\n"
        f"      directory: {tmp_path / 'data'}\n      train_pairs: 200\n      val_pairs: 2\n      test_pairs: 0\n"
        "      image_size: 32\n      stages: [1]\n      eval_stages: [1]\n      seed: 0\n"
    )
    train, held = _prompt_sets(str(config))
    assert len(held) == 4 and not set(train) & set(held)  # 2 validation pairs: their prompts and mirrors
    assert len(train) + len(held) == 32  # stage 1: 4 x 4 shapes x left/right, every prompt in one of the two sets
    mirror = {p: p.replace("left", "X").replace("right", "left").replace("X", "right") for p in held}
    assert set(mirror.values()) == set(held)

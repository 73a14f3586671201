"""``spatialrl evaluate``: same images as the module's validation, paired comparison, CLI outputs, spec errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from toy_rewards import LeftRed

from spatialrl.callbacks import export_policy, sampling_settings
from spatialrl.cli import main as spatialrl_main
from spatialrl.config import EvalConfig, SamplingConfig
from spatialrl.evaluate import (
    PolicySpec,
    SpecError,
    bootstrap_mean_ci,
    evaluate_policies,
    parse_policy_spec,
    parse_reward_spec,
    read_prompts,
    resolve_sampling,
)
from spatialrl.flux import SETTINGS_FILE, FluxSource
from spatialrl.lora import FluxLoraConfig
from spatialrl.module import FluxGRPOModule
from spatialrl.rewards import RuleReward, StrictReward
from spatialrl.rollout import eval_initial_noise, ode_images
from spatialrl.sft import FlowMatchingModule
from spatialscore.data.synthetic import write_synthetic_dataset
from spatialscore.files import file_sha256, folder_sha256
from spatialscore.model import SpatialScore, SpatialScoreConfig
from spatialscore.visualize import image_grid

PROMPTS = ["a red circle to the left of a blue square", "a green star above a red circle", "a blue square below"]
FAST = {"num_steps": 2, "height": 32, "width": 32}


def make_module() -> FluxGRPOModule:
    module = FluxGRPOModule(
        policy=FluxSource(),
        reward=LeftRed(),
        lora=FluxLoraConfig(rank=4),
        sampling=SamplingConfig(height=32, width=32, num_steps=3, rollout_batch=4),
        eval=EvalConfig(num_steps=2, samples_per_prompt=2, seed=7, at_start=False),
        seed=0,
    )
    module.configure_model()
    return module


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> str:
    """An (untrained) tiny SpatialScore saved as a folder, for the ``spatialscore:PATH`` reward."""
    folder = tmp_path_factory.mktemp("spatialscore") / "model"
    SpatialScore.build(SpatialScoreConfig()).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tuned_policy(tmp_path_factory) -> str:
    """A LoRA-tuned tiny policy exported as a diffusers folder (random adapter weights, merged)."""
    module = make_module()
    with torch.no_grad():
        for name, param in module.transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    folder = tmp_path_factory.mktemp("tuned") / "export"
    export_policy(module, folder)
    return str(folder)


def test_same_images_and_rewards_as_module_validation():
    module = make_module()
    expected = module.evaluate(PROMPTS, [{} for _ in PROMPTS])
    images = torch.cat(
        list(
            ode_images(
                module.policy,
                prompts=PROMPTS,
                samples_per_prompt=2,
                seed=7,
                num_steps=2,
                height=32,
                width=32,
                guidance=3.5,
                batch_size=4,
            )
        )
    )
    assert torch.equal(images, expected["images"])
    noise = eval_initial_noise(module.policy, prompts=PROMPTS[::-1], indices=[1, 1, 1], seed=7, height=32, width=32)
    again = eval_initial_noise(module.policy, prompts=PROMPTS, indices=[1, 1, 1], seed=7, height=32, width=32)
    assert torch.equal(noise, again.flip(0))  # a sample's noise depends only on (seed, prompt, index)
    results = evaluate_policies(
        policies=[PolicySpec("base", FluxSource())],
        prompts=PROMPTS,
        rewards=[LeftRed()],
        samples_per_prompt=2,
        seed=7,
        batch_size=4,
        bootstrap=0,
        **FAST,
    )
    scores = [s for row in results["per_prompt"] for s in row["scores"]["base"]["left_red"]]
    assert scores == expected["reward"].tolist()  # the adapter (B = 0) leaves the base policy's images unchanged


def test_cli_end_to_end(tmp_path, tuned_policy, reward_model):
    data = tmp_path / "data"
    write_synthetic_dataset(data, num_pairs=5, seed=3, image_size=32, stages=(1,), split="test", show_progress=False)
    out = tmp_path / "eval"
    code = spatialrl_main(
        [
            "evaluate",
            "--policy",
            "base=tiny",
            "--policy",
            f"tuned={tuned_policy}",
            "--policy",
            "again=tiny",
            "--prompts",
            str(data / "test.jsonl"),
            "--reward",
            "strict",
            "--reward",
            "rule",
            "--reward",
            "toy_rewards:LeftRed",
            "--reward",
            f"spatialscore:{reward_model}",
            "--out",
            str(out),
            "--steps",
            "2",
            "--samples-per-prompt",
            "2",
            "--height",
            "32",
            "--width",
            "32",
            "--batch-size",
            "3",
            "--bootstrap",
            "200",
            "--grid-prompts",
            "3",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    prompts, _ = read_prompts(data / "test.jsonl")
    assert results["settings"]["prompts"] == len(prompts) == len(results["per_prompt"])
    strict = [
        "strict",
        "strict_correct",
        "strict_extra",
        "strict_missing",
        "strict_lenient",
    ]  # the judge and its diagnostics
    assert results["rewards"] == [*strict, "rule", "left_red", "spatialscore"]
    assert list(results["policies"]) == ["base", "tuned", "again"]
    for block in results["policies"].values():
        stats = block["rewards"]["left_red"]
        assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"] and stats["n"] == 2 * len(prompts)
        assert 0 <= block["rewards"]["rule"]["mean"] <= 1
        assert block["rewards"]["strict_lenient"]["mean"] == block["rewards"]["rule"]["mean"]
        correct = block["rewards"]["strict_correct"]["mean"]  # a correct image has nothing extra and nothing missing
        assert correct + block["rewards"]["strict_extra"]["mean"] <= 1
        assert correct + block["rewards"]["strict_missing"]["mean"] <= 1
    for reward in ("left_red", "spatialscore"):  # the same policy twice: the same images, a zero difference
        same = results["paired"]["again - base"][reward]
        assert same == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "win_rate": 0.0, "tie_rate": 1.0}
    tuned = results["paired"]["tuned - base"]["left_red"]
    assert tuned["tie_rate"] < 1 and tuned["ci_low"] <= tuned["mean"] <= tuned["ci_high"]
    table = (out / "table.md").read_text()
    assert "| tuned - base |" in table and "| again |" in table
    expected = image_grid(
        images=[np.zeros((32, 32, 3), np.uint8)] * 9, captions=[""] * 9, columns=3, cell=128, row_titles=prompts[:3]
    )  # each row under its prompt
    with Image.open(out / "grid.png") as grid:
        assert grid.size == expected.shape[1::-1]  # 3 prompts (rows) x 3 policies (columns)


def test_text_prompts_and_specs(tmp_path, tuned_policy):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle left of a blue square\n\n  a green star above a red circle \n")
    assert read_prompts(path) == (
        ["a red circle left of a blue square", "a green star above a red circle"],
        [{"line": 1}, {"line": 3}],
    )
    assert parse_policy_spec("tiny:3").source.tiny_seed == 3 and parse_policy_spec("tiny").name == "tiny"
    assert parse_policy_spec(f"ft={tuned_policy}", dtype="bfloat16").source.path == tuned_policy
    assert (
        isinstance(parse_reward_spec("strict=rule"), RuleReward) and parse_reward_spec("strict=rule").name == "strict"
    )
    assert parse_reward_spec("toy_rewards:LeftRed").name == "left_red"
    with pytest.warns(FutureWarning, match="dotted plug-in form is deprecated; write toy_rewards:LeftRed"):
        assert parse_reward_spec("toy_rewards.LeftRed").name == "left_red"  # the old spelling still works
    assert isinstance(parse_reward_spec("strict"), StrictReward) and parse_reward_spec("j=strict").name == "j"
    for bad in ("tiny:x", str(tmp_path)):
        with pytest.raises(SpecError):
            parse_policy_spec(bad)
    for bad in ("nope", "spatialscore:/no/such/folder", "toy_rewards:Missing", "json:JSONDecoder", "toy_rewards:1x"):
        with pytest.raises(SpecError):
            parse_reward_spec(bad)
    with pytest.raises(SystemExit):
        spatialrl_main(
            [
                "evaluate",
                "--policy",
                "tiny",
                "--policy",
                "tiny",
                "--prompts",
                str(path),
                "--reward",
                "rule",
                "--out",
                str(tmp_path / "x"),
            ]
        )


def test_text_prompts_split_only_at_newlines(tmp_path):
    """U+2028, U+2029 and U+0085 are line breaks to ``str.splitlines`` but may sit inside a prompt."""
    path = tmp_path / "prompts.txt"
    path.write_bytes("a red cup\u2028left of a vase\r\na cat\x85above a box\n\na dog\u2029right of a bike\n".encode())
    assert read_prompts(path) == (
        ["a red cup\u2028left of a vase", "a cat\x85above a box", "a dog\u2029right of a bike"],
        [{"line": 1}, {"line": 2}, {"line": 4}],
    )


def test_bootstrap_mean_ci():
    values = np.array([0.0, 1.0, 2.0, 3.0])
    resamples = np.random.default_rng(0).integers(0, 4, size=(500, 4))
    mean, low, high = bootstrap_mean_ci(values, resamples=resamples)
    assert mean == 1.5 and 0 <= low < mean < high <= 3
    assert bootstrap_mean_ci(np.full(4, 2.0), resamples=resamples) == (2.0, 2.0, 2.0)
    assert np.isnan(bootstrap_mean_ci(values, resamples=None)[1])


def test_grid_shows_several_samples_per_policy_under_each_prompt(tmp_path):
    prompts = ["a red circle to the left of a blue square", "a red square to the right of a blue circle"]
    evaluate_policies(
        policies=[PolicySpec("a", FluxSource()), PolicySpec("b", FluxSource(tiny_seed=1))],
        prompts=prompts,
        rewards=[StrictReward()],
        samples_per_prompt=3,
        grid_samples=2,
        bootstrap=0,
        out_dir=tmp_path,
        **FAST,
    )
    expected = image_grid(
        images=[np.zeros((32, 32, 3), np.uint8)] * 8, captions=[""] * 8, columns=4, cell=64, row_titles=prompts
    )  # 2 prompts x (2 policies x 2 samples)
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == expected.shape[1::-1]
    with pytest.raises(ValueError, match="grid_samples"):
        evaluate_policies(
            policies=[PolicySpec("a", FluxSource())], prompts=prompts, rewards=[StrictReward()], grid_samples=0, **FAST
        )


def test_export_records_the_sampling_settings(tuned_policy):
    recorded = json.loads((Path(tuned_policy) / SETTINGS_FILE).read_text())
    lora = Path(tuned_policy) / "lora" / "pytorch_lora_weights.safetensors"
    assert recorded == {
        "max_sequence_length": 512,
        "height": 32,
        "width": 32,
        "num_steps": 2,  # eval's 2, not 3
        "weights_sha256": folder_sha256(tuned_policy),
    }
    assert recorded["weights_sha256"]["lora/pytorch_lora_weights.safetensors"] == file_sha256(lora)
    sft = FlowMatchingModule(height=32, width=48, val_steps=5)
    assert sampling_settings(sft) == {"height": 32, "width": 48, "num_steps": 5}
    assert sampling_settings(L.LightningModule()) == {}


def test_cli_samples_at_the_recorded_size_unless_told(tmp_path, tuned_policy, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    common = [
        "evaluate",
        "--policy",
        "base=tiny",
        "--policy",
        f"tuned={tuned_policy}",
        "--prompts",
        str(prompts),
        "--reward",
        "toy_rewards:LeftRed",
        "--samples-per-prompt",
        "1",
        "--bootstrap",
        "0",
    ]
    assert spatialrl_main([*common, "--out", str(tmp_path / "a")]) == 0
    settings = json.loads((tmp_path / "a" / "results.json").read_text())["settings"]
    assert (settings["height"], settings["width"], settings["num_steps"]) == (32, 32, 2)
    assert settings["sampling_from"] == dict.fromkeys(("height", "width", "num_steps"), "recorded by tuned")
    err = capsys.readouterr().err
    assert (
        "sampling height 32 (recorded by tuned), width 32 (recorded by tuned), ODE steps 2 (recorded by tuned)" in err
    )
    assert "policy 1/2 base" in err and "policy 2/2 tuned" in err and "1/1" in err  # a bar per policy, over images

    assert spatialrl_main([*common, "--out", str(tmp_path / "b"), "--steps", "1", "--no-progress"]) == 0
    settings = json.loads((tmp_path / "b" / "results.json").read_text())["settings"]
    assert (settings["height"], settings["num_steps"]) == (32, 1)  # a flag wins
    assert settings["sampling_from"] == {
        "height": "recorded by tuned",
        "width": "recorded by tuned",
        "num_steps": "given",
    }
    err = capsys.readouterr().err
    assert "ODE steps 1 (given)" in err and "policy 1/2" not in err


def test_policies_that_recorded_different_sizes_need_explicit_flags(tmp_path, tuned_policy, capsys):
    other = tmp_path / "other"
    shutil.copytree(Path(tuned_policy) / "transformer", other / "transformer")
    (other / SETTINGS_FILE).write_text(
        json.dumps({"max_sequence_length": 512, "height": 64, "width": 32, "num_steps": 2})
    )
    policies = [parse_policy_spec(f"a={tuned_policy}"), parse_policy_spec(f"b={other}"), parse_policy_spec("tiny")]
    with pytest.raises(SpecError, match=r"height a=32, b=64 \(give --height\)$"):
        resolve_sampling(policies)
    assert resolve_sampling(policies, height=48) == (
        {"height": 48, "width": 32, "num_steps": 2},
        {"height": "given", "width": "recorded by a, b", "num_steps": "recorded by a, b"},
    )
    assert resolve_sampling([parse_policy_spec("tiny")]) == (
        {"height": 512, "width": 512, "num_steps": 28},
        dict.fromkeys(("height", "width", "num_steps"), "default"),
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    with pytest.raises(SystemExit):
        spatialrl_main(
            [
                "evaluate",
                "--policy",
                f"a={tuned_policy}",
                "--policy",
                f"b={other}",
                "--prompts",
                str(prompts),
                "--reward",
                "toy_rewards:LeftRed",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert "height a=32, b=64 (give --height)" in capsys.readouterr().err
    (other / SETTINGS_FILE).write_text(json.dumps({"height": "64"}))
    with pytest.raises(SpecError, match="height must be a positive integer"):
        resolve_sampling(policies)

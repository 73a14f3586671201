"""SpatialScore's export is usable without this package: a peft adapter folder plus the head, a merged Qwen2.5-VL
checkpoint that stock transformers loads, a hub model card, and README's plain-transformers recipe reproducing
``score()``; folders of the single-file layout still load."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
)

from spatialscore.callbacks import ExportSpatialScore
from spatialscore.cli import main as spatialscore_main
from spatialscore.data.datamodule import PreferenceDataModule
from spatialscore.files import file_sha256
from spatialscore.imports import without_bitsandbytes
from spatialscore.model import RewardLoraConfig, SpatialScore, SpatialScoreConfig
from spatialscore.module import SpatialScoreModule

with without_bitsandbytes():
    from peft import PeftModel

README = Path(__file__).resolve().parents[2] / "README.md"
PROMPT = "a red circle to the left of a blue square"


def random_model(**overrides) -> SpatialScore:
    """A tiny SpatialScore (rank 4, alpha 8) whose trained weights are random, so every part matters."""
    torch.manual_seed(0)
    model = SpatialScore.build(SpatialScoreConfig(lora=RewardLoraConfig(rank=4, alpha=8.0), **overrides))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_A" not in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[SpatialScore, Path]:
    """A model with LoRA and a fully trained vision merger, and its export."""
    model = random_model(train_vision_merger=True)
    folder = tmp_path_factory.mktemp("spatialscore") / "export"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (height, width) in enumerate([(64, 64), (64, 96), (80, 48)]):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def head_scores(hidden: torch.Tensor, head: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, sigma)`` from reward-token states, by the schema README documents for reward_head.safetensors."""
    z = torch.nn.functional.silu(hidden.float() @ head["head.net.0.weight"].T + head["head.net.0.bias"])
    z = z @ head["head.net.2.weight"].T
    return z[:, 0], torch.nn.functional.softplus(z[:, 1] + head["head.log_sigma_bias"])


@pytest.mark.parity
def test_adapter_folder_loads_with_stock_peft(saved, image_paths):
    model, folder = saved
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "reward_head.safetensors",
        "trained_backbone.safetensors",
    } <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (4, 8.0, "base")
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder / "base").eval()
    batch = model.encoder(prompts=[PROMPT] * 3, images=image_paths)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(base, folder).eval()
    assert not [w for w in caught if "adapter" in str(w.message).lower() and "key" in str(w.message).lower()]
    head = load_file(str(folder / "reward_head.safetensors"))
    reward_id = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<|reward|>")
    assert reward_id == model.reward_token_id
    result = base.load_state_dict(load_file(str(folder / "trained_backbone.safetensors")), strict=False)
    assert not result.unexpected_keys
    with torch.no_grad():
        base.get_input_embeddings().weight[reward_id] = head["reward_embedding"]

    def scores() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            hidden = peft_model.base_model.model.model(**batch, use_cache=False).last_hidden_state
        last = batch["attention_mask"].sum(-1) - 1
        return head_scores(hidden[torch.arange(3), last], head)

    mu, sigma = scores()
    expected = model.score(prompts=[PROMPT] * 3, images=image_paths)
    torch.testing.assert_close(mu, expected.mu, rtol=0, atol=1e-5)
    torch.testing.assert_close(sigma, expected.sigma, rtol=0, atol=1e-5)
    with peft_model.disable_adapter():
        without_lora, _ = scores()
    assert not torch.allclose(without_lora, mu, atol=1e-4)  # the adapter was loaded and is active


def test_single_file_exports_still_load(saved, image_paths, tmp_path):
    """Folders written before the peft layout: every trained weight in spatialscore.safetensors under the
    model's own names, with the hash as one string (or no hash at all)."""
    import shutil

    model, folder = saved
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "reward_head.safetensors",
        "trained_backbone.safetensors",
        "README.md",
    ):
        (legacy / name).unlink()
    save_file(model.trainable_state_dict(), str(legacy / "spatialscore.safetensors"))
    config = json.loads((legacy / "spatialscore_config.json").read_text())
    config["weights_sha256"] = file_sha256(legacy / "spatialscore.safetensors")
    (legacy / "spatialscore_config.json").write_text(json.dumps(config))
    expected = model.score(prompts=[PROMPT] * 3, images=image_paths)
    torch.testing.assert_close(
        SpatialScore.from_pretrained(legacy).score(prompts=[PROMPT] * 3, images=image_paths), expected, rtol=0, atol=0
    )
    del config["weights_sha256"]
    (legacy / "spatialscore_config.json").write_text(json.dumps(config))
    SpatialScore.from_pretrained(legacy)
    out = tmp_path / "converted"  # `spatialscore export` turns it into the current layout
    assert spatialscore_main(["export", "--model", str(legacy), "--out", str(out)]) == 0
    assert (out / "adapter_model.safetensors").is_file() and not (out / "spatialscore.safetensors").exists()
    torch.testing.assert_close(
        SpatialScore.from_pretrained(out).score(prompts=[PROMPT] * 3, images=image_paths), expected, rtol=0, atol=0
    )


def readme_recipe() -> str:
    """The plain-transformers recipe, exactly as README shows it."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- recipe: score_with_transformers\.py[^\n]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost the score_with_transformers.py recipe block"
    return match.group(1)


@pytest.fixture(scope="module")
def merged(saved, synthetic_dir, tmp_path_factory) -> tuple[Path, dict]:
    """The export benchmarked on held-out pairs, then written with --merged and the benchmark's accuracy."""
    from spatialscore.benchmark import cli_main as benchmark_main

    _, folder = saved
    out = tmp_path_factory.mktemp("merged")
    assert (
        benchmark_main(
            [
                "--pairs",
                str(synthetic_dir / "test.jsonl"),
                "--scorer",
                f"ours=spatialscore:{folder}",
                "--scorer",
                "constant",
                "--out",
                str(out / "bench"),
                "--bootstrap",
                "200",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    results = json.loads((out / "bench" / "results.json").read_text())
    args = [
        "export",
        "--model",
        str(folder),
        "--out",
        str(out / "merged"),
        "--merged",
        "--benchmark",
        str(out / "bench" / "results.json"),
        "--scorer",
        "ours",
    ]
    assert spatialscore_main(args) == 0
    return out / "merged", results


def test_merged_checkpoint_loads_with_stock_transformers(saved, merged):
    model, _ = saved
    folder, _ = merged
    loaded, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    auto, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert type(auto) is Qwen2_5_VLForConditionalGeneration and not info["missing_keys"] and not info["unexpected_keys"]
    bare, info = AutoModel.from_pretrained(folder, output_loading_info=True)  # the model without its LM head
    assert type(bare) is Qwen2_5_VLModel and not info["missing_keys"]
    assert set(info["unexpected_keys"]) == {"lm_head.weight"}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    reward_id = tokenizer.convert_tokens_to_ids("<|reward|>")
    with safe_open(str(folder / "reward_head.safetensors"), "pt") as f:
        metadata = f.metadata()
        row = f.get_tensor("reward_embedding")
    assert metadata["schema"] == "spatialscore-reward-head/1" and int(metadata["reward_token_id"]) == reward_id
    assert torch.equal(loaded.get_input_embeddings().weight[reward_id], row)  # the reward row is in the table
    text = metadata["text_before_prompt"] + PROMPT + metadata["text_after_prompt"]
    assert text == model.config.template.render(PROMPT)
    merger = loaded.model.visual.merger.mlp[0].weight  # fully trained part applied
    torch.testing.assert_close(merger, model.backbone.visual.merger.mlp[0].weight, rtol=0, atol=0)


def test_merged_checkpoint_lists_the_sha256_of_every_weights_file_for_sha256sum(merged, tmp_path):
    """``SHA256SUMS`` in coreutils' format: ``sha256sum -c`` passes on the export and fails on a flipped byte."""
    import shutil
    import subprocess

    folder, _ = merged
    listed = [line.split("  ", 1)[1] for line in (folder / "SHA256SUMS").read_text().splitlines()]
    assert sorted(listed) == sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*.safetensors"))
    assert "reward_head.safetensors" in listed
    check = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    copy = tmp_path / "merged"
    shutil.copytree(folder, copy)
    weights = copy / next(name for name in listed if name != "reward_head.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    check = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=copy, capture_output=True, text=True)
    assert check.returncode != 0 and weights.name in check.stdout


@pytest.mark.parity
def test_readme_recipe_reproduces_score_with_plain_transformers(saved, merged, image_paths, tmp_path):
    model, _ = saved
    folder, _ = merged
    recipe = readme_recipe()
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(recipe))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert imported == {"json", "sys", "torch", "PIL", "safetensors", "transformers"}  # no spatialscore
    script = tmp_path / "score_with_transformers.py"
    script.write_text(recipe)
    run = subprocess.run(
        [sys.executable, str(script), str(folder), PROMPT, *image_paths],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    expected = model.score(prompts=[PROMPT] * 3, images=image_paths)
    assert [line["image"] for line in lines] == image_paths
    torch.testing.assert_close(torch.tensor([line["score"] for line in lines]), expected.mu, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor([line["sigma"] for line in lines]), expected.sigma, rtol=0, atol=1e-5)


def test_model_card_states_base_template_scale_and_the_benchmark_accuracy(saved, merged):
    model, _ = saved
    folder, results = merged
    card = ModelCard.load(folder / "README.md")
    overall = results["scorers"]["ours"]["overall"]
    block = card.data.to_dict()["spatialscore"]
    assert card.data.library_name == "transformers" and card.data.base_model_relation == "merge"
    assert block["held_out"]["accuracy"] == overall["accuracy"]
    assert (block["held_out"]["ci_low"], block["held_out"]["ci_high"]) == (overall["ci_low"], overall["ci_high"])
    assert block["held_out"]["num_pairs"] == overall["n"] == results["num_pairs"]
    before, after = model.config.template.parts()
    assert f"{before}{{prompt}}{after}" in card.text
    assert f"95% CI [{overall['ci_low']:.3f}, {overall['ci_high']:.3f}]" in card.text
    assert "sigmoid(mu_a - mu_b)" in card.text


def test_fit_export_card_records_data_and_validation_without_inventing_a_ci(synthetic_dir, tmp_path):
    module = SpatialScoreModule(model=SpatialScoreConfig(lora=RewardLoraConfig(rank=4)), num_logged_pairs=0)
    data = PreferenceDataModule(
        train=str(synthetic_dir / "train.jsonl"), val=str(synthetic_dir / "val.jsonl"), batch_size=8, check_images=False
    )
    trainer = L.Trainer(
        max_steps=2,
        val_check_interval=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ExportSpatialScore(str(tmp_path / "export"))],
    )
    trainer.fit(module, datamodule=data)
    card = ModelCard.load(tmp_path / "export" / "README.md")
    block = card.data.to_dict()["spatialscore"]
    pairs = len(data.manifests["train"].records)  # the 48 generated pairs and their mirrors
    assert pairs == 96 and block["training_data"] == f"pair manifest {synthetic_dir / 'train.jsonl'} ({pairs} pairs)"
    assert block["loss"] == "bt"
    held_out = block["held_out"]
    assert held_out["num_pairs"] == 8 and held_out["ci_low"] is None
    assert held_out["source"] == f"validation split {synthetic_dir / 'val.jsonl'} at step 2"
    assert "CI unknown (none computed)" in card.text
    assert card.data.library_name == "peft" and card.data.base_model is None  # a tiny base: described, not named


def test_export_refuses_a_used_folder_and_a_missing_scorer(saved, tmp_path, capsys):
    _, folder = saved
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert spatialscore_main(["export", "--model", str(folder), "--out", str(used)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"scorers": {"a": {}, "b": {}}}))
    assert (
        spatialscore_main(
            ["export", "--model", str(folder), "--out", str(tmp_path / "new"), "--benchmark", str(results)]
        )
        == 2
    )
    assert "holds scorers a, b: name one (--scorer)" in capsys.readouterr().err
    assert (used / "keep.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_export_help_is_quiet(tmp_path):
    from cli_runner import run_module

    proc = run_module("spatialscore.cli", "export", "--help", cwd=tmp_path)
    assert "--merged" in proc.stdout and "--benchmark" in proc.stdout
    assert proc.stderr.strip() == ""


def test_a_missing_weights_file_is_named_before_anything_loads(saved, tmp_path):
    import shutil

    _, folder = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    config, files = SpatialScore.weight_files(broken)
    assert config.train_vision_merger and set(files) == {
        broken / "reward_head.safetensors",
        broken / "adapter_model.safetensors",
        broken / "trained_backbone.safetensors",
    }
    assert all(sha == file_sha256(path) for path, sha in files.items())
    (broken / "adapter_model.safetensors").unlink()
    for check in (SpatialScore.weight_files, SpatialScore.from_pretrained):
        with pytest.raises(FileNotFoundError, match=re.escape(str(broken / "adapter_model.safetensors"))):
            check(broken)


def test_training_data_names_procedural_pairs_with_their_generator_settings(tmp_path):
    from spatialscore.callbacks import training_data
    from spatialscore.data.datamodule import SyntheticData

    spec = SyntheticData(directory=str(tmp_path / "synthetic"), train_pairs=10, seed=4)
    text = training_data(PreferenceDataModule(synthetic=spec))
    assert text.startswith(f"pair manifest {tmp_path / 'synthetic' / 'train.jsonl'}, procedural scenes generated with ")
    assert json.loads(text.split("generated with ", 1)[1])["train_pairs"] == 10
    assert training_data(L.LightningDataModule()) is None


def test_a_bf16_model_merges_to_its_fp32_merge_rounded_once_to_bf16(tmp_path):
    """``--merged`` of a bfloat16 SpatialScore: every LoRA-targeted weight of the checkpoint is ``W + (alpha / r)
    B A`` in bf16, within one bf16 rounding of that merge computed in fp32 from the same weights; the other trained
    weights are stored as the model holds them."""
    from spatialscore.backbone import BackboneConfig
    from spatialscore.export import export_merged

    model = random_model(backbone=BackboneConfig(dtype="bfloat16"))
    model.save_pretrained(tmp_path / "export")
    out = export_merged(model=tmp_path / "export", out=tmp_path / "merged")
    merged = dict(Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.bfloat16).named_parameters())
    checked = 0
    for name, module in model.backbone.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        base = module.base_layer.weight
        delta = module.lora_B["default"].weight.float() @ module.lora_A["default"].weight.float()
        expected = base.float() + module.scaling["default"] * delta
        key = f"model.{name}.weight"  # the backbone is the ForConditionalGeneration's .model
        actual = merged[key]
        assert base.dtype == actual.dtype == torch.bfloat16
        assert (actual.float() - base.float()).abs().max() > 0  # the adapter is in it
        torch.testing.assert_close(actual.float(), expected, rtol=2**-8, atol=1e-6)
        checked += 1
    assert checked >= 4


def test_a_qlora_model_merges_its_adapter_into_the_full_precision_base(tmp_path):
    """``--merged`` of a 4-bit QLoRA SpatialScore: the base is loaded unquantized, so each LoRA-targeted weight of
    the checkpoint is the base checkpoint's full-precision ``W + (alpha / r) B A`` (not the NF4-rounded one)."""
    import bitsandbytes as bnb

    from spatialscore.backbone import BackboneConfig
    from spatialscore.export import export_merged

    model = random_model(backbone=BackboneConfig(quantization="4bit"))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.backbone.modules())
    model.save_pretrained(tmp_path / "export")
    out = export_merged(model=tmp_path / "export", out=tmp_path / "merged")
    merged = dict(Qwen2_5_VLForConditionalGeneration.from_pretrained(out).named_parameters())
    base = dict(Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "export" / "base").named_parameters())
    checked = 0
    for name, module in model.backbone.named_modules():
        if not hasattr(module, "lora_A") or not isinstance(module.base_layer, bnb.nn.Linear4bit):
            continue
        key = f"model.{name}.weight"
        delta = module.lora_B["default"].weight.float() @ module.lora_A["default"].weight.float()
        expected = base[key].float() + module.scaling["default"] * delta
        assert merged[key].dtype == torch.float32 and (merged[key] - base[key]).abs().max() > 0
        torch.testing.assert_close(merged[key], expected, rtol=1e-6, atol=1e-7)
        checked += 1
    assert checked >= 4

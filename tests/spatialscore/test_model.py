"""SpatialScore on a tiny Qwen2.5-VL: LoRA scoping, reward token, scoring, save/load, QLoRA, checkpointing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from spatialscore.backbone import BackboneConfig
from spatialscore.data.manifest import MAX_PROMPT_CHARS
from spatialscore.encode import PromptTemplate
from spatialscore.losses import bradley_terry_loss
from spatialscore.model import RewardLoraConfig, SpatialScore, SpatialScoreConfig

PROMPTS = ["a red circle to the left of a blue square", "a green triangle above a yellow circle in the corner"]


def make_model(**overrides) -> SpatialScore:
    torch.manual_seed(0)
    return SpatialScore.build(SpatialScoreConfig(**overrides))


def images(n: int, seed: int = 0, size: int = 64) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def train_steps(model: SpatialScore, steps: int = 2, lr: float = 1e-2) -> list[float]:
    """A few Bradley-Terry steps on fixed random pairs; returns the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    pics = images(4, seed=3)
    batch = model.encoder(prompts=PROMPTS * 2, images=pics)
    losses = []
    model.train()
    for _ in range(steps):
        out = model(**batch)
        loss = bradley_terry_loss(chosen=out.mu[:2], rejected=out.mu[2:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_lora_only_on_language_model_linears():
    model = make_model(lora=RewardLoraConfig(rank=4))
    lora_modules = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert lora_modules, "no LoRA layer injected"
    assert all(".language_model.layers." in n for n in lora_modules)
    assert not any("visual" in n for n in lora_modules)
    layers = len(model.backbone.language_model.layers)
    assert len(lora_modules) == 7 * layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("head.") or n == "reward_embedding" for n in trainable)


def test_vision_training_flags():
    merger = make_model(train_vision_merger=True)
    tower = make_model(train_vision_tower=True)
    grad = lambda m, prefix: [p.requires_grad for n, p in m.named_parameters() if n.startswith(prefix)]  # noqa: E731
    assert all(grad(merger, "backbone.visual.merger")) and not any(grad(merger, "backbone.visual.blocks"))
    assert all(grad(tower, "backbone.visual.blocks")) and all(grad(tower, "backbone.visual.patch_embed"))


def test_only_the_reward_token_row_learns():
    model = make_model(lora=RewardLoraConfig(rank=4))
    table = model.backbone.get_input_embeddings().weight.detach().clone()
    token = model.reward_embedding.detach().clone()
    train_steps(model)
    assert torch.equal(model.backbone.get_input_embeddings().weight, table)
    assert not torch.equal(model.reward_embedding.detach(), token)
    with torch.no_grad():
        before = model.score(prompts=PROMPTS, images=images(2)).mu
        model.reward_embedding.add_(1.0)
        after = model.score(prompts=PROMPTS, images=images(2)).mu
    assert not torch.allclose(before, after), "the reward embedding does not reach the model"


def test_training_reduces_loss_and_changes_lora():
    model = make_model(lora=RewardLoraConfig(rank=4))
    lora_b = model.backbone.language_model.layers[0].self_attn.q_proj.lora_B["default"].weight.detach().clone()
    losses = train_steps(model, steps=20, lr=3e-3)
    assert losses[-1] < losses[0] - 0.1
    assert not torch.equal(model.backbone.language_model.layers[0].self_attn.q_proj.lora_B["default"].weight, lora_b)


def test_batched_score_equals_single_and_ignores_padding():
    model = make_model()
    pics = images(5, seed=1)
    prompts = [PROMPTS[i % 2] + ("" if i % 2 else " and a pink star behind them") for i in range(5)]
    batched = model.score(prompts=prompts, images=pics, batch_size=5)
    single = torch.cat([model.score(prompts=[p], images=[i]).mu for p, i in zip(prompts, pics, strict=True)])
    torch.testing.assert_close(batched.mu, single, rtol=1e-4, atol=1e-5)
    # batches are formed by prompt length (2 long, then short and long): results still come back in input order
    torch.testing.assert_close(model.score(prompts=prompts, images=pics, batch_size=2).mu, single, rtol=1e-4, atol=1e-5)
    tensors = [torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255 for p in pics]
    torch.testing.assert_close(model.score(prompts=prompts, images=tensors).mu, batched.mu)
    assert batched.sigma.shape == (5,) and (batched.sigma > 0).all()


def test_score_refuses_an_overlong_prompt_by_index():
    model = make_model()
    long = "a red circle to the left of a blue square " * 2500  # 105,000 characters
    with pytest.raises(ValueError, match=rf"prompts\[1\] has {len(long)} characters; at most {MAX_PROMPT_CHARS}"):
        model.score(prompts=[PROMPTS[0], long], images=images(2))
    with pytest.raises(ValueError, match=rf"prompts\[0\] has {MAX_PROMPT_CHARS + 1} characters"):
        model.score(prompts=["x" * (MAX_PROMPT_CHARS + 1)], images=images(1))
    with pytest.raises(TypeError, match="one string"):
        model.score(prompts=PROMPTS[0], images=images(len(PROMPTS[0])))


def test_multimodal_rope_is_used():
    """mm_token_type_ids must reach the model; without them 3D M-RoPE silently falls back to 1D positions."""
    model = make_model()
    batch = model.encoder(prompts=PROMPTS, images=images(2))
    with torch.no_grad():
        full = model(**batch).mu
        batch["mm_token_type_ids"] = torch.zeros_like(batch["mm_token_type_ids"])
        flat = model(**batch).mu
    assert not torch.allclose(full, flat)


def test_save_and_load_round_trip(tmp_path):
    model = make_model(lora=RewardLoraConfig(rank=4), train_vision_merger=True)
    train_steps(model)
    model.save_pretrained(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "reward_head.safetensors",
        "spatialscore_config.json",
        "trained_backbone.safetensors",
        "README.md",
    } <= files  # the merger was trained fully
    assert "spatialscore.safetensors" not in files
    assert not [p for p in (tmp_path / "ckpt").rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")]
    loaded = SpatialScore.from_pretrained(tmp_path / "ckpt")
    pics = images(3, seed=9)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    torch.testing.assert_close(
        loaded.score(prompts=prompts, images=pics), model.score(prompts=prompts, images=pics), rtol=0, atol=0
    )


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a SpatialScore folder"):
        SpatialScore.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SpatialScore.build(SpatialScoreConfig(backbone=BackboneConfig(path=str(tmp_path))))


def test_activation_checkpointing_same_loss_and_grads():
    results = []
    for checkpointing in (False, True):
        model = make_model(lora=RewardLoraConfig(rank=4), activation_checkpointing=checkpointing)
        model.train()
        batch = model.encoder(prompts=PROMPTS * 2, images=images(4, seed=5))
        out = model(**batch)
        loss = (
            bradley_terry_loss(chosen=out.mu[:2], rejected=out.mu[2:]) + out.mu.square().mean() + out.log_sigma.mean()
        )
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n or "head" in n)
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6)


def test_bf16_backbone_keeps_fp32_trainable_weights():
    """LoRA, reward token and head are fp32 master weights over a bf16 base: a 1e-6 Adam step still moves a LoRA
    weight of ~1e-2, which bf16 storage (relative resolution 2^-8) would round away."""
    model = make_model(backbone=BackboneConfig(dtype="bfloat16"), lora=RewardLoraConfig(rank=4))
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n or n.startswith("head.") or n == "reward_embedding"} == {
        torch.float32
    }
    assert {d for n, d in dtypes.items() if "base_layer" in n} == {torch.bfloat16}
    train_steps(model, steps=1, lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    assert all(np.isfinite(train_steps(model, steps=1, lr=1e-6)))
    moved = [n for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p.detach(), before[n])]
    assert len(moved) == len(before)


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_qlora_trains_on_cpu_with_evaluation_between_steps(quantization):
    import bitsandbytes as bnb

    model = make_model(
        backbone=BackboneConfig(quantization=quantization), lora=RewardLoraConfig(rank=4), template=PromptTemplate()
    )
    kind = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    assert any(isinstance(m, kind) for m in model.backbone.language_model.modules())
    assert not any(isinstance(m, kind) for m in model.backbone.visual.modules())
    first = copy.deepcopy({n: p.detach() for n, p in model.named_parameters() if "lora_B" in n})
    train_steps(model, steps=1)
    model.score(prompts=PROMPTS, images=images(2))
    losses = train_steps(model, steps=2)
    assert all(np.isfinite(losses))
    assert any(not torch.equal(p.detach(), first[n]) for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        ({"lr": -1e-4}, r"optimizer.lr must be finite and >= 0, got -0.0001"),
        ({"lr": float("nan")}, r"optimizer.lr must be finite"),
        ({"group_lr": {"head": float("inf")}}, r"optimizer.group_lr.head must be finite"),
        ({"group_lr": {"token": -1.0}}, r"optimizer.group_lr.token must be finite and >= 0"),
        ({"group_lr": {"vision": -1.0}}, r"optimizer.group_lr.vision must be finite and >= 0"),
    ],
)
def test_module_refuses_bad_learning_rates_by_name(optimizer, message):
    from spatialscore.module import OptimizerConfig, SpatialScoreModule

    with pytest.raises(ValueError, match=message):
        SpatialScoreModule(optimizer=OptimizerConfig(**optimizer))
    with pytest.raises(ValueError, match=message):  # as read back from a checkpoint's hyper-parameters
        SpatialScoreModule(optimizer=optimizer)


def test_module_trains_in_train_mode():
    """HF loads models in eval mode; training must not inherit it (LoRA dropout, activation checkpointing)."""
    from spatialscore.module import SpatialScoreModule

    module = SpatialScoreModule(
        model=SpatialScoreConfig(lora=RewardLoraConfig(rank=4, dropout=0.1), activation_checkpointing=True)
    )
    module.configure_model()
    assert all(m.training for m in module.model.modules())


def test_save_records_the_weights_sha256_and_load_refuses_a_flipped_byte(tmp_path):
    import hashlib
    import json
    import re

    model = make_model(lora=RewardLoraConfig(rank=4))
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "spatialscore_config.json").read_text())
    hashes = config["weights_sha256"]
    assert set(hashes) == {"adapter_model.safetensors", "reward_head.safetensors"}
    for name, sha in hashes.items():
        assert sha == hashlib.sha256((tmp_path / "ckpt" / name).read_bytes()).hexdigest()
    SpatialScore.from_pretrained(tmp_path / "ckpt")  # the recorded hashes match
    for name, sha in hashes.items():
        weights = tmp_path / "ckpt" / name
        original = weights.read_bytes()
        data = bytearray(original)
        data[-5] ^= 0x01  # inside the last tensor's bytes: safetensors itself would load it without complaint
        weights.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=re.escape(str(weights)) + rf": SHA-256 [0-9a-f]{{64}} differs from {sha}"):
            SpatialScore.from_pretrained(tmp_path / "ckpt")
        weights.write_bytes(original)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: "{not json", r"invalid JSON"),
        (lambda raw: {**raw, "head_hidden_size": "big"}, r"field 'head_hidden_size' must be int, got str 'big'"),
        (lambda raw: {**raw, "lora": {**raw["lora"], "rank": 4.5}}, r"field 'lora.rank' must be int, got float 4.5"),
        (lambda raw: {**raw, "backbone": {**raw["backbone"], "colour": "red"}}, r"unknown field 'backbone.colour'"),
        (
            lambda raw: {**raw, "backbone": {**raw["backbone"], "dtype": "float8"}},
            r"field 'backbone.dtype' must be Literal\['float32', 'bfloat16', 'float16'\], got str 'float8'",
        ),
        (lambda raw: {**raw, "lora": None}, r"field 'lora' must be a JSON object, got NoneType"),
        (lambda raw: {**raw, "weights_sha256": 5}, r"field 'weights_sha256' must be 64 lowercase hex digits"),
        (lambda raw: [raw], r"must hold a JSON object, got list"),
    ],
    ids=["json", "type", "nested-type", "unknown", "literal", "null-object", "hash", "not-object"],
)
def test_tampered_config_is_refused_naming_file_and_field(tmp_path, edit, message):
    import json
    import re

    make_model().save_pretrained(tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "spatialscore_config.json"
    edited = edit(json.loads(config_file.read_text()))
    config_file.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(ValueError, match=re.escape(str(config_file)) + ": .*" + message):
        SpatialScore.from_pretrained(tmp_path / "ckpt")


def test_score_refuses_a_non_positive_batch_size():
    model = make_model()
    for size in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match=rf"batch_size must be a positive integer, got {size!r}"):
            model.score(prompts=PROMPTS, images=images(2), batch_size=size)


def test_base_checkpoint_is_read_from_safetensors_only(tmp_path):
    """A base folder holding only pickled weights (pytorch_model.bin) is refused, never unpickled."""
    import shutil

    from safetensors.torch import load_file

    from spatialscore.backbone import resolve_backbone_path

    base = tmp_path / "base"
    shutil.copytree(resolve_backbone_path(BackboneConfig()), base)
    torch.save(load_file(str(base / "model.safetensors")), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    with pytest.raises(OSError, match="safetensors"):
        SpatialScore.build(SpatialScoreConfig(backbone=BackboneConfig(path=str(base))))

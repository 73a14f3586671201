"""The Spatial-RL export's LoRA is a standard diffusers FLUX LoRA: a stock FluxPipeline loads it at its trained
strength (alpha != rank), and load + fuse equals the merged transformer the export also writes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from spatialrl.callbacks import export_policy
from spatialrl.flux import SETTINGS_FILE, FluxSource
from spatialrl.lora import FluxLoraConfig
from spatialrl.sft import FlowMatchingModule
from spatialscore.files import file_sha256
from spatialscore.imports import without_bitsandbytes

with without_bitsandbytes():
    from diffusers import FluxPipeline

T5_LENGTH = 16
PROMPTS = ["a red circle to the left of a blue square", "a green star above a red circle"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny policy with a rank-4, alpha-8 adapter (scale 2) of random weights, exported."""
    module = FlowMatchingModule(policy=FluxSource(max_sequence_length=T5_LENGTH), lora=FluxLoraConfig(rank=4, alpha=8))
    module.configure_model()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in module.transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    folder = tmp_path_factory.mktemp("flux") / "export"
    export_policy(module, folder)
    return folder


@contextmanager
def diffusers_messages() -> Iterator[list[str]]:
    """Everything diffusers logs (its loggers do not propagate to the root logger) while the block runs."""
    messages: list[str] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def pipeline(path: Path) -> FluxPipeline:
    pipe = FluxPipeline.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def velocity(pipe: FluxPipeline) -> torch.Tensor:
    """The transformer's output on fixed inputs (2x2 packed tokens, as a 32 px image)."""
    generator = torch.Generator().manual_seed(0)
    config = pipe.transformer.config
    embeds, pooled, text_ids = pipe.encode_prompt(prompt=PROMPTS, prompt_2=None, max_sequence_length=T5_LENGTH)[:3]
    with torch.no_grad():
        return pipe.transformer(
            hidden_states=torch.randn(len(PROMPTS), 4, config.in_channels, generator=generator),
            timestep=torch.tensor([0.3, 0.8]),
            guidance=torch.full((len(PROMPTS),), 3.5),
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=torch.zeros(4, 3),
            return_dict=False,
        )[0]


def images(pipe: FluxPipeline) -> torch.Tensor:
    return pipe(
        prompt=PROMPTS,
        height=32,
        width=32,
        num_inference_steps=3,
        guidance_scale=3.5,
        output_type="pt",
        max_sequence_length=T5_LENGTH,
        generator=torch.Generator().manual_seed(5),
    ).images


@pytest.mark.parity
def test_stock_load_lora_weights_and_fuse_equal_the_merged_export(exported: Path) -> None:
    merged = pipeline(exported)  # the merged diffusers folder loads as before, the lora/ folder beside it
    base = pipeline(FluxSource().resolve())
    untouched = velocity(base)
    with diffusers_messages() as messages:
        base.load_lora_weights(exported / "lora")
    # the one message left is the truthful "no LoRA keys for CLIPTextModel" of a transformer-only LoRA; before,
    # the same call said so of FluxTransformer2DModel, loaded nothing and returned
    assert [m for m in messages if "CLIPTextModel" not in m] == []
    (config,) = base.transformer.peft_config.values()
    assert (config.r, config.lora_alpha) == (4, 8)  # the alpha came from the file's metadata, not rank
    loaded = velocity(base)
    assert not torch.allclose(loaded, untouched, atol=1e-3)  # the adapter is active
    torch.testing.assert_close(loaded, velocity(merged), rtol=0, atol=1e-5)
    base.fuse_lora()
    torch.testing.assert_close(velocity(base), velocity(merged), rtol=0, atol=1e-5)
    torch.testing.assert_close(images(base), images(merged), rtol=0, atol=1e-4)


def test_lora_file_is_diffusers_format_with_its_sha256_recorded(exported: Path) -> None:
    weights = exported / "lora" / "pytorch_lora_weights.safetensors"
    with safe_open(str(weights), "pt") as f:
        keys, metadata = list(f.keys()), json.loads(f.metadata()["lora_adapter_metadata"])
        dtypes = {f.get_tensor(key).dtype for key in keys}
    assert keys and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert dtypes == {torch.float32}
    assert (metadata["transformer.r"], metadata["transformer.lora_alpha"]) == (4, 8)
    recorded = json.loads((exported / SETTINGS_FILE).read_text())["weights_sha256"]
    assert recorded["lora/pytorch_lora_weights.safetensors"] == file_sha256(weights)
    every = {p.relative_to(exported).as_posix() for p in exported.glob("**/*.safetensors")}
    assert set(recorded) == every and {name.split("/")[0] for name in every} >= {"transformer", "vae", "lora"}


def test_a_changed_weights_file_of_the_export_is_refused_on_load(exported: Path, tmp_path: Path) -> None:
    """FluxSource checks every recorded SHA-256 before loading: one flipped byte or a missing file names the
    file, instead of loading other weights."""
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    FluxSource(path=str(copy)).load()  # intact: loads
    weights = next((copy / "transformer").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{weights.name}: SHA-256 .* differs .* recorded in .*spatialrl.json"):
        FluxSource(path=str(copy)).load()
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{weights.name}: missing"):
        FluxSource(path=str(copy)).load()


def test_save_lora_refuses_a_transformer_without_an_adapter(tmp_path: Path) -> None:
    from spatialrl.lora import save_lora

    with pytest.raises(ValueError, match="no LoRA adapter"):
        save_lora(FluxSource().load().transformer, tmp_path / "lora")
    assert not (tmp_path / "lora").exists()

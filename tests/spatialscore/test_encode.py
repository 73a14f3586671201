"""The vectorised encoder must reproduce the stock Qwen2.5-VL processor bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spatialscore.backbone import BackboneConfig, TinyBackboneConfig, load_processor, resolve_backbone_path
from spatialscore.encode import PromptTemplate, RewardInputEncoder, processor_encode, to_uint8_rgb

PROMPTS = [
    "a red circle to the left of a blue square",
    "from left to right: a green triangle, a yellow circle and a purple square; Zürich café ✓",
    "x",
]


@pytest.fixture(scope="module", params=[8, 14], ids=["patch8", "patch14"])
def processor(request):
    tiny = TinyBackboneConfig(patch_size=request.param, image_size=56 if request.param == 14 else 64)
    return load_processor(resolve_backbone_path(BackboneConfig(tiny=tiny)))


def random_images(rng: np.random.Generator, sizes: list[tuple[int, int]]) -> list[Image.Image]:
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.mark.parity
@pytest.mark.parametrize(
    "sizes",
    [[(64, 64)] * 6, [(56, 56)] * 6, [(37, 91), (64, 64), (120, 30), (64, 64), (200, 200), (13, 17)]],
    ids=["square", "other-square", "mixed-needs-resize"],
)
@pytest.mark.parametrize("template", [PromptTemplate(), PromptTemplate(system=None, instruction="")])
def test_bit_identical_to_processor(processor, sizes, template):
    rng = np.random.default_rng(len(sizes) + sizes[0][0])
    images = random_images(rng, sizes)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(images))]
    ours = RewardInputEncoder(processor, template=template)(prompts=prompts, images=images)
    ref = processor_encode(processor, template=template, prompts=prompts, images=images)
    assert set(ours) == set(ref)
    for key in ref:
        assert ours[key].dtype == ref[key].dtype, key
        assert torch.equal(ours[key], ref[key]), key


def test_reward_token_is_last_real_token(processor):
    encoder = RewardInputEncoder(processor)
    images = random_images(np.random.default_rng(0), [(64, 64)] * 3)
    batch = encoder(prompts=PROMPTS, images=images)
    last = batch["attention_mask"].sum(-1) - 1
    assert (batch["input_ids"][torch.arange(3), last] == encoder.reward_token_id).all()
    assert (batch["input_ids"] == encoder.reward_token_id).sum() == 3
    assert (batch["mm_token_type_ids"].sum(-1) == batch["image_grid_thw"].prod(-1) // 4).all()


def test_float_tensors_match_uint8():
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
    assert np.array_equal(to_uint8_rgb(tensor), array)
    assert np.array_equal(to_uint8_rgb(Image.fromarray(array)), array)
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_rgb(torch.full((3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        to_uint8_rgb(np.zeros((4, 4, 3), dtype=np.float32))


def test_length_mismatch_is_an_error(processor):
    with pytest.raises(ValueError, match="2 prompts but 1 images"):
        RewardInputEncoder(processor)(prompts=PROMPTS[:2], images=random_images(np.random.default_rng(0), [(8, 8)]))


def test_an_image_the_processor_refuses_is_named(processor, tmp_path):
    """Aspect ratio over 200: the processor's own error names no image; the encoder's names the file."""
    wide = tmp_path / "wide.png"
    Image.new("RGB", (201, 1)).save(wide)
    encoder = RewardInputEncoder(processor)
    with pytest.raises(ValueError, match=f"^{wide}: aspect ratio 201 \\(201x1\\) is over 200"):
        encoder(prompts=PROMPTS[:2], images=[Image.new("RGB", (1, 200)), wide])
    with pytest.raises(ValueError, match="^image 1 of the batch: aspect ratio 201"):
        encoder(prompts=PROMPTS[:2], images=[Image.new("RGB", (8, 8)), Image.new("RGB", (201, 1))])

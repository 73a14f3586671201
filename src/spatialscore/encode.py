"""Vectorised Qwen2.5-VL input encoding, bit-identical to the stock processor and several times faster.

The stock PIL image processor converts, rescales, normalises and patchifies one image at a time in float64
NumPy; at reward-model batch sizes that costs as much as a tiny training step. Rescale and normalise are
per-channel functions of the uint8 value, so :class:`RewardInputEncoder` computes them once as a 3x256 lookup
table (with the processor's own functions, hence the bit-identity), gathers, and patchifies the whole batch
with one reshape. Text is tokenised once per distinct prompt with a single ``<|image_pad|>`` placeholder that is
then expanded to the image's token count, which is what the processor's string expansion produces.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import PILImageResampling
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from spatialscore.backbone import REWARD_TOKEN, SpatialProcessor
from spatialscore.data.images import aspect_ratio_problem, open_rgb, to_rgb

ImageLike = Image.Image | np.ndarray | torch.Tensor | str | Path
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


@dataclass
class PromptTemplate:
    """How a (prompt, image) pair becomes one chat-formatted sequence ending in the reward token.

    Args:
        system: the system turn (null leaves it out).
        instruction: text put between the image and the scene prompt in the user turn.
    """

    system: str | None = "You are a helpful assistant."
    instruction: str = "Judge whether the image shows the spatial layout described: "

    def parts(self, *, reward_token: str = REWARD_TOKEN) -> tuple[str, str]:
        """The text before and after the scene prompt: ``render(p) == before + p + after``."""
        system = f"<|im_start|>system\n{self.system}<|im_end|>\n" if self.system is not None else ""
        before = f"{system}<|im_start|>user\n{IMAGE_PLACEHOLDER}{self.instruction}"
        return before, f"<|im_end|>\n<|im_start|>assistant\n{reward_token}"

    def render(self, prompt: str, *, reward_token: str = REWARD_TOKEN) -> str:
        """The full text for one prompt, with one image placeholder and the reward token last."""
        before, after = self.parts(reward_token=reward_token)
        return before + prompt + after


def to_uint8_rgb(image: ImageLike) -> np.ndarray:
    """An image as an (H, W, 3) uint8 array.

    Accepts PIL images, paths, uint8 (H, W, 3) arrays, and float arrays/tensors (3, H, W) in [0, 1] (the
    reward-function convention of generators), which are rounded to the nearest uint8 value. 16-bit images are
    scaled to 8 bit (:func:`spatialscore.data.images.to_rgb`).
    """
    if isinstance(image, (str, Path)):
        return np.asarray(open_rgb(image))
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(image)
    if array.dtype == np.uint8:
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (H, W, 3), got shape {array.shape}")
        return array
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"float images must be (3, H, W) in [0, 1], got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("float image contains NaN or inf")
    return np.ascontiguousarray((np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8).transpose(1, 2, 0))


class RewardInputEncoder:
    """Turns prompts and images into Qwen2.5-VL model inputs, exactly as ``processor(...)`` would.

    Output keys: ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` (right padded), ``pixel_values``,
    ``image_grid_thw``. The reward token is each sequence's last non-padding token.
    """

    def __init__(
        self, processor: SpatialProcessor, *, template: PromptTemplate | None = None, cache_size: int = 65536
    ) -> None:
        self.processor = processor
        self.template = template or PromptTemplate()
        ip = processor.image_processor
        self.patch_size = int(ip.patch_size)
        self.merge_size = int(ip.merge_size)
        self.temporal_patch_size = int(ip.temporal_patch_size)
        self.min_pixels = int(ip.size["shortest_edge"])
        self.max_pixels = int(ip.size["longest_edge"])
        self.resample = PILImageResampling(ip.resample)
        self.lut = self._lookup_table()
        tokenizer = processor.tokenizer
        self.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.pad_token_id = tokenizer.pad_token_id
        self.reward_token_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        if self.reward_token_id is None or self.reward_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {REWARD_TOKEN} token; add it with add_reward_token()")
        self._cache: OrderedDict[str, tuple[list[int], list[int]]] = OrderedDict()
        self._cache_size = cache_size

    def _lookup_table(self) -> np.ndarray:
        """Per channel and uint8 value, the processor's rescaled and normalised float32 value."""
        ip = self.processor.image_processor
        ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :], (3, 1, 256))
        values = ramp
        if ip.do_rescale:
            values = ip.rescale(values, ip.rescale_factor)
        if ip.do_normalize:
            values = ip.normalize(values, ip.image_mean, ip.image_std)
        return np.asarray(values, dtype=np.float32)[:, 0, :]

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the processor resizes an image of this size to."""
        factor = self.patch_size * self.merge_size
        return smart_resize(height, width, factor=factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def _prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the image placeholder, cached per prompt."""
        cached = self._cache.get(prompt)
        if cached is not None:
            self._cache.move_to_end(prompt)
            return cached
        ids = self.processor.tokenizer(self.template.render(prompt), add_special_tokens=False)["input_ids"]
        split = ids.index(self.image_token_id)
        cached = (ids[:split], ids[split + 1 :])
        self._cache[prompt] = cached
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return cached

    def encode_images(self, images: Sequence[ImageLike]) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values`` (sum of patches, C*T*P*P) and ``image_grid_thw`` (N, 3) for a list of images."""
        arrays = []
        for index, image in enumerate(images):
            array = to_uint8_rgb(image)
            problem = aspect_ratio_problem(array.shape[1], array.shape[0])
            if problem is not None:
                name = image if isinstance(image, (str, Path)) else f"image {index} of the batch"
                raise ValueError(f"{name}: {problem}")
            height, width = self.target_size(*array.shape[:2])
            if (height, width) != array.shape[:2]:
                array = np.asarray(Image.fromarray(array).resize((width, height), resample=self.resample))
            arrays.append(array)
        shapes = {a.shape for a in arrays}
        groups = [arrays] if len(shapes) == 1 else [[a] for a in arrays]
        patches, grids = [], []
        for group in groups:
            p, g = self._patchify(np.stack(group))
            patches.append(p)
            grids.extend([g] * len(group))
        return torch.cat(patches), torch.tensor(grids, dtype=torch.long)

    def _patchify(self, batch: np.ndarray) -> tuple[torch.Tensor, list[int]]:
        """Normalise a (N, H, W, 3) uint8 batch through the lookup table and flatten it into patches."""
        n, height, width, channels = batch.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = height // p, width // p
        values = np.empty((n, channels, height, width), dtype=np.float32)
        for c in range(channels):
            np.take(self.lut[c], batch[..., c], out=values[:, c])
        patches = torch.from_numpy(values).reshape(n, channels, gh // m, m, p, gw // m, m, p)
        patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7)
        patches = patches.unsqueeze(6).expand(*patches.shape[:6], t, p, p)
        return patches.reshape(n * gh * gw, channels * t * p * p), [1, gh, gw]

    def __call__(self, *, prompts: Sequence[str], images: Sequence[ImageLike]) -> dict[str, torch.Tensor]:
        """Model inputs for ``len(prompts)`` sequences, the i-th prompt judging the i-th image."""
        if len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompts but {len(images)} images")
        pixel_values, grid = self.encode_images(images)
        num_image_tokens = (grid.prod(-1) // self.merge_size**2).tolist()
        sequences = []
        for prompt, count in zip(prompts, num_image_tokens, strict=True):
            before, after = self._prompt_ids(prompt)
            sequences.append((before, count, after))
        lengths = [len(b) + c + len(a) for b, c, a in sequences]
        input_ids = torch.full((len(sequences), max(lengths)), self.pad_token_id, dtype=torch.long)
        mm_token_type_ids = torch.zeros_like(input_ids)
        attention_mask = torch.zeros_like(input_ids)
        for row, ((before, count, after), length) in enumerate(zip(sequences, lengths, strict=True)):
            start, stop = len(before), len(before) + count
            input_ids[row, :start] = torch.tensor(before)
            input_ids[row, start:stop] = self.image_token_id
            input_ids[row, stop:length] = torch.tensor(after)
            mm_token_type_ids[row, start:stop] = 1
            attention_mask[row, :length] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": mm_token_type_ids,
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
        }


def processor_encode(
    processor: SpatialProcessor, *, template: PromptTemplate, prompts: Sequence[str], images: Sequence[ImageLike]
) -> dict[str, torch.Tensor]:
    """The same inputs through the stock processor (the reference for tests and benchmarks)."""
    texts = [template.render(p) for p in prompts]
    pil = [Image.fromarray(to_uint8_rgb(i)) for i in images]
    out = processor(text=texts, images=pil, padding=True, return_tensors="pt")
    return {k: out[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")}

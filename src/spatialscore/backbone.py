"""Qwen2.5-VL backbones: loading a local checkpoint, or building a tiny random one offline.

A tiny backbone is written once as an ordinary checkpoint folder and then loaded like a real 3B/7B/32B one,
so every code path downstream (quantization included) is the one a real checkpoint takes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2_5_VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from spatialscore.files import staged_directory, tiny_cache_dir
from spatialscore.precision import DTYPES

REWARD_TOKEN = "<|reward|>"
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TINY_BUILD_VERSION = 2  # bump when build_tiny_checkpoint changes, so cached tiny checkpoints are rebuilt

_TOKENIZER_CORPUS = """
a an the of to in on at and or with from by for is are this that these those it its as be
left right above below under over behind front in front of on top of beneath next to between center
middle corner edge upper lower top bottom back front row from left to right aligned viewer perspective
red green blue yellow purple orange cyan magenta pink brown black white gray grey gold silver bronze
circle square triangle star diamond cross ring hexagon cube sphere cone cup vase lantern book table chair
small large big tiny tall short wide narrow image photo picture scene object objects placed standing
evaluate spatial layout does match prompt description score judge whether shows described user assistant
system you helpful diamond edge corner upper-left upper-right lower-left lower-right
"""


class SpatialProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images and text only.

    The stock processor also builds a video processor, which needs torchvision; reward scoring of still
    images never uses it, so this subclass leaves it out and loads with its own ``from_pretrained``.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


@dataclass
class TinyBackboneConfig:
    """Sizes of a tiny randomly initialised Qwen2.5-VL (same architecture as the real one).

    Built offline once per set of values and cached (``$SPATIALREWARD_CACHE``, else ~/.cache/spatialreward).

    Args:
        text_hidden_size: the language model's hidden size (also the vision tower's output size).
        text_layers: number of language-model decoder layers.
        text_heads: attention heads of the language model (``text_hidden_size / text_heads`` must be even).
        text_kv_heads: key/value heads of the language model (grouped-query attention).
        text_intermediate_size: the language model's MLP width.
        text_rope_theta: the language model's rotary base. Tiny models see a 4x4 grid of merged image tokens
            and have 2 rotary frequencies per spatial axis; at Qwen's theta (1e6) or even 1e4 those turn by
            < 0.02 rad per grid step, so left and right look the same.
        vision_hidden_size: the vision tower's hidden size (a multiple of ``vision_heads``).
        vision_depth: number of vision transformer blocks.
        vision_heads: attention heads of the vision tower.
        vision_intermediate_size: the vision tower's MLP width.
        patch_size: vision patch size in pixels.
        image_size: the tiny image processor's pixel budget is ``image_size**2`` pixels per image (min and max).
        seed: seed of the random initial weights.
    """

    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate_size: int = 128
    text_rope_theta: float = 10.0
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vision_intermediate_size: int = 128
    patch_size: int = 8
    image_size: int = 64
    seed: int = 0


@dataclass
class BackboneConfig:
    """Where the backbone comes from and how it is loaded.

    Args:
        path: a local Qwen2.5-VL checkpoint folder (3B/7B/32B; safetensors only); null builds ``tiny`` offline.
        tiny: sizes of the tiny random backbone used when ``path`` is null.
        dtype: dtype the backbone's weights are loaded in.
        quantization: ``4bit`` (NF4) or ``8bit`` loads the language model's linear layers through bitsandbytes
            (QLoRA); the vision tower stays unquantized. Null: no quantization.
        attn_implementation: the transformers attention kernel.
        min_pixels: the image processor's lower pixel budget per image (HPSv3 fixes 256 visual tokens: both
            ``256*28*28``); null keeps the checkpoint's setting.
        max_pixels: the image processor's upper pixel budget per image; null keeps the checkpoint's setting.
    """

    path: str | None = None
    tiny: TinyBackboneConfig = field(default_factory=TinyBackboneConfig)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Literal["4bit", "8bit"] | None = None
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    min_pixels: int | None = None
    max_pixels: int | None = None


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer with Qwen's special tokens, offline and deterministically."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = _TOKENIZER_CORPUS.split()
    lines = [" ".join(words), *(f"{w} {w} {w}" for w in words), "user assistant system", "left-to-right upper-left"]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        padding_side="right",
    )


def add_reward_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Register the reward token as a special token (idempotent) and return its id."""
    if REWARD_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(REWARD_TOKEN)


def tiny_config(tiny: TinyBackboneConfig, *, tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL config of the requested tiny size, token ids taken from ``tokenizer``."""
    head_dim = tiny.text_hidden_size // tiny.text_heads
    if head_dim % 2 or tiny.vision_hidden_size % tiny.vision_heads:
        raise ValueError("tiny backbone: text head_dim must be even and vision heads must divide vision hidden")
    quarter = head_dim // 2
    mrope = [quarter - 2 * (quarter // 3), quarter // 3, quarter // 3]
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok)
        for name, tok in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer) + 8,
            "hidden_size": tiny.text_hidden_size,
            "intermediate_size": tiny.text_intermediate_size,
            "num_hidden_layers": tiny.text_layers,
            "num_attention_heads": tiny.text_heads,
            "num_key_value_heads": tiny.text_kv_heads,
            "max_position_embeddings": 4096,
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "rope_parameters": {"rope_type": "default", "rope_theta": tiny.text_rope_theta, "mrope_section": mrope},
        },
        vision_config={
            "depth": tiny.vision_depth,
            "hidden_size": tiny.vision_hidden_size,
            "intermediate_size": tiny.vision_intermediate_size,
            "num_heads": tiny.vision_heads,
            "patch_size": tiny.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": tiny.patch_size * 2 * 4,
            "out_hidden_size": tiny.text_hidden_size,
            "fullatt_block_indexes": [tiny.vision_depth - 1],
        },
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **ids,
    )


def build_tiny_checkpoint(tiny: TinyBackboneConfig, directory: str | Path) -> Path:
    """Write a randomly initialised Qwen2.5-VL of ``tiny``'s size as an ordinary checkpoint folder.

    The folder holds ``config.json``, safetensors weights, the tokenizer and ``preprocessor_config.json``, so it
    loads through exactly the code that loads a real 3B/7B/32B checkpoint. Deterministic for ``tiny.seed``.
    """
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(tiny, tokenizer=tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    pixels = tiny.image_size * tiny.image_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=tiny.patch_size, merge_size=2, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels
    )
    with staged_directory(directory) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        image_processor.save_pretrained(str(tmp))
    return directory


def resolve_backbone_path(config: BackboneConfig) -> Path:
    """The checkpoint folder for ``config``: its ``path``, or the cached tiny checkpoint (built on first use)."""
    if config.path is not None:
        path = Path(config.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"backbone path {path}: no config.json (expected a Qwen2.5-VL checkpoint folder)")
        return path
    spec = {"version": TINY_BUILD_VERSION, **asdict(config.tiny)}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    directory = tiny_cache_dir() / f"tiny-qwen2_5_vl-{key}"
    if not (directory / "config.json").is_file():
        build_tiny_checkpoint(config.tiny, directory)
    return directory


def load_processor(
    path: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> SpatialProcessor:
    """Tokenizer (with the reward token added) and PIL image processor of a local checkpoint folder."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    add_reward_token(tokenizer)
    kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path), local_files_only=True, **kwargs)
    return SpatialProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _quantization_config(quantization: str | None, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for QLoRA; the vision tower stays unquantized (small, and never LoRA-adapted)."""
    if quantization is None:
        return None
    skip = ["model.visual", "lm_head"]
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=skip,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    raise ValueError(f"quantization must be '4bit', '8bit' or None, got {quantization!r}")


def load_backbone(config: BackboneConfig) -> tuple[Qwen2_5_VLModel, SpatialProcessor]:
    """Load the backbone (without the LM head: the reward is read from a hidden state) and its processor.

    Reads only local files, weights from safetensors only (a folder with just ``pytorch_model.bin`` is refused).
    A tiny backbone is first written as a checkpoint (see :func:`resolve_backbone_path`).
    """
    path = resolve_backbone_path(config)
    dtype = DTYPES[config.dtype]
    full = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(path),
        dtype=dtype,
        attn_implementation=config.attn_implementation,
        quantization_config=_quantization_config(config.quantization, dtype),
        local_files_only=True,
        use_safetensors=True,  # never unpickle a base checkpoint (pytorch_model.bin)
    )
    model = full.model
    del full
    disable_cpu_inference_repacking(model)
    processor = load_processor(path, min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    reward_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    if reward_id >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(reward_id + 1)
    return model.eval(), processor


def disable_cpu_inference_repacking(module: torch.nn.Module) -> None:
    """Keep bitsandbytes ``Linear4bit`` weights in their training layout on AVX512-BF16 CPUs.

    Otherwise the first no-grad forward (validation) repacks them to an inference-only layout and the next
    training step fails.
    """
    for sub in module.modules():
        if hasattr(sub, "support_avx512bf16_for_cpu"):
            sub.support_avx512bf16_for_cpu = False

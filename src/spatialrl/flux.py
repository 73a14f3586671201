"""FLUX.1 as an RL policy: the diffusers components behind a small, stateless sampling interface.

:class:`FluxPolicy` holds the transformer (the trained part), the frozen VAE and text encoders and the scheduler
config; sampling math lives in :mod:`spatialrl.rollout` and :mod:`spatialrl.sde`, not in a stateful scheduler.
:func:`build_tiny_flux` writes a random FLUX of toy size in the diffusers folder layout of FLUX.1-dev, so tests
and real checkpoints load through the same :meth:`FluxPolicy.from_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
import string
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from spatialrl.autoencoder import pretrain_autoencoder
from spatialrl.schedule import scheduler_sigmas
from spatialscore.files import SHA256_KEY, check_sha256, staged_directory, tiny_cache_dir
from spatialscore.imports import without_bitsandbytes
from spatialscore.precision import DTYPES

with without_bitsandbytes():  # diffusers imports it when installed; FLUX is never quantized here
    import diffusers
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

__all__ = ["FluxPolicy", "FluxSource", "TinyFluxConfig", "build_tiny_flux", "recorded_settings", "resolve_tiny_flux"]

TINY_FLUX_VERSION = 2  # bump when build_tiny_flux changes, so cached tiny folders are rebuilt
_TINY_CHARS = sorted(set(string.ascii_lowercase + string.digits + ".,;:-!?'()"))


@dataclass(frozen=True)
class TinyFluxConfig:
    """Sizes of a random toy FLUX; the defaults: an 82 K-parameter transformer, 32px in milliseconds.

    Args:
        layers: double-stream (joint text-image) transformer blocks.
        single_layers: single-stream transformer blocks.
        heads: attention heads of the transformer.
        head_dim: size of each attention head.
        axes_dims_rope: rotary dimensions per position axis (summing to ``head_dim``).
        latent_channels: VAE latent channels (the transformer sees 4x as many, packed 2x2).
        vae_channels: VAE block widths, one entry per level: 4 levels downsample 8x as in FLUX.1 (at 32 px
            that leaves 2x2 packed tokens; 3 levels give 4x4).
        t5_dim: hidden size of the tiny T5 text encoder (the transformer's text input).
        clip_dim: hidden size of the tiny CLIP text encoder (the pooled text input).
        guidance_embeds: the transformer takes a guidance-scale embedding, as FLUX.1-dev.
        vae_pretrain_steps: > 0 trains the VAE as an autoencoder for this many steps on procedural scenes (see
            :mod:`spatialrl.autoencoder`) so that it decodes the palette colours, and measures its
            ``shift_factor``/``scaling_factor``; 0 leaves it random.
        vae_pretrain_image_size: side in pixels of the VAE pretraining scenes.
    """

    layers: int = 1
    single_layers: int = 1
    heads: int = 2
    head_dim: int = 16
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6)
    latent_channels: int = 16
    vae_channels: tuple[int, ...] = (8, 16, 16, 16)
    t5_dim: int = 32
    clip_dim: int = 32
    guidance_embeds: bool = True
    vae_pretrain_steps: int = 0
    vae_pretrain_image_size: int = 32


def _tiny_clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges), built in memory."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in _TINY_CHARS:
            vocab[char + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _tiny_t5_tokenizer() -> T5TokenizerFast:
    """A character-level T5 unigram tokenizer, built in memory."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(char, -3.0) for char in _TINY_CHARS] + [("\u2581" + char, -2.5) for char in _TINY_CHARS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def build_tiny_flux(directory: str | Path, *, seed: int = 0, config: TinyFluxConfig | None = None) -> Path:
    """Write a randomly initialised FLUX of ``config``'s size to ``directory`` in the FLUX.1-dev layout.

    ``model_index.json`` and subfolders ``transformer/ vae/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/
    scheduler/`` as on the hub, so the folder loads through :meth:`FluxPolicy.from_pretrained` and
    ``FluxPipeline.from_pretrained``.
    Deterministic for ``seed`` (VAE pretraining: on one machine and thread count). The folder is written to a
    temporary sibling and renamed into place.
    """
    config = config or TinyFluxConfig()
    directory = Path(directory)
    clip_tokenizer, t5_tokenizer = _tiny_clip_tokenizer(), _tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            in_channels=4 * config.latent_channels,
            num_layers=config.layers,
            num_single_layers=config.single_layers,
            attention_head_dim=config.head_dim,
            num_attention_heads=config.heads,
            joint_attention_dim=config.t5_dim,
            pooled_projection_dim=config.clip_dim,
            guidance_embeds=config.guidance_embeds,
            axes_dims_rope=config.axes_dims_rope,
        )
        levels = len(config.vae_channels)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=config.vae_channels,
            latent_channels=config.latent_channels,
            norm_num_groups=min(config.vae_channels),
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(clip_tokenizer),
                hidden_size=config.clip_dim,
                intermediate_size=2 * config.clip_dim,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tokenizer),
                d_model=config.t5_dim,
                d_kv=config.t5_dim // 4,
                d_ff=2 * config.t5_dim,
                num_layers=1,
                num_heads=4,
                dropout_rate=0.0,
                feed_forward_proj="gated-gelu",
            )
        )
    if config.vae_pretrain_steps > 0:
        shift, scale = pretrain_autoencoder(
            vae, steps=config.vae_pretrain_steps, image_size=config.vae_pretrain_image_size, seed=seed
        )
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        base_shift=0.5,
        max_shift=1.15,
    )
    policy = FluxPolicy(
        transformer=transformer,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        scheduler_config=scheduler.config,
    )
    with staged_directory(directory) as tmp:
        policy.save_pretrained(tmp)
    return directory


def resolve_tiny_flux(*, seed: int = 0, config: TinyFluxConfig | None = None) -> Path:
    """The cached tiny FLUX folder for ``(seed, config)``, built on first use."""
    spec = {"version": TINY_FLUX_VERSION, "seed": seed, **asdict(config or TinyFluxConfig())}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    directory = tiny_cache_dir() / f"tiny-flux-{key}"
    if not (directory / "transformer" / "config.json").is_file():
        build_tiny_flux(directory, seed=seed, config=config)
    return directory


@dataclass
class FluxSource:
    """Where a policy comes from, as a config block: a local diffusers FLUX folder, else a tiny random FLUX.

    Args:
        path: a local diffusers FLUX folder (FLUX.1-dev layout, or one written by
            :class:`~spatialrl.callbacks.ExportPolicy`); null: the tiny FLUX.
        tiny: sizes of the tiny random FLUX built offline (cached) when ``path`` is null.
        tiny_seed: seed of the tiny FLUX's random weights.
        dtype: dtype of the transformer and the frozen components (``float32``, ``bfloat16`` or ``float16``).
        max_sequence_length: the T5 prompt length; null: the length the folder was trained with (recorded in
            ``spatialrl.json`` by :class:`~spatialrl.callbacks.ExportPolicy`; prompts padded to another length
            condition the model differently), else 512 as FLUX.1-dev.
    """

    path: str | None = None
    tiny: TinyFluxConfig = field(default_factory=TinyFluxConfig)
    tiny_seed: int = 0
    dtype: str = "float32"
    max_sequence_length: int | None = None

    def resolve(self) -> Path:
        """The folder to load: ``path`` (checked) or the cached tiny FLUX."""
        if self.path is not None:
            return Path(self.path)
        return resolve_tiny_flux(seed=self.tiny_seed, config=self.tiny)

    def load(self, *, device: str | torch.device = "cpu") -> FluxPolicy:
        """Load the policy (every component in eval mode; only the transformer is trainable). A folder written by
        :class:`~spatialrl.callbacks.ExportPolicy` has each weights file checked against its recorded SHA-256."""
        if self.dtype not in DTYPES:
            raise ValueError(f"policy dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        folder = self.resolve()
        for name, sha in recorded_settings(folder).get(SHA256_KEY, {}).items():  # an ExportPolicy folder
            check_sha256(folder / name, sha, recorded_in=folder / SETTINGS_FILE)
        return FluxPolicy.from_pretrained(
            folder, dtype=DTYPES[self.dtype], device=device, max_sequence_length=self.sequence_length()
        )

    def sequence_length(self) -> int:
        """The T5 length to use: ``max_sequence_length``, else the folder's recorded one, else 512."""
        return self.max_sequence_length or recorded_settings(self.resolve()).get("max_sequence_length", 512)


SETTINGS_FILE = "spatialrl.json"


def recorded_settings(folder: str | Path) -> dict:
    """The sampling settings a fine-tuned policy folder was trained with (``spatialrl.json``), or ``{}``."""
    path = Path(folder) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


class FluxPolicy:
    """The FLUX components plus the tensor plumbing a sampler needs: prompts, packing, ids, sigmas, velocity.

    Every component is put in eval mode (T5 dropout would otherwise break determinism); the VAE and both text
    encoders are frozen. Prompt encodings are cached per prompt (and T5 length), since GRPO re-uses a small
    prompt set for many rollouts.
    """

    def __init__(
        self,
        *,
        transformer: FluxTransformer2DModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        text_encoder_2: T5EncoderModel,
        tokenizer_2: T5TokenizerFast,
        scheduler_config: dict,
        max_sequence_length: int = 512,
    ) -> None:
        self.transformer = transformer.eval()
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.text_encoder_2 = text_encoder_2.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.scheduler_config = dict(scheduler_config)
        self.max_sequence_length = max_sequence_length
        self._prompt_cache: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        max_sequence_length: int = 512,
    ) -> FluxPolicy:
        """Load a local FLUX folder in the diffusers layout (FLUX.1-dev, or one from :func:`build_tiny_flux`)."""
        path = Path(path)
        if not (path / "transformer" / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no transformer/config.json (expected a diffusers FLUX folder)")
        kwargs = {"local_files_only": True}
        return cls(
            transformer=FluxTransformer2DModel.from_pretrained(path / "transformer", torch_dtype=dtype, **kwargs).to(
                device
            ),
            vae=AutoencoderKL.from_pretrained(path / "vae", torch_dtype=dtype, **kwargs).to(device),
            text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder", dtype=dtype, **kwargs).to(device),
            tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer", **kwargs),
            text_encoder_2=T5EncoderModel.from_pretrained(path / "text_encoder_2", dtype=dtype, **kwargs).to(device),
            tokenizer_2=T5TokenizerFast.from_pretrained(path / "tokenizer_2", **kwargs),
            scheduler_config=FlowMatchEulerDiscreteScheduler.load_config(path / "scheduler", **kwargs),
            max_sequence_length=max_sequence_length,
        )

    @property
    def device(self) -> torch.device:
        """The transformer's device (read from a parameter: diffusers' ``.device`` walks every module)."""
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's dtype (read from a parameter, like :attr:`device`)."""
        return next(self.transformer.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        """Unpacked latent channels (16 for FLUX.1): a packed token holds a 2x2 patch of them."""
        return self.transformer.config.in_channels // 4

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the policy as a diffusers FLUX folder: the files ``FluxPipeline.save_pretrained`` writes (tested
        byte for byte), ``model_index.json`` and a subfolder per component, loadable by ``FluxPipeline`` (or
        ``DiffusionPipeline``) ``.from_pretrained`` and :meth:`from_pretrained`.

        Written without ``FluxPipeline``: importing it imports transformers' CLIP and SigLIP image processors (for
        IP-Adapters, which a policy never has), and these warn that torchvision is missing.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        components = {
            "scheduler": FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config),
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
            "tokenizer": self.tokenizer,
            "tokenizer_2": self.tokenizer_2,
            "transformer": self.transformer,
            "vae": self.vae,
        }
        index: dict[str, object] = {
            "_class_name": "FluxPipeline",
            "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None],  # FluxPipeline's optional IP-Adapter components
            "image_encoder": [None, None],
        }
        for name, component in components.items():
            component.save_pretrained(str(directory / name))
            index[name] = [type(component).__module__.split(".")[0], type(component).__name__]
        text = json.dumps(dict(sorted(index.items())), indent=2, sort_keys=True) + "\n"
        (directory / "model_index.json").write_text(text, encoding="utf-8")

    def pipeline(self) -> Any:
        """A stock ``FluxPipeline`` over the same modules (for evaluation and as the reference sampler).

        Imported here, not with the module: see :meth:`save_pretrained` (and jsonargparse resolves this module's
        annotations, ``TYPE_CHECKING`` imports included, whenever a config names a class of it).
        """
        with without_bitsandbytes():
            from diffusers import FluxPipeline

        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config),
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            transformer=self.transformer,
        )

    def _encode_uncached(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """T5 hidden states (padded to ``max_sequence_length``, no mask) and CLIP pooled output, as FluxPipeline
        (with autograd as the caller has it: trained text encoders get gradients)."""
        clip_ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = self.text_encoder(clip_ids.to(self.text_encoder.device), output_hidden_states=False).pooler_output
        t5_ids = self.tokenizer_2(
            prompts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        lengths = [len(ids) for ids in self.tokenizer_2(prompts).input_ids]  # untruncated; uncached prompts only
        cut = [p for p, n in zip(prompts, lengths, strict=True) if n > self.max_sequence_length]
        if cut:  # FluxPipeline logs the same; nothing is dropped silently
            warnings.warn(
                f"{len(cut)} prompt(s) longer than max_sequence_length={self.max_sequence_length} T5 tokens were cut "
                f"to it, e.g. {cut[0]!r}",
                stacklevel=2,
            )
        embeds = self.text_encoder_2(t5_ids.to(self.text_encoder_2.device), output_hidden_states=False)[0]
        return embeds, pooled

    def encode_prompts(self, prompts: list[str], *, cache: bool = True) -> tuple[Tensor, Tensor]:
        """``(prompt_embeds (B, L, D_t5), pooled (B, D_clip))``; prompts seen before are not re-encoded.

        ``cache=False`` encodes every prompt afresh, with gradients when autograd is on: for text encoders that
        are being trained (``FlowMatchingModule(text_encoders=...)``), whose encodings change every step.
        """
        if not cache:
            return self._encode_uncached(list(prompts))
        length = self.max_sequence_length
        missing = list(dict.fromkeys(p for p in prompts if (p, length) not in self._prompt_cache))
        if missing:
            # never cache inference tensors (Lightning validates under inference_mode): autograd could not save
            # them for the backward pass of a later training step that reuses the encoding
            with torch.inference_mode(False), torch.no_grad():
                embeds, pooled = self._encode_uncached(missing)
            for i, prompt in enumerate(missing):
                self._prompt_cache[(prompt, length)] = (embeds[i], pooled[i])
        cached = [self._prompt_cache[(p, length)] for p in prompts]
        return torch.stack([e for e, _ in cached]), torch.stack([p for _, p in cached])

    def clear_prompt_cache(self) -> None:
        self._prompt_cache.clear()

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Unpacked latent grid of an ``height x width`` image; both must be multiples of 2 x the VAE factor."""
        step = 2 * self.vae_scale_factor
        if height % step or width % step or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {step}, got {height}x{width}")
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    @staticmethod
    def pack_latents(latents: Tensor) -> Tensor:
        """``(B, C, h, w) -> (B, h/2 * w/2, 4C)``: 2x2 patches as tokens, channel-major within a token."""
        batch, channels, height, width = latents.shape
        if height % 2 or width % 2:
            raise ValueError(f"latent height and width must be even, got {height}x{width}")
        patches = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)

    @staticmethod
    def unpack_latents(packed: Tensor, *, latent_height: int, latent_width: int) -> Tensor:
        """Inverse of :meth:`pack_latents`: ``(B, h/2 * w/2, 4C) -> (B, C, h, w)``."""
        batch, tokens, dim = packed.shape
        if tokens != (latent_height // 2) * (latent_width // 2) or dim % 4:
            raise ValueError(f"packed latents {tuple(packed.shape)} do not fit a {latent_height}x{latent_width} grid")
        patches = packed.view(batch, latent_height // 2, latent_width // 2, dim // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(batch, dim // 4, latent_height, latent_width)

    def latent_image_ids(self, height: int, width: int) -> Tensor:
        """``(tokens, 3)`` RoPE positions ``[0, row, col]`` of the packed tokens of an ``height x width`` image."""
        rows, cols = (size // 2 for size in self.latent_size(height, width))
        ids = torch.zeros(rows, cols, 3)
        ids[..., 1] = torch.arange(rows)[:, None]
        ids[..., 2] = torch.arange(cols)[None, :]
        return ids.reshape(rows * cols, 3).to(device=self.device, dtype=self.dtype)

    def text_ids(self, length: int) -> Tensor:
        """``(length, 3)`` zero RoPE positions of the text tokens."""
        return torch.zeros(length, 3, device=self.device, dtype=self.dtype)

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """The ``num_steps + 1`` FLUX sigmas (float32, CPU) that ``FluxPipeline`` uses at this resolution.

        Follows the scheduler config (FLUX.1-dev's resolution-dependent shift, FLUX.1-schnell's none, ...);
        a config the stateless sampler cannot reproduce is a ``ValueError`` (see
        :func:`~spatialrl.schedule.scheduler_sigmas`).
        """
        rows, cols = self.latent_size(height, width)
        tokens = (rows // 2) * (cols // 2)
        return scheduler_sigmas(self.scheduler_config, num_steps=num_steps, image_seq_len=tokens)

    def velocity(
        self,
        *,
        latents: Tensor,
        sigma: float | Tensor,
        prompt_embeds: Tensor,
        pooled: Tensor,
        img_ids: Tensor,
        guidance: float = 3.5,
    ) -> Tensor:
        """The transformer's velocity for packed ``latents`` at ``sigma`` (a float or ``(B,)``), transformer dtype.

        One forward pass: FLUX.1-dev is guidance-distilled, so ``guidance`` goes through the guidance embedding
        (ignored by transformers without one) and there is no classifier-free guidance. Differentiable.
        """
        device, dtype, batch = self.device, self.dtype, latents.shape[0]
        timestep = torch.as_tensor(sigma, device=device, dtype=dtype).reshape(-1).expand(batch)
        guidance_vec = None
        if self.transformer.config.guidance_embeds:
            guidance_vec = torch.full((batch,), guidance, device=device, dtype=torch.float32)
        return self.transformer(
            hidden_states=latents.to(device=device, dtype=dtype),
            timestep=timestep,
            guidance=guidance_vec,
            pooled_projections=pooled.to(dtype),
            encoder_hidden_states=prompt_embeds.to(dtype),
            txt_ids=torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype),
            img_ids=img_ids,
            return_dict=False,
        )[0]

    @torch.no_grad()
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Float images ``(B, 3, H, W)`` in [0, 1] -> packed float32 latents ``(B, tokens, 4C)``, shifted and scaled
        as the transformer sees them: the inverse of :meth:`decode` (up to the VAE's reconstruction error).

        The posterior mode, not a sample: a deterministic function of the images (flow-matching targets get their
        noise from ``x_sigma``), and the tiny VAE's posterior std is small anyway.
        """
        self.latent_size(images.shape[-2], images.shape[-1])  # a size the VAE and packing can take
        vae = self.vae
        latents = vae.encode((images * 2 - 1).to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
        latents = (latents.float() - vae.config.shift_factor) * vae.config.scaling_factor
        return self.pack_latents(latents)

    def decode(self, latents: Tensor, *, height: int, width: int) -> Tensor:
        """Packed latents -> float32 images ``(B, 3, height, width)`` in [0, 1] (un-scale, un-shift, VAE decode)."""
        rows, cols = self.latent_size(height, width)
        latents = self.unpack_latents(latents, latent_height=rows, latent_width=cols)
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        image = self.vae.decode(latents.to(device=self.vae.device, dtype=self.vae.dtype), return_dict=False)[0]
        return (image.float() * 0.5 + 0.5).clamp(0, 1)

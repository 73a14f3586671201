"""SpatialScore: a Qwen2.5-VL reward model read at a special reward token.

The reward token is the last token of every sequence; its last-layer hidden state goes through a small fp32
MLP head giving ``(mu, log_sigma)``; the score is ``mu``. Only the reward token's embedding row learns (it is a
separate parameter written into the embedding output, so the other rows stay frozen without restoring them),
LoRA adapts the language model's linear layers only, and the vision merger/tower can optionally be trained fully.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import re
import shutil
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from spatialscore.backbone import (
    REWARD_TOKEN,
    BackboneConfig,
    SpatialProcessor,
    TinyBackboneConfig,
    load_backbone,
    load_processor,
    resolve_backbone_path,
)
from spatialscore.card import TrainingFacts, write_model_card
from spatialscore.data.manifest import MAX_PROMPT_CHARS
from spatialscore.encode import ImageLike, PromptTemplate, RewardInputEncoder
from spatialscore.files import SHA256_KEY, check_sha256, file_sha256
from spatialscore.imports import without_bitsandbytes
from spatialscore.losses import sigma_from_log_sigma
from spatialscore.precision import fp32_master_weights

with without_bitsandbytes():  # peft imports it when installed; only quantized backbones need it
    from peft import LoraConfig, inject_adapter_in_model

CONFIG_NAME = "spatialscore_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"  # peft's file names: the folder is a peft adapter folder
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
HEAD_NAME = "reward_head.safetensors"  # the score head and the reward token's embedding row
BACKBONE_WEIGHTS_NAME = "trained_backbone.safetensors"  # base weights trained fully (vision parts, rank-0 LM)
WEIGHTS_NAME = "spatialscore.safetensors"  # exports before the peft layout: every trained weight in one file
HEAD_SCHEMA = "spatialscore-reward-head/1"
PEFT_PREFIX = "base_model.model.model."  # a PeftModel of Qwen2_5_VLForConditionalGeneration (its "model.")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class RewardLoraConfig:
    """LoRA on the language model's linear layers (peft), never on the vision tower's.

    Args:
        rank: LoRA rank; 0 disables LoRA (full fine-tuning of the LM, its input embeddings frozen).
        alpha: LoRA scaling numerator: the update is scaled by ``alpha / rank``.
        dropout: dropout on the LoRA branch's input during training.
        targets: names of the LM's linear layers that get an adapter (matched inside ``language_model`` only).
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: Sequence[str] = LORA_TARGETS


LoraSettings = RewardLoraConfig  # the 0.1 name, still importable (and read from 0.1 checkpoints)


@dataclass
class SpatialScoreConfig:
    """Everything needed to rebuild a SpatialScore around its weights.

    Args:
        backbone: which Qwen2.5-VL (a checkpoint, or a tiny random one) and how it is loaded.
        lora: the LoRA on the language model.
        template: the chat text around the prompt and the image.
        head_hidden_size: width of the MLP head from the reward token's hidden state to ``(mu, log_sigma)``.
        train_vision_merger: also train the vision tower's patch merger (full weights, not LoRA).
        train_vision_tower: also train the whole vision tower, merger included (full weights).
        activation_checkpointing: recompute the backbone's activations in the backward pass (less memory,
            slower steps).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: RewardLoraConfig = field(default_factory=RewardLoraConfig)
    template: PromptTemplate = field(default_factory=PromptTemplate)
    head_hidden_size: int = 256
    train_vision_merger: bool = False
    train_vision_tower: bool = False
    activation_checkpointing: bool = False

    def to_dict(self) -> dict:
        """A JSON-serialisable dict."""
        out = asdict(self)
        out["lora"]["targets"] = list(self.lora.targets)
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> SpatialScoreConfig:
        """Inverse of :meth:`to_dict`."""
        backbone = dict(raw.get("backbone", {}))
        backbone["tiny"] = TinyBackboneConfig(**backbone.get("tiny", {}))
        return cls(
            backbone=BackboneConfig(**backbone),
            lora=RewardLoraConfig(**raw.get("lora", {})),
            template=PromptTemplate(**raw.get("template", {})),
            **{k: v for k, v in raw.items() if k not in ("backbone", "lora", "template")},
        )

    @classmethod
    def check_dict(cls, raw: Any) -> None:
        """Raise ValueError naming the field (``lora.rank``) of ``raw`` that is unknown or of the wrong JSON type."""
        _check_fields(cls, raw, "")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return "an object" if dataclasses.is_dataclass(annotation) else annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def _value_fits(annotation: Any, value: Any, name: str) -> bool:
    """Whether a JSON ``value`` fits ``annotation``; a nested dataclass is checked field by field (raising)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args
        fitting = [a for a in args if a is not type(None)]
        if len(fitting) == 1:
            return _value_fits(fitting[0], value, name)
        return any(_value_fits(a, value, name) for a in fitting)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        _check_fields(annotation, value, name)
        return True
    if isinstance(origin, type) and issubclass(origin, Sequence):  # Sequence[str]: a JSON list of them
        if not isinstance(value, list):
            return False
        return not args or all(_value_fits(args[0], item, f"{name}[{i}]") for i, item in enumerate(value))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _check_fields(cls: type, raw: Any, where: str) -> None:
    """Unknown fields and values of the wrong type in ``raw`` (the JSON of dataclass ``cls``), named by path."""
    if not isinstance(raw, dict):
        label = f"field {where!r}" if where else "the config"
        raise ValueError(f"{label} must be a JSON object, got {type(raw).__name__} {raw!r:.60}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key, value in raw.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ValueError(f"unknown field {name!r} (known in {where or 'the config'}: {', '.join(known)})")
        if not _value_fits(hints[key], value, name):
            raise ValueError(
                f"field {name!r} must be {_type_name(hints[key])}, got {type(value).__name__} {value!r:.60}"
            )


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def export_layout(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a :meth:`SpatialScore.trainable_state_dict` into the exported files and their key names.

    :data:`ADAPTER_WEIGHTS_NAME`: the LoRA under peft's names for ``Qwen2_5_VLForConditionalGeneration``
    (``base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight``); :data:`HEAD_NAME`: the
    head (``head.*``) and ``reward_embedding``; :data:`BACKBONE_WEIGHTS_NAME`: fully trained base weights under
    ``Qwen2_5_VLForConditionalGeneration``'s names (``model.visual.merger.mlp.0.weight``). Empty files are left out.
    """
    files: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        if name.startswith("head.") or name == "reward_embedding":
            file, key = HEAD_NAME, name
        elif "lora_" in name:
            file = ADAPTER_WEIGHTS_NAME
            key = PEFT_PREFIX + re.sub(r"\.(lora_[AB])\.default\.", r".\1.", name.removeprefix("backbone."))
        else:
            file, key = BACKBONE_WEIGHTS_NAME, "model." + name.removeprefix("backbone.")
        files.setdefault(file, {})[key] = tensor.contiguous()
    return files


def _from_export_layout(file: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`export_layout` for one file: :class:`SpatialScore` parameter names (the single file of
    earlier exports already has them)."""
    if file in (HEAD_NAME, WEIGHTS_NAME):
        return dict(tensors)
    if file == ADAPTER_WEIGHTS_NAME:
        return {
            "backbone." + re.sub(r"\.(lora_[AB])\.", r".\1.default.", key.removeprefix(PEFT_PREFIX)): tensor
            for key, tensor in tensors.items()
        }
    return {"backbone." + key.removeprefix("model."): tensor for key, tensor in tensors.items()}


def _load_weights(path: Path, sha: str | None, config_file: Path) -> dict[str, torch.Tensor]:
    """A weights file of an export, refused (naming it) when unreadable or not of the recorded SHA-256."""
    if sha is not None:
        check_sha256(path, sha, recorded_in=config_file)
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors' SafetensorError (header or data unreadable)
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def lora_config(settings: RewardLoraConfig, *, base_model: str | None = None) -> LoraConfig:
    """The peft ``LoraConfig`` of :class:`RewardLoraConfig` (language-model linears only:
    :func:`lora_target_regex`)."""
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_target_regex(settings.targets),
        base_model_name_or_path=base_model,
    )


class RewardOutput(NamedTuple):
    """Per-sequence score mean ``mu`` and raw uncertainty ``log_sigma``, float32, shape (B,)."""

    mu: torch.Tensor
    log_sigma: torch.Tensor

    @property
    def sigma(self) -> torch.Tensor:
        """Standard deviation of the score, ``softplus(log_sigma)`` (~``exp(log_sigma)`` when small)."""
        return sigma_from_log_sigma(self.log_sigma)


class RewardHead(nn.Module):
    """fp32 MLP from the reward token's hidden state to ``(mu, log_sigma)``.

    ``mu`` has no output bias: a pairwise loss is blind to a constant offset, so a bias would only receive
    rounding noise, which Adam turns into a random drift of every score.
    """

    def __init__(self, hidden_size: int, inner_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, inner_size), nn.SiLU(), nn.Linear(inner_size, 2, bias=False))
        self.log_sigma_bias = nn.Parameter(torch.zeros(1))

    def forward(self, hidden: torch.Tensor) -> RewardOutput:
        """Score a (B, hidden) batch of reward-token states."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            out = self.net(hidden.float())
        return RewardOutput(out[:, 0], out[:, 1] + self.log_sigma_bias)


def lora_target_regex(targets: Sequence[str]) -> str:
    """A peft ``target_modules`` regex that matches ``targets`` inside the language model only.

    Qwen2.5-VL's vision blocks also have ``gate_proj``/``up_proj``/``down_proj``; plain names would hit them.
    """
    return r".*language_model\.layers\.\d+\..*\.(" + "|".join(targets) + r")"


class SpatialScore(nn.Module):
    """Qwen2.5-VL + reward token + MLP head. Use :meth:`build`, :meth:`from_pretrained` and :meth:`score`."""

    def __init__(self, backbone: nn.Module, processor: SpatialProcessor, config: SpatialScoreConfig) -> None:
        super().__init__()
        self.config = config
        self.processor = processor
        self.encoder = RewardInputEncoder(processor, template=config.template)
        self.reward_token_id = self.encoder.reward_token_id
        backbone.requires_grad_(False)
        if config.lora.rank > 0:
            with without_bitsandbytes():  # a no-op for a quantized backbone: it imported bitsandbytes
                backbone = inject_adapter_in_model(lora_config(config.lora), backbone)
            for name, param in backbone.named_parameters():
                param.requires_grad_("lora_" in name)
            fp32_master_weights(backbone, lora_only=True)
        else:
            backbone.language_model.requires_grad_(True)
            backbone.language_model.get_input_embeddings().requires_grad_(False)
        if config.train_vision_tower:
            backbone.visual.requires_grad_(True)
        elif config.train_vision_merger:
            backbone.visual.merger.requires_grad_(True)
        if config.activation_checkpointing:
            backbone.activation_checkpointing_enable({"use_reentrant": False})
            # transformers also hooks every input embedding (vision patch embed included) to require grad, which
            # non-reentrant checkpointing does not need: without the hooks the frozen vision tower is neither
            # recomputed nor back-propagated (measured: 1.72x -> 1.37x the step time, benchmarks/reward_step.py).
            backbone.disable_input_require_grads()
        self.backbone = backbone
        embeddings = backbone.get_input_embeddings()
        hidden = embeddings.embedding_dim
        self.reward_embedding = nn.Parameter(embeddings.weight.detach().float().mean(0))  # fp32, as LoRA
        self.head = RewardHead(hidden, config.head_hidden_size)
        embeddings.register_forward_hook(self._write_reward_embedding)

    def _write_reward_embedding(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Replace the embedding of every reward token by the trainable ``reward_embedding``."""
        is_reward = (args[0] == self.reward_token_id).unsqueeze(-1)
        return torch.where(is_reward, self.reward_embedding.to(output.dtype), output)

    @classmethod
    def build(cls, config: SpatialScoreConfig) -> SpatialScore:
        """Load or build the backbone described by ``config`` and wrap it (new head, new reward token)."""
        backbone, processor = load_backbone(config.backbone)
        return cls(backbone, processor, config)

    def forward(
        self,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
    ) -> RewardOutput:
        """Score a batch of encoded (prompt, image) sequences (see :class:`RewardInputEncoder`)."""
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            use_cache=False,
        )
        last = attention_mask.sum(-1) - 1
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self.head(out.last_hidden_state[rows, last])

    @property
    def device(self) -> torch.device:
        """Device of the head's parameters."""
        return self.head.net[0].weight.device

    @torch.no_grad()
    def score(
        self,
        *,
        prompts: Sequence[str],
        images: Sequence[ImageLike],
        batch_size: int = 32,
        show_progress: bool = False,
    ) -> RewardOutput:
        """Scores of ``images[i]`` against ``prompts[i]``, batched; returns CPU tensors ``mu`` and ``log_sigma``.

        Images may be PIL images, paths, uint8 (H, W, 3) arrays or float (3, H, W) tensors in [0, 1]. Batches
        are formed from prompts of similar length (less padding when lengths differ); results come back in the
        input order. A prompt longer than :data:`~spatialscore.data.manifest.MAX_PROMPT_CHARS` characters is a
        ValueError naming it (as in manifests: a batch is padded to its longest prompt).
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, got one string")
        if len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompts but {len(images)} images")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts[{i}] must be a string, got {type(prompt).__name__}")
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ValueError(
                    f"prompts[{i}] has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} (MAX_PROMPT_CHARS): "
                    f"{prompt[:60]!r}..."
                )
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not len(prompts):
            return RewardOutput(torch.empty(0), torch.empty(0))
        was_training = self.training
        self.eval()
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        mus, log_sigmas = [], []
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="scoring", disable=not show_progress):
            chunk = order[start : start + batch_size]
            batch = self.encoder(prompts=[prompts[i] for i in chunk], images=[images[i] for i in chunk])
            out = self(**{k: v.to(self.device) for k, v in batch.items()})
            mus.append(out.mu.cpu())
            log_sigmas.append(out.log_sigma.cpu())
        self.train(was_training)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return RewardOutput(torch.cat(mus)[inverse], torch.cat(log_sigmas)[inverse])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint holds besides the base: LoRA, head, reward token, trained vision parts.

        Under FSDP2 the parameters are sharded DTensors; gathering them is collective, so every rank calls this.
        Units still unsharded after a forward expose their compute-dtype copies, so they are resharded first
        and the fp32 master weights are read.
        """
        from torch.distributed.fsdp import FSDPModule

        for module in self.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
        state = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                value = param.full_tensor() if hasattr(param, "full_tensor") else param
                state[name] = value.detach().cpu().contiguous()
        return state

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        state: dict[str, torch.Tensor] | None = None,
        facts: TrainingFacts | None = None,
    ) -> None:
        """Write the export: a peft adapter folder plus the head, the config, the processor files and a model card.

        Files (see :func:`export_layout`): ``adapter_config.json`` + ``adapter_model.safetensors`` (the LoRA, for
        ``peft.PeftModel.from_pretrained(Qwen2_5_VLForConditionalGeneration, directory)``; absent with
        ``lora.rank: 0``), ``reward_head.safetensors`` (head and reward-token row; :data:`HEAD_SCHEMA` and the
        prompt template in its metadata), ``trained_backbone.safetensors`` when base weights were trained fully,
        ``spatialscore_config.json`` (the settings and, under ``weights_sha256``, the SHA-256 of each weights
        file, which :meth:`from_pretrained` checks), the tokenizer (with the reward token) and image processor,
        and ``README.md`` (:func:`~spatialscore.card.write_model_card` with ``facts``; None: all unknown). Nothing
        is pickled. The base checkpoint is referenced by path; a tiny base built offline is copied to
        ``directory/base`` so that the folder is self-contained. ``state``: weights already gathered by
        :meth:`trainable_state_dict` (distributed runs gather on all ranks and save on one).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = SpatialScoreConfig.from_dict(self.config.to_dict())
        if config.backbone.path is None:
            shutil.copytree(resolve_backbone_path(config.backbone), directory / "base", dirs_exist_ok=True)
            config.backbone.path = "base"
        files = export_layout(state if state is not None else self.trainable_state_dict())
        before, after = config.template.parts()
        metadata = {
            HEAD_NAME: {
                "format": "pt",
                "schema": HEAD_SCHEMA,
                "reward_token": REWARD_TOKEN,
                "reward_token_id": str(self.reward_token_id),
                "text_before_prompt": before,
                "text_after_prompt": after,
            }
        }
        hashes = {}
        for name, tensors in files.items():
            save_file(tensors, str(directory / name), metadata=metadata.get(name, {"format": "pt"}))
            hashes[name] = file_sha256(directory / name)
        if config.lora.rank > 0:
            lora_config(config.lora, base_model=config.backbone.path).save_pretrained(str(directory))
        record = {**config.to_dict(), SHA256_KEY: hashes}
        (directory / CONFIG_NAME).write_text(json.dumps(record, indent=2))
        self.processor.tokenizer.save_pretrained(str(directory))
        self.processor.image_processor.save_pretrained(str(directory))
        write_model_card(
            directory, config=self.config, facts=facts or TrainingFacts(), base_model=config.backbone.path, merged=False
        )

    @staticmethod
    def read_config(directory: str | Path) -> tuple[SpatialScoreConfig, dict[str, str]]:
        """The config of a folder written by :meth:`save_pretrained` and the recorded SHA-256 of each weights file
        (``{}`` for folders written before hashes were recorded); a missing, malformed or tampered file is an error
        naming it and, for a bad field, the field."""
        config_file = Path(directory) / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: not a SpatialScore folder")
        try:
            raw = json.loads(config_file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"{config_file}: not UTF-8 text ({error})") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_file}: invalid JSON ({error})") from None
        except RecursionError:
            raise ValueError(f"{config_file}: invalid JSON (nested too deeply)") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{config_file}: must hold a JSON object, got {type(raw).__name__}")
        raw = dict(raw)
        sha = raw.pop(SHA256_KEY, None)
        files = (ADAPTER_WEIGHTS_NAME, HEAD_NAME, BACKBONE_WEIGHTS_NAME)
        if _is_sha256(sha):  # exports of the single-file layout
            hashes = {WEIGHTS_NAME: sha}
        elif sha is None:
            hashes = {}
        elif isinstance(sha, dict) and all(k in files and _is_sha256(v) for k, v in sha.items()):
            hashes = dict(sha)
        else:
            raise ValueError(
                f"{config_file}: field {SHA256_KEY!r} must be 64 lowercase hex digits, or an object giving them "
                f"for {', '.join(files)}, got {sha!r:.80}"
            )
        try:
            SpatialScoreConfig.check_dict(raw)
            config = SpatialScoreConfig.from_dict(raw)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{config_file}: {error}") from None
        return config, hashes

    @classmethod
    def weight_files(cls, directory: str | Path) -> tuple[SpatialScoreConfig, dict[Path, str | None]]:
        """The config and the weights files a saved folder's layout needs, each with its recorded SHA-256 (None:
        not recorded). Checks that the config is sound and every file exists (an error naming the file), without
        hashing or loading anything: a quick check before a slow start (``spatialscore serve``)."""
        directory = Path(directory)
        config, hashes = cls.read_config(directory)
        if (directory / WEIGHTS_NAME).is_file() and not (directory / HEAD_NAME).is_file():
            names = [WEIGHTS_NAME]  # the single-file layout of earlier exports
        else:
            names = [HEAD_NAME]
            if config.lora.rank > 0:
                names.append(ADAPTER_WEIGHTS_NAME)
            if config.lora.rank == 0 or config.train_vision_merger or config.train_vision_tower:
                names.append(BACKBONE_WEIGHTS_NAME)
        for name in names:
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} not found: the SpatialScore folder lacks weights {CONFIG_NAME} needs"
                )
        return config, {directory / name: hashes.get(name) for name in names}

    @classmethod
    def read_weights(cls, directory: str | Path) -> tuple[SpatialScoreConfig, dict[str, torch.Tensor]]:
        """The config and the trained weights (under :class:`SpatialScore` names) of a saved folder.

        Reads the peft layout of :meth:`save_pretrained` and, for folders exported before it, the single
        ``spatialscore.safetensors`` (see :meth:`weight_files`). Each file is checked against its recorded SHA-256
        first; a missing, unreadable or modified file is an error naming it.
        """
        config, files = cls.weight_files(directory)
        config_file = Path(directory) / CONFIG_NAME
        state = {}
        for path, sha in files.items():
            state.update(_from_export_layout(path.name, _load_weights(path, sha, config_file)))
        return config, state

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, base_path: str | None = None, device: str | torch.device = "cpu"
    ) -> SpatialScore:
        """Load a model saved by :meth:`save_pretrained` (either layout, see :meth:`read_weights`), offline; only
        JSON and safetensors are read.

        ``base_path`` overrides where the Qwen2.5-VL base checkpoint lives (it is not copied into ``directory``);
        a relative recorded base is read against ``directory``, and the model's config holds the absolute path.
        A weights file whose SHA-256 differs from the one recorded in the config (corrupted or modified after
        export) is refused, naming the file, before anything is built.
        """
        directory = Path(directory)
        config, state = cls.read_weights(directory)
        if base_path is not None:
            config.backbone.path = str(Path(base_path).resolve())
        elif config.backbone.path is not None:  # absolute, so that a re-saved model still finds its base
            config.backbone.path = str((directory / config.backbone.path).resolve())
        backbone, _ = load_backbone(config.backbone)
        processor = load_processor(directory)
        if REWARD_TOKEN not in processor.tokenizer.get_vocab():
            raise ValueError(f"{directory}: tokenizer lacks {REWARD_TOKEN}")
        model = cls(backbone, processor, config)
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{directory}: unexpected weights {result.unexpected_keys[:5]}")
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        missing = [k for k in result.missing_keys if k in trainable]
        if missing:
            raise ValueError(f"{directory}: missing weights {missing[:5]}")
        return model.to(device).eval()

"""``spatialscore export``: re-export a SpatialScore folder, or write it as a Qwen2.5-VL checkpoint for stock
``transformers`` with the LoRA merged (``--merged``).

    spatialscore export --model runs/spatialscore-tiny/export --out exports/spatialscore
    spatialscore export --model runs/spatialscore-tiny/export --out exports/merged --merged \\
        --benchmark results/bench/results.json --scorer ours

The merge is done by the stock libraries: the base loads as ``Qwen2_5_VLForConditionalGeneration``, peft loads
the adapter folder and ``merge_and_unload`` folds it in; the reward token's learned row is written into the
embedding table; ``save_pretrained`` writes the checkpoint.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from spatialscore.backbone import REWARD_TOKEN
from spatialscore.card import HeldOutAccuracy, held_out_from_benchmark, read_training_facts, write_model_card
from spatialscore.cli import UsageError, run_command
from spatialscore.files import folder_sha256
from spatialscore.imports import without_bitsandbytes
from spatialscore.model import (
    ADAPTER_CONFIG_NAME,
    BACKBONE_WEIGHTS_NAME,
    HEAD_NAME,
    SpatialScore,
)
from spatialscore.precision import DTYPES

__all__ = ["cli_main", "export_adapter", "export_merged"]


CHECKSUMS_NAME = "SHA256SUMS"


def _refuse_existing(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder: choose a new --out")


def export_adapter(
    *, model: str | Path, out: str | Path, base_path: str | None = None, held_out: HeldOutAccuracy | None = None
) -> Path:
    """Load the SpatialScore folder ``model`` (either layout; hashes checked) and save it to ``out`` in the current
    layout, carrying over the model card's facts (``held_out`` replaces the recorded accuracy when given)."""
    out = Path(out)
    _refuse_existing(out)
    facts = read_training_facts(model)
    if held_out is not None:
        facts = dataclasses.replace(facts, held_out=held_out)
    SpatialScore.from_pretrained(model, base_path=base_path).save_pretrained(out, facts=facts)
    return out


def export_merged(
    *, model: str | Path, out: str | Path, base_path: str | None = None, held_out: HeldOutAccuracy | None = None
) -> Path:
    """Write ``model`` as a ``Qwen2_5_VLForConditionalGeneration`` checkpoint with the LoRA merged.

    ``out`` gets ``config.json`` and safetensors weights (LoRA merged, fully trained parts applied, the reward
    token's row in the embedding table), the tokenizer with the reward token, ``preprocessor_config.json``,
    ``reward_head.safetensors`` (as in the adapter export), a model card and ``SHA256SUMS`` (the SHA-256 of every
    weights file, in coreutils' format: ``sha256sum -c SHA256SUMS`` checks them; stock loaders do not). The base
    is loaded unquantized in the config's dtype: a QLoRA adapter is merged into the full-precision base (scores
    then differ from the quantized model's by the quantization error), and a bf16 merge rounds the merged weights
    to bf16.
    """
    out = Path(out)
    _refuse_existing(out)
    with tempfile.TemporaryDirectory(prefix="spatialscore-export-") as tmp:
        folder = export_adapter(model=model, out=Path(tmp) / "adapter", base_path=base_path, held_out=held_out)
        config, _ = SpatialScore.read_config(folder)  # the base's absolute path, as from_pretrained resolved it
        merged = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            config.backbone.path, dtype=DTYPES[config.backbone.dtype], local_files_only=True, use_safetensors=True
        )
        if (folder / ADAPTER_CONFIG_NAME).is_file():
            with without_bitsandbytes(), warnings.catch_warnings():
                from peft import PeftModel

                # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning under
                # transformers >= 5.20 that no user of this command can act on); exactly that message is ignored
                warnings.filterwarnings(
                    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
                )
                merged = PeftModel.from_pretrained(merged, str(folder)).merge_and_unload()
        if (folder / BACKBONE_WEIGHTS_NAME).is_file():
            result = merged.load_state_dict(load_file(str(folder / BACKBONE_WEIGHTS_NAME)), strict=False)
            if result.unexpected_keys:
                raise ValueError(f"{BACKBONE_WEIGHTS_NAME}: weights the base lacks {result.unexpected_keys[:5]}")
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        if reward_id >= merged.get_input_embeddings().num_embeddings:
            merged.resize_token_embeddings(reward_id + 1)
        row = load_file(str(folder / HEAD_NAME))["reward_embedding"]
        with torch.no_grad():
            embeddings = merged.get_input_embeddings().weight
            embeddings[reward_id] = row.to(embeddings.dtype)
        out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        Qwen2VLImageProcessorPil.from_pretrained(str(folder), local_files_only=True).save_pretrained(str(out))
        shutil.copyfile(folder / HEAD_NAME, out / HEAD_NAME)
        write_model_card(
            out, config=config, facts=read_training_facts(folder), base_model=config.backbone.path, merged=True
        )
    sums = "".join(f"{sha}  {name}\n" for name, sha in folder_sha256(out).items())
    (out / CHECKSUMS_NAME).write_text(sums)  # `sha256sum -c SHA256SUMS` in the folder checks every weights file
    return out


def export_command(
    *,
    model: str,
    out: Path,
    merged: bool = False,
    base_path: str | None = None,
    benchmark: Path | None = None,
    scorer: str | None = None,
) -> int:
    """Export a saved SpatialScore: as a peft adapter folder plus head (default), or with --merged as a
    Qwen2.5-VL checkpoint that stock transformers loads; both with a model card. User errors exit with status
    2 and one line "spatialscore export: error: ...".

    Args:
        model: folder written by SpatialScore.save_pretrained (any layout)
        out: new folder to write (refused if not empty)
        merged: merge the LoRA into a Qwen2.5-VL checkpoint
        base_path: override the base Qwen2.5-VL checkpoint path
        benchmark: a `spatialscore benchmark` results.json: its accuracy and CI go into the model card
        scorer: the scorer of --benchmark that is this model
    """
    if scorer is not None and benchmark is None:
        raise UsageError("--scorer goes with --benchmark")
    try:
        held_out = held_out_from_benchmark(benchmark, scorer=scorer) if benchmark else None
        export = export_merged if merged else export_adapter
        written = export(model=model, out=out, base_path=base_path, held_out=held_out)
    except (OSError, ValueError) as error:
        print(f"spatialscore export: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore export`` (:func:`export_command`)."""
    return run_command(export_command, argv, prog="spatialscore export")

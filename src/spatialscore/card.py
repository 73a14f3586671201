"""The model card (``README.md``) of a SpatialScore export, written and read with ``huggingface_hub``'s card API.

The card's YAML header holds the hub's standard fields (``base_model``, ``library_name``, ``tags``) and a
``spatialscore`` block with what is known about training and evaluation (:class:`TrainingFacts`), so a later
``spatialscore export`` of the folder carries it over. Nothing is filled in that was not measured: an unknown
value is written as unknown.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:
    from spatialscore.model import SpatialScoreConfig

CARD_NAME = "README.md"

__all__ = [
    "CARD_NAME",
    "HeldOutAccuracy",
    "TrainingFacts",
    "held_out_from_benchmark",
    "read_training_facts",
    "write_model_card",
]


@dataclass
class HeldOutAccuracy:
    """Pairwise accuracy (ties count half) on pairs the model did not train on, and where it was measured.

    ``ci_low``/``ci_high``: a bootstrap confidence interval at ``ci_level``, None when none was computed.
    """

    accuracy: float
    source: str
    num_pairs: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None

    def describe(self) -> str:
        """One line for the card: the accuracy, its CI (or that there is none), the pairs and the source."""
        if self.ci_low is not None and self.ci_high is not None:
            level = f"{100 * self.ci_level:.0f}% " if self.ci_level is not None else ""
            ci = f"{level}CI [{self.ci_low:.3f}, {self.ci_high:.3f}]"
        else:
            ci = "CI unknown (none computed)"
        pairs = f"{self.num_pairs} pairs" if self.num_pairs is not None else "number of pairs unknown"
        return f"{self.accuracy:.3f}, {ci}, {pairs}; {self.source}"


@dataclass
class TrainingFacts:
    """What the card states about training: the data (as the fit read it), the loss, held-out accuracy.

    Each None is written as unknown.
    """

    data: str | None = None
    loss: str | None = None
    held_out: HeldOutAccuracy | None = None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def held_out_from_benchmark(results: str | Path, *, scorer: str | None = None) -> HeldOutAccuracy:
    """The overall accuracy and CI of ``scorer`` in a ``spatialscore benchmark`` ``results.json``.

    ``scorer`` may be left out when the results hold one scorer. A missing scorer or a file that is not a
    benchmark's results is a ValueError naming the file.
    """
    path = Path(results)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        scorers = raw["scorers"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not the results.json of spatialscore benchmark ({error})") from None
    if scorer is None:
        if len(scorers) != 1:
            raise ValueError(f"{path} holds scorers {', '.join(scorers)}: name one (--scorer)")
        (scorer,) = scorers
    if scorer not in scorers:
        raise ValueError(f"{path}: no scorer {scorer!r} (it has {', '.join(scorers)})")
    overall = scorers[scorer]["overall"]
    n = overall.get("n")
    return HeldOutAccuracy(
        accuracy=float(overall["accuracy"]),
        source=f"spatialscore benchmark of {raw.get('manifest', 'an unrecorded manifest')} (scorer {scorer!r})",
        num_pairs=int(n) if isinstance(n, int) else None,
        ci_low=_number(overall.get("ci_low")),
        ci_high=_number(overall.get("ci_high")),
        ci_level=_number(raw.get("ci_level")),
    )


def read_training_facts(directory: str | Path) -> TrainingFacts:
    """The :class:`TrainingFacts` recorded in ``directory/README.md`` by :func:`write_model_card` (empty: no card)."""
    path = Path(directory) / CARD_NAME
    if not path.is_file():
        return TrainingFacts()
    block = ModelCard.load(path).data.to_dict().get("spatialscore") or {}
    held_out = block.get("held_out")
    return TrainingFacts(
        data=block.get("training_data"),
        loss=block.get("loss"),
        held_out=HeldOutAccuracy(**held_out) if isinstance(held_out, dict) else None,
    )


def write_model_card(
    directory: str | Path,
    *,
    config: SpatialScoreConfig,
    facts: TrainingFacts,
    base_model: str,
    merged: bool,
) -> Path:
    """Write ``directory/README.md``: base model, data, prompt template, score scale, held-out accuracy, files.

    ``base_model``: the base checkpoint as recorded (a path or hub id). ``merged``: the folder is a Qwen2.5-VL
    checkpoint with the adapter merged (``spatialscore export --merged``) rather than the adapter export.
    """
    before, after = config.template.parts()
    block: dict[str, Any] = {
        "format": "merged" if merged else "adapter",
        "training_data": facts.data,
        "loss": facts.loss,
        "held_out": asdict(facts.held_out) if facts.held_out is not None else None,
        "lora": {"rank": config.lora.rank, "alpha": config.lora.alpha, "targets": list(config.lora.targets)},
    }
    data = ModelCardData(
        base_model=None if config.backbone.path is None else base_model,
        base_model_relation=None if config.backbone.path is None else "merge" if merged else "adapter",
        library_name="transformers" if merged else "peft",
        tags=["spatialscore", "reward-model", "qwen2_5_vl", *([] if merged else ["lora"])],
        metrics=["accuracy"],
        spatialscore=block,
    )
    if merged:
        files = (
            "- `config.json`, `model.safetensors`: Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`) with the LoRA "
            "merged and the reward token's row in the embedding table\n"
            "- tokenizer files (with the added reward token) and `preprocessor_config.json`\n"
            "- `reward_head.safetensors`: the score head (and the reward-token row); schema in its metadata"
        )
        use = "Stock `transformers`: the plain-transformers recipe in the spatialreward README reproduces `score()`."
    else:
        files = (
            "- `adapter_config.json`, `adapter_model.safetensors`: the LoRA as a peft adapter of "
            "`Qwen2_5_VLForConditionalGeneration` (`peft.PeftModel.from_pretrained(base, folder)`)\n"
            "- `reward_head.safetensors`: the score head and the reward-token row; schema in its metadata\n"
            "- `trained_backbone.safetensors` (only when parts of the base were trained fully)\n"
            "- `spatialscore_config.json`: the settings and the SHA-256 of each weights file\n"
            "- tokenizer files (with the added reward token) and `preprocessor_config.json`"
        )
        use = "`spatialscore.model.SpatialScore.from_pretrained(folder).score(prompts=..., images=...)`."
    base_text = (
        base_model
        if config.backbone.path is not None
        else (f"a tiny randomly initialised Qwen2.5-VL built offline ({json.dumps(asdict(config.backbone.tiny))})")
    )
    accuracy = (
        facts.held_out.describe()
        if facts.held_out is not None
        else (
            "unknown: not measured for this export (`spatialscore benchmark`, then `spatialscore export --benchmark`)"
        )
    )
    body = f"""
# SpatialScore

A spatial-correctness reward model: {base_text} with LoRA (rank {config.lora.rank}, alpha {config.lora.alpha}),
a reward token `<|reward|>` appended to every sequence, and an fp32 MLP head on that token's last-layer hidden
state, trained on (correct, spatially perturbed) image pairs with spatialreward (the recipe of arXiv 2602.24233).

## Base model

{base_text}

## Training data

{facts.data or "unknown (not recorded at export)"}; loss: {facts.loss or "unknown"}.

## Prompt template

The image and the prompt are one user turn; the sequence ends in the reward token, whose hidden state is scored:

```text
{before}{{prompt}}{after}
```

`<|image_pad|>` stands for the image's visual tokens (`image_grid_thw.prod() / merge_size**2` of them).

## Score scale

`mu` is a logit-scale score: for two images of one prompt, `sigmoid(mu_a - mu_b)` is the modelled probability
that `a` is the spatially better one (Bradley-Terry). Only differences between scores are meaningful: the head
has no output bias, so the zero point is arbitrary. `sigma = softplus(log_sigma)` is the model's uncertainty
(trained only with the `uncertainty` loss).

## Held-out accuracy

{accuracy}

## Files

{files}

## Use

{use}
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = Path(directory) / CARD_NAME
    card.save(path)
    return path

"""PreferenceDataModule: preference pairs for the reward model, a prompts-only view for RL, images for fine-tuning.

Pairs come from validated manifests (:mod:`spatialscore.data.manifest`) or from procedural scenes generated on
first use (:mod:`spatialscore.data.synthetic`). Collation encodes chosen and rejected images of a batch as one
batch of 2B sequences (chosen first), so the model scores both halves in one forward pass. Sampling is
deterministic for a seed and resumable mid-epoch (the loader's position is stored in Lightning checkpoints).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from spatialscore.data.images import open_rgb
from spatialscore.data.manifest import Manifest, PairRecord, PromptRecord, read_manifest

SPLITS = ("train", "val", "test")


@dataclass
class SyntheticData:
    """Procedural pairs written to ``directory`` on first use (see ``spatialscore synth``).

    A folder generated with other settings is refused (its ``synthetic_spec.json`` records them).

    Args:
        directory: folder of the generated ``train``/``val``/``test.jsonl`` manifests and their images.
        train_pairs: number of training pairs.
        val_pairs: number of validation pairs.
        test_pairs: number of test pairs.
        image_size: side in pixels of the square images.
        stages: curriculum stages of the training pairs (0 = red/blue warm-up ... 4 = two objects of all
            colours ... 6 = the full task, see ``spatialscore synth``), spread evenly over the pairs (a stage
            listed k times gets k shares).
        eval_stages: curriculum stages of the validation and test pairs.
        seed: seed of the generation (each split gets its own stream from it).
        palette_order: name the objects of every pair relation in palette order (red first) at every stage, as
            stages 0-1 do (``spatialscore synth --palette-order true``).
    """

    directory: str = "data/synthetic"
    train_pairs: int = 4000
    val_pairs: int = 200
    test_pairs: int = 500
    image_size: int = 64
    stages: Sequence[int] = (0, 1, 2, 3, 4)
    eval_stages: Sequence[int] = (4,)
    seed: int = 0
    palette_order: bool = False


@dataclass
class CurriculumSchedule:
    """Which curriculum stages a training step draws from, as a function of training progress.

    Records without a ``stage`` in their ``meta`` count as the last stage.

    Args:
        boundaries: ``boundaries[i]`` is the fraction of the run (with a curriculum, one sampler epoch spans
            ``max_steps``) at which the ``i + 1``-th stage present in the data enters. Empty: uniform sampling
            over all records.
        new_stage_weight: the share of the draws that the newest entered stage gets; earlier stages share the
            rest.
    """

    boundaries: Sequence[float] = field(default_factory=list)
    new_stage_weight: float = 0.5


def mirror_groups(records: Sequence[PairRecord]) -> list[list[int]]:
    """Group the records that share the same two images (a pair and its mirror), in first-seen order."""
    groups: dict[frozenset[Path], list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(frozenset((record.chosen, record.rejected)), []).append(index)
    return list(groups.values())


class PairDataset(Dataset):
    """Loads the two images of each pair as uint8 arrays; encoding happens in :class:`PairCollator`."""

    def __init__(self, records: Sequence[PairRecord]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {
            "id": record.id,
            "prompt": record.prompt,
            "chosen": _load_rgb(record.chosen),
            "rejected": _load_rgb(record.rejected),
            "subset": record.subset or "all",
            "category": record.category or "all",
        }


class ImageDataset(Dataset):
    """The chosen image of each pair with its prompt, as float (3, H, W) in [0, 1] (flow-matching fine-tuning).

    ``image_size`` resizes (bicubic) to a square; None keeps the file's size, which must then agree within a batch.
    """

    def __init__(self, records: Sequence[PairRecord], *, image_size: int | None) -> None:
        self.records = list(records)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = open_rgb(record.chosen)
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        array = np.asarray(image)
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
        return {"id": record.id, "prompt": record.prompt, "image": tensor}


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"images": (B, 3, H, W), "prompts": [...], "ids": [...]}``; images of different sizes are an error."""
    sizes = {tuple(item["image"].shape) for item in items}
    if len(sizes) > 1:
        raise ValueError(f"images of different sizes in one batch {sorted(sizes)}: set the data module's image_size")
    return {
        "images": torch.stack([item["image"] for item in items]),
        "prompts": [item["prompt"] for item in items],
        "ids": [item["id"] for item in items],
    }


class PromptDataset(Dataset):
    """Unique prompts with their metadata (``id`` of the first pair, ``subset``, ``category``, ``meta`` keys)."""

    def __init__(self, prompts: Sequence[PromptRecord]) -> None:
        self.prompts = list(prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.prompts[index]
        metadata = {"id": record.ids[0], "subset": record.subset, "category": record.category, **record.meta}
        return {"prompt": record.prompt, "metadata": metadata}


def collate_prompts(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"prompts": [...], "metadata": [...]}``."""
    return {"prompts": [item["prompt"] for item in items], "metadata": [item["metadata"] for item in items]}


def prompt_mirror_groups(prompts: Sequence[PromptRecord], records: Sequence[PairRecord]) -> list[list[int]]:
    """Group each prompt with its mirror: the other prompt of the same two images (``perturbed_prompt``).

    In a batch, a prompt next to its mirror asks for opposite layouts of the same objects, so a policy that
    ignores the prompt gains nothing on average: the RL analogue of mirrored preference batches.
    """
    index = {record.prompt: i for i, record in enumerate(prompts)}
    partner: dict[int, int] = {}
    for record in records:
        i, j = index.get(record.prompt), index.get(record.perturbed_prompt or "")
        if i is not None and j is not None and i != j and i not in partner and j not in partner:
            partner[i], partner[j] = j, i
    groups, seen = [], set()
    for i in range(len(prompts)):
        if i in seen:
            continue
        group = [i] if i not in partner else [i, partner[i]]
        seen.update(group)
        groups.append(group)
    return groups


def _load_rgb(path: Path) -> np.ndarray:
    return np.asarray(open_rgb(path))


def _stage(meta: Any) -> int:
    """A record's curriculum stage (``meta["stage"]``); records without one count as the last stage."""
    return int(meta.get("stage", 1 << 30)) if isinstance(meta, dict) else 1 << 30


class InputEncoder(Protocol):
    """What the ``pairs`` view collates with: prompts and images -> the reward model's input tensors. The model
    gives its own (:class:`spatialscore.encode.RewardInputEncoder`) at setup, so the data layer imports no model
    code."""

    def __call__(self, *, prompts: list[str], images: list[Any]) -> dict[str, Any]: ...


class PairCollator:
    """Encodes a list of pairs into one batch of 2B sequences: chosen images first, then rejected ones."""

    def __init__(self, encoder: InputEncoder) -> None:
        self.encoder = encoder

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [item["prompt"] for item in items]
        images = [item["chosen"] for item in items] + [item["rejected"] for item in items]
        batch: dict[str, Any] = self.encoder(prompts=prompts + prompts, images=images)
        batch["num_pairs"] = len(items)
        for key in ("id", "prompt", "subset", "category"):
            batch[key] = [item[key] for item in items]
        return batch


class CurriculumSampler(DistributedSampler):
    """Deterministic, resumable, distributed sampler of record indices, optionally following a curriculum.

    ``groups`` lists records that must be drawn together, adjacently (a pair and its mirror: the same two images
    with the other prompt and the preference flipped). Such "mirrored batches" cancel every prompt-independent
    gradient, which lets a model leave the symmetric saddle of the text-dependent task much sooner.

    Without a curriculum each epoch is a permutation of the groups. With one, a single "epoch" of
    ``num_samples`` records spans the run, so the curriculum advances with training steps, not per epoch.
    The global order of epoch ``e`` (``set_epoch``, as for any DistributedSampler) is a pure function of
    ``(seed, e)``; rank ``r`` of ``W`` takes every ``W``-th index from ``r``, so one process with batch ``W*b``
    sees exactly the union of what ``W`` processes with batch ``b`` see. It subclasses ``DistributedSampler`` so
    that Lightning does not wrap (and reshuffle) it. Resuming mid-epoch drops the samples already processed.
    """

    def __init__(
        self,
        stages: Sequence[int],
        *,
        seed: int,
        groups: Sequence[Sequence[int]] | None = None,
        schedule: CurriculumSchedule | None = None,
        num_samples: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(range(len(stages)), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.groups = [list(g) for g in groups] if groups is not None else [[i] for i in range(len(stages))]
        self.group_stages = np.asarray([stages[g[0]] for g in self.groups], dtype=np.int64)
        self.group_size = max(len(g) for g in self.groups)
        self.schedule = schedule or CurriculumSchedule()
        self.total = num_samples if num_samples and self.schedule.boundaries else sum(map(len, self.groups))
        self.resume_epoch = -1
        self.resume_skip = 0
        self.progress: Callable[[], int] | None = None
        self.samples_per_batch = 1

    def group_order(self, epoch: int) -> np.ndarray:
        """The order in which groups are drawn in ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        boundaries = list(self.schedule.boundaries)
        if not boundaries:
            return rng.permutation(len(self.groups))
        n = -(-self.total // self.group_size)
        levels = np.unique(self.group_stages)
        progress = np.arange(n) / n
        active = 1 + (progress[:, None] >= np.asarray(boundaries)[None, :]).sum(1)
        active = np.minimum(active, len(levels))
        u = rng.random(n)
        weight = self.schedule.new_stage_weight
        older = np.floor((u - weight) / (1 - weight) * (active - 1)).astype(np.int64)
        level_index = np.where((active == 1) | (u < weight), active - 1, np.clip(older, 0, active - 2))
        out = np.empty(n, dtype=np.int64)
        for i, level in enumerate(levels):
            where = np.flatnonzero(level_index == i)
            pool = rng.permutation(np.flatnonzero(self.group_stages == level))
            out[where] = pool[np.arange(len(where)) % len(pool)]
        return out

    def indices(self, epoch: int) -> list[int]:
        """The global record order of ``epoch`` (all ranks), before resuming and splitting."""
        return [i for g in self.group_order(epoch) for i in self.groups[g]][: self.total]

    def _remaining(self) -> int:
        skip = self.resume_skip if self.epoch == self.resume_epoch else 0
        return self.total - skip

    def __iter__(self) -> Iterator[int]:
        order = self.indices(self.epoch)[self.total - self._remaining() :]
        usable = len(order) - len(order) % self.num_replicas
        return iter(order[self.rank : usable : self.num_replicas])

    def __len__(self) -> int:
        return self._remaining() // self.num_replicas

    def state_dict(self) -> dict[str, int]:
        """Epoch of the batch in progress and the number of its batches the trainer has processed."""
        processed = int(self.progress()) if self.progress is not None else 0
        return {"epoch": self.epoch, "batches": processed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state``: the same epoch, skipping the processed batches' samples (global count)."""
        self.resume_epoch = state["epoch"]
        self.resume_skip = state["batches"] * self.samples_per_batch
        self.set_epoch(state["epoch"])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position is saved in Lightning checkpoints (Lightning's ``_Stateful`` protocol).

    The state lives in its :class:`CurriculumSampler`, which knows how many batches the trainer has processed;
    on load it skips them, so a resumed run sees
    exactly the batches the uninterrupted run would.
    """

    def state_dict(self) -> dict[str, int]:
        """The sampler's position."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the sampler's position."""
        self.sampler.load_state_dict(state)


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs for SpatialScore, prompts for Spatial-RL, image-prompt pairs for flow-matching fine-tuning.

    Give manifests (``train``/``val``/``test``) or ``synthetic`` to generate procedural pairs on first use
    (explicit manifests win, split by split). In the ``pairs`` view an encoder (the model's, set by
    ``SpatialScoreModule``) turns pairs into model inputs.

    Args:
        train: training manifest (JSONL or Parquet path); null: the synthetic one, if ``synthetic`` is set.
        val: validation manifest (JSONL or Parquet path); null: the synthetic one, or no validation.
        test: test manifest (JSONL or Parquet path); null: the synthetic one, or no test set.
        synthetic: procedural pairs generated into a folder on first use, for the splits without a manifest.
        batch_size: training batch size per device: pairs (``pairs`` view), prompts (``prompts``) or images
            (``images``).
        eval_batch_size: validation/test batch size; null: ``batch_size``.
        num_workers: data-loader worker processes (0: load in the main process).
        seed: seed of the training order (the sampler's permutation and curriculum draws).
        curriculum: which curriculum stages training draws from as training progresses; null: uniform.
        mirrored_batches: keep each pair next to its mirror (same images, other prompt, flipped preference)
            in training batches; in the ``prompts`` view, each prompt next to its mirror prompt.
        skip_invalid: drop bad manifest rows and report them instead of failing.
        check_images: check that every image of the manifests exists and decodes before training starts.
        view: what the loaders yield: ``pairs`` (encoded chosen+rejected batches for the reward model),
            ``prompts`` (``{"prompts", "metadata"}`` over the unique perfect prompts; for GRPO) or ``images``
            (``{"images", "prompts", "ids"}``: each pair's chosen image with its prompt; for supervised
            fine-tuning of a generator).
        image_size: ``images`` view: resize (bicubic) every image to this square side; null keeps the files'
            sizes, which must then agree within a batch.
        holdout_eval_prompts: ``prompts`` view: drop from training every prompt (and mirror) that val/test use.
    """

    def __init__(
        self,
        *,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        synthetic: SyntheticData | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        curriculum: CurriculumSchedule | None = None,
        mirrored_batches: bool = True,
        skip_invalid: bool = False,
        check_images: bool = True,
        view: Literal["pairs", "prompts", "images"] = "pairs",
        image_size: int | None = None,
        holdout_eval_prompts: bool = False,
    ) -> None:
        super().__init__()
        if view not in ("pairs", "prompts", "images"):
            raise ValueError(f"view must be 'pairs', 'prompts' or 'images', got {view!r}")
        self.view = view
        self.image_size = image_size
        self.holdout_eval_prompts = holdout_eval_prompts
        self.mirrored_batches = mirrored_batches
        self.paths = {"train": train, "val": val, "test": test}
        self.synthetic = synthetic
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.curriculum = curriculum
        self.skip_invalid = skip_invalid
        self.check_images = check_images
        self.encoder: InputEncoder | None = None
        self.manifests: dict[str, Manifest] = {}
        self._resume_problem: str | None = None  # set by load_state_dict, raised when training resumes

    def manifest_path(self, split: str) -> Path | None:
        """The manifest used for ``split``: the explicit one, else the synthetic one, else None."""
        if self.paths[split] is not None:
            return Path(self.paths[split])
        if self.synthetic is not None:
            return Path(self.synthetic.directory) / f"{split}.jsonl"
        return None

    def prepare_data(self) -> None:
        """Generate the procedural pairs once (rank 0), if configured and not yet on disk.

        Only the splits without an explicit manifest come from ``synthetic``; when every split has one (or the
        others have no pairs), nothing is generated, checked or written, and ``synthetic.directory`` may not exist.
        """
        if self.synthetic is None:
            return
        from spatialscore.data.synthetic import write_synthetic_dataset

        spec = self.synthetic
        sizes = {"train": spec.train_pairs, "val": spec.val_pairs, "test": spec.test_pairs}
        synthetic_splits = [
            split
            for split in SPLITS
            if self.paths[split] is None and (sizes[split] > 0 or self.manifest_path(split).exists())
        ]
        if not synthetic_splits:
            return
        record = Path(spec.directory) / "synthetic_spec.json"
        wanted = json.loads(json.dumps(asdict(spec)))
        added_later = {"palette_order": False}  # what a record written before these settings existed means
        if record.exists() and {**added_later, **json.loads(record.read_text())} != wanted:
            raise ValueError(
                f"{spec.directory} holds procedural data generated with {record.read_text().strip()}, but this run "
                f"asks for {json.dumps(wanted)}: delete the folder or set data.synthetic.directory to another one"
            )
        for offset, split in enumerate(SPLITS):
            path = self.manifest_path(split)
            if self.paths[split] is not None or path.exists() or sizes[split] == 0:
                continue
            stages = spec.stages if split == "train" else spec.eval_stages
            write_synthetic_dataset(
                Path(spec.directory),
                num_pairs=sizes[split],
                seed=spec.seed * 1000 + offset,
                image_size=spec.image_size,
                stages=tuple(stages),
                split=split,
                palette_order=spec.palette_order,
            )
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(wanted))

    def load(self, split: str) -> Manifest | None:
        """Read and validate ``split``'s manifest (cached); None when the split is not configured."""
        if split not in self.manifests:
            path = self.manifest_path(split)
            if path is None or not path.exists():
                if self.paths[split] is not None:
                    raise FileNotFoundError(f"{split} manifest not found: {path}")
                return None
            self.manifests[split] = read_manifest(
                path, skip_invalid=self.skip_invalid, check_images=self.check_images, show_progress=True
            )
        return self.manifests[split]

    def setup(self, stage: str | None = None) -> None:
        """Validate the manifests needed by ``stage`` before any training starts."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for split in wanted:
            self.load(split)
        if stage == "fit" and "train" not in self.manifests:
            raise ValueError("no training data: give `train` (a manifest path) or `synthetic`")
        if stage == "fit":
            self._refuse_mismatched_resume()

    def set_encoder(self, encoder: InputEncoder) -> None:
        """Set the model's input encoder used by collation."""
        self.encoder = encoder

    def _collator(self) -> PairCollator:
        if self.encoder is None:
            raise RuntimeError("PreferenceDataModule has no encoder: use it with SpatialScoreModule or set_encoder()")
        return PairCollator(self.encoder)

    def _has_trainer(self) -> bool:
        return getattr(self, "trainer", None) is not None

    def _batches_processed(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _dataset(self, records: Sequence[PairRecord] | Sequence[PromptRecord]) -> Dataset:
        """The dataset of this view over ``records`` (prompt records for the prompts view, else pair records)."""
        if self.view == "prompts":
            return PromptDataset(records)
        if self.view == "images":
            return ImageDataset(records, image_size=self.image_size)
        return PairDataset(records)

    def _collate(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        if self.view == "prompts":
            return collate_prompts
        if self.view == "images":
            return collate_images
        return self._collator()

    def train_dataloader(self) -> DataLoader:
        self._refuse_mismatched_resume()
        manifest = self.manifests["train"]
        records = manifest.records
        groups = mirror_groups(records) if self.mirrored_batches and self.view == "pairs" else None
        if self.view == "prompts":
            prompts = manifest.prompts()
            if self.holdout_eval_prompts:
                prompts = self.without_eval_prompts(prompts)
            groups = prompt_mirror_groups(prompts, records) if self.mirrored_batches else None
            records = prompts
        stages = [_stage(r.meta) for r in records]
        num_samples = None
        if self._has_trainer() and self.trainer.max_steps > 0:
            num_samples = self.trainer.max_steps * self.batch_size * self.trainer.world_size
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._has_trainer() else (1, 0)
        sampler = CurriculumSampler(
            stages,
            seed=self.seed,
            groups=groups,
            schedule=self.curriculum,
            num_samples=num_samples,
            num_replicas=world,
            rank=rank,
        )
        if self._has_trainer():
            sampler.progress = self._batches_processed
            sampler.samples_per_batch = self.batch_size * self.trainer.world_size
        return ResumableDataLoader(
            self._dataset(records),
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=True,
        )

    def without_eval_prompts(self, prompts: list[PromptRecord]) -> list[PromptRecord]:
        """Training prompts minus every prompt of the val/test manifests (and their mirrors), so evaluation
        measures generalisation to unseen prompts; an empty remainder is an error."""
        held: set[str] = set()
        for split in ("val", "test"):
            manifest = self.manifests.get(split) or self.load(split)
            if manifest is not None:
                held.update(p for r in manifest.records for p in (r.prompt, r.perturbed_prompt) if p)
        kept = [p for p in prompts if p.prompt not in held]
        if len(kept) < self.batch_size:
            raise ValueError(
                f"holdout_eval_prompts left {len(kept)} of {len(prompts)} training prompts (val/test use the rest), "
                f"fewer than batch_size={self.batch_size}: use fewer val/test pairs or a larger prompt space"
            )
        return kept

    def _eval_loader(self, split: str) -> DataLoader | list:
        manifest = self.manifests.get(split) or self.load(split)
        if manifest is None:
            return []
        return DataLoader(
            self._dataset(manifest.prompts() if self.view == "prompts" else manifest.records),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def prompts(self, split: str = "train") -> list[PromptRecord]:
        """The prompts-only view of ``split``: unique perfect prompts with their metadata (for Spatial-RL)."""
        manifest = self.load(split)
        if manifest is None:
            raise ValueError(f"split {split!r} has no manifest")
        return manifest.prompts()

    def state_dict(self) -> dict[str, Any]:
        """Data settings recorded in checkpoints (the loader position is saved by the loader itself)."""
        return {"seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse to resume training with a different seed or batch size, which would silently change the data
        order (and the saved loader position, counted in batches, would point elsewhere).

        Only resuming training depends on them: ``validate``/``test``/``predict`` from a checkpoint read the
        evaluation splits in file order, so any batch size or seed is fine there. Under a trainer that is
        fitting the mismatch is refused at once; otherwise it is remembered and refused by ``setup("fit")`` and
        :meth:`train_dataloader`.
        """
        problems = [
            f"data.{key}={state[key]}"
            for key in ("seed", "batch_size")
            if state.get(key, getattr(self, key)) != getattr(self, key)
        ]
        self._resume_problem = None
        if problems:
            now = ", ".join(f"data.{key}={getattr(self, key)}" for key in ("seed", "batch_size"))
            self._resume_problem = (
                f"cannot resume training: the checkpoint was trained with {', '.join(problems)}, this run has "
                f"{now}; resume with the checkpoint's settings (validate/test accept any)"
            )
        if self._fitting():
            self._refuse_mismatched_resume()

    def _fitting(self) -> bool:
        return self._has_trainer() and self.trainer.state.fn == TrainerFn.FITTING

    def _refuse_mismatched_resume(self) -> None:
        if self._resume_problem is not None:
            raise ValueError(self._resume_problem)

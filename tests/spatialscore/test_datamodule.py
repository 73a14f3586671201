"""PreferenceDataModule: collation layout, deterministic and resumable sampling, curriculum, prompts view."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from spatialscore.backbone import BackboneConfig, load_processor, resolve_backbone_path
from spatialscore.data.datamodule import (
    CurriculumSampler,
    CurriculumSchedule,
    PairCollator,
    PairDataset,
    PreferenceDataModule,
    SyntheticData,
    collate_images,
    mirror_groups,
)
from spatialscore.data.manifest import ManifestValidationError
from spatialscore.encode import RewardInputEncoder


@pytest.fixture(scope="module")
def encoder():
    return RewardInputEncoder(load_processor(resolve_backbone_path(BackboneConfig())))


def test_collation_puts_chosen_first(synthetic_dir, encoder):
    dm = PreferenceDataModule(train=str(synthetic_dir / "train.jsonl"), batch_size=4)
    dm.setup("fit")
    dataset = PairDataset(dm.manifests["train"].records)
    items = [dataset[i] for i in range(3)]
    batch = PairCollator(encoder)(items)
    ref = encoder(
        prompts=[i["prompt"] for i in items] * 2,
        images=[i["chosen"] for i in items] + [i["rejected"] for i in items],
    )
    assert batch["num_pairs"] == 3
    for key, value in ref.items():
        assert torch.equal(batch[key], value)
    assert batch["subset"] == [i["subset"] for i in items]


def test_mirror_groups_pair_each_record_with_its_mirror(synthetic_dir):
    dm = PreferenceDataModule(train=str(synthetic_dir / "train.jsonl"))
    records = dm.load("train").records
    groups = mirror_groups(records)
    assert all(len(g) == 2 for g in groups) and len(groups) * 2 == len(records)
    for a, b in groups:
        assert records[a].chosen == records[b].rejected and records[a].rejected == records[b].chosen
        assert records[a].prompt == records[b].perturbed_prompt


def test_sampler_is_deterministic_and_keeps_groups_adjacent():
    stages = [0] * 6 + [1] * 6
    groups = [[i, i + 1] for i in range(0, 12, 2)]
    a = CurriculumSampler(stages, seed=3, groups=groups)
    b = CurriculumSampler(stages, seed=3, groups=groups)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert first == list(b) and first != second and sorted(first) == list(range(12))
    assert all(first[i] % 2 == 0 and first[i + 1] == first[i] + 1 for i in range(0, 12, 2))
    assert list(CurriculumSampler(stages, seed=4, groups=groups)) != first


def test_ranks_split_the_single_process_order():
    stages = [0] * 20
    groups = [[i, i + 1] for i in range(0, 20, 2)]
    single = list(CurriculumSampler(stages, seed=5, groups=groups))
    ranks = [list(CurriculumSampler(stages, seed=5, groups=groups, num_replicas=2, rank=r)) for r in (0, 1)]
    for step in range(5):
        assert sorted(ranks[0][2 * step : 2 * step + 2] + ranks[1][2 * step : 2 * step + 2]) == sorted(
            single[4 * step : 4 * step + 4]
        )


def test_curriculum_starts_easy_and_ends_mixed():
    stages = [0] * 100 + [1] * 100 + [2] * 100
    sampler = CurriculumSampler(
        stages, seed=0, schedule=CurriculumSchedule(boundaries=[0.3, 0.6], new_stage_weight=0.5), num_samples=3000
    )
    order = np.asarray(stages)[sampler.indices(0)]
    assert len(order) == 3000
    assert (order[:900] == 0).all()
    assert set(order[1000:1700]) == {0, 1}
    late = order[2000:]
    assert abs((late == 2).mean() - 0.5) < 0.06 and abs((late == 0).mean() - 0.25) < 0.06


def test_sampler_resume_skips_processed_batches():
    stages = [0] * 40
    full = CurriculumSampler(stages, seed=1).indices(0)
    resumed = CurriculumSampler(stages, seed=1)
    resumed.samples_per_batch = 8
    resumed.load_state_dict({"epoch": 0, "batches": 3})
    assert len(resumed) == 16
    assert list(resumed) == full[24:]
    resumed.set_epoch(1)
    assert len(resumed) == 40 and list(resumed) == CurriculumSampler(stages, seed=1).indices(1)
    assert len(CurriculumSampler(stages, seed=1)) == 40


def test_prompts_view_and_validation_errors(synthetic_dir, tmp_path):
    dm = PreferenceDataModule(train=str(synthetic_dir / "train.jsonl"))
    prompts = dm.prompts("train")
    records = dm.load("train").records
    assert [p.prompt for p in prompts] == list(dict.fromkeys(r.prompt for r in records))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "missing.png", "rejected": "missing2.png"}) + "\n")
    with pytest.raises(ManifestValidationError, match=r"bad.jsonl:1: field 'chosen'"):
        PreferenceDataModule(train=str(bad)).setup("fit")
    with pytest.raises(ValueError, match="no training data"):
        PreferenceDataModule().setup("fit")


def test_encoder_must_be_set(synthetic_dir):
    dm = PreferenceDataModule(train=str(synthetic_dir / "train.jsonl"))
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="no encoder"):
        dm.train_dataloader()


def test_synthetic_data_is_generated_once_and_never_silently_mismatched(tmp_path):
    from spatialscore.data.datamodule import SyntheticData

    spec = SyntheticData(
        directory=str(tmp_path / "syn"), train_pairs=4, val_pairs=2, test_pairs=0, stages=(1,), eval_stages=(1,)
    )
    dm = PreferenceDataModule(synthetic=spec)
    dm.prepare_data()
    first = (tmp_path / "syn" / "train.jsonl").read_bytes()
    PreferenceDataModule(synthetic=spec).prepare_data()
    assert (tmp_path / "syn" / "train.jsonl").read_bytes() == first
    assert not (tmp_path / "syn" / "test.jsonl").exists()
    assert len(dm.load("train")) == 8
    other = SyntheticData(**{**spec.__dict__, "seed": 1})
    with pytest.raises(ValueError, match="generated with .* but this run asks for"):
        PreferenceDataModule(synthetic=other).prepare_data()


def _loader_module(directory, **kwargs) -> PreferenceDataModule:
    data = SyntheticData(
        directory=str(directory),
        train_pairs=24,
        val_pairs=4,
        test_pairs=0,
        stages=(1,),
        eval_stages=(1,),
        image_size=64,
    )
    module = PreferenceDataModule(synthetic=data, batch_size=4, **kwargs)
    module.prepare_data()
    module.setup("fit")
    return module


def test_prompts_view_batches_each_prompt_next_to_its_mirror(tmp_path):
    module = _loader_module(tmp_path, view="prompts")
    batches = list(module.train_dataloader())
    prompts = [p for b in batches for p in b["prompts"]]
    assert len(prompts) == len(set(prompts)) == len(module.manifests["train"].prompts())
    mirror = {r.prompt: r.perturbed_prompt for r in module.manifests["train"].records}
    for batch in batches:
        first, second = batch["prompts"][0], batch["prompts"][1]
        assert mirror[first] == second and mirror[second] == first
        assert batch["metadata"][0]["stage"] == 1 and "scene" in batch["metadata"][0]
    val = next(iter(module.val_dataloader()))
    assert set(val) == {"prompts", "metadata"}


def test_holdout_removes_eval_prompts_from_training(tmp_path):
    module = _loader_module(tmp_path, view="prompts", holdout_eval_prompts=True)
    train = {record.prompt for record in module.train_dataloader().dataset.prompts}
    val = {p for b in module.val_dataloader() for p in b["prompts"]}
    assert train and val and not train & val
    everything = {p.prompt for p in module.manifests["train"].prompts()}
    assert train == everything - val


def test_images_view_resizes_chosen_images(tmp_path):
    module = _loader_module(tmp_path, view="images", image_size=32)
    batch = next(iter(module.train_dataloader()))
    assert batch["images"].shape == (4, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert 0 <= float(batch["images"].min()) and float(batch["images"].max()) <= 1
    records = {r.id: r for r in module.manifests["train"].records}
    full = np.asarray(Image.open(records[batch["ids"][0]].chosen).convert("RGB").resize((32, 32), Image.BICUBIC))
    np.testing.assert_allclose(batch["images"][0].permute(1, 2, 0).numpy() * 255, full, atol=1e-3)
    assert batch["prompts"][0] == records[batch["ids"][0]].prompt


def test_images_of_different_sizes_need_image_size():
    items = [
        {"id": "a", "prompt": "p", "image": torch.zeros(3, 8, 8)},
        {"id": "b", "prompt": "q", "image": torch.zeros(3, 16, 16)},
    ]
    with pytest.raises(ValueError, match="image_size"):
        collate_images(items)
    assert collate_images(items[:1])["images"].shape == (1, 3, 8, 8)


def _explicit(synthetic_dir) -> dict[str, str]:
    return {split: str(synthetic_dir / f"{split}.jsonl") for split in ("train", "val", "test")}


def test_explicit_manifests_ignore_the_synthetic_block(synthetic_dir, tmp_path):
    """Issue 15: `fit` with train/val/test manifests and the tiny config's `data.synthetic` block wrote
    synthetic_spec.json into a folder it never created (FileNotFoundError), or refused a foreign record there."""
    missing = tmp_path / "never-created" / "synthetic"
    spec = SyntheticData(
        directory=str(missing), train_pairs=4, val_pairs=2, test_pairs=2, stages=(1,), eval_stages=(1,)
    )
    module = PreferenceDataModule(**_explicit(synthetic_dir), synthetic=spec)
    module.prepare_data()
    assert not (tmp_path / "never-created").exists()
    module.setup("fit")
    module.setup("test")
    assert len(module.manifests["train"]) == len(PreferenceDataModule(**_explicit(synthetic_dir)).load("train"))
    # a folder holding another spec's record is neither checked nor rewritten when no split comes from it
    other = tmp_path / "other"
    other.mkdir()
    (other / "synthetic_spec.json").write_text('{"seed": 99}')
    PreferenceDataModule(**_explicit(synthetic_dir), synthetic=SyntheticData(directory=str(other))).prepare_data()
    assert (other / "synthetic_spec.json").read_text() == '{"seed": 99}'
    assert [p.name for p in other.iterdir()] == ["synthetic_spec.json"]


def test_synthetic_fills_only_the_splits_without_a_manifest(synthetic_dir, tmp_path):
    folder = tmp_path / "nested" / "syn"
    spec = SyntheticData(directory=str(folder), train_pairs=4, val_pairs=2, test_pairs=0, stages=(1,), eval_stages=(1,))
    module = PreferenceDataModule(train=str(synthetic_dir / "train.jsonl"), synthetic=spec)
    module.prepare_data()
    assert (folder / "val.jsonl").is_file() and not (folder / "train.jsonl").exists()
    assert json.loads((folder / "synthetic_spec.json").read_text())["val_pairs"] == 2
    module.setup("fit")
    assert len(module.manifests["val"]) == 4  # 2 pairs and their mirrors


def test_palette_order_is_recorded_only_when_on(tmp_path):
    """A folder written before ``palette_order`` existed (no such key in its record) stays valid; with the flag on,
    the record says so and the generated prompts name red first."""
    folder = tmp_path / "syn"
    spec = SyntheticData(directory=str(folder), train_pairs=4, val_pairs=0, test_pairs=0, stages=(3,), eval_stages=(3,))
    PreferenceDataModule(synthetic=spec).prepare_data()
    record = folder / "synthetic_spec.json"
    old = {k: v for k, v in json.loads(record.read_text()).items() if k != "palette_order"}
    record.write_text(json.dumps(old))
    (folder / "train.synth.json").write_text(
        json.dumps(
            {k: v for k, v in json.loads((folder / "train.synth.json").read_text()).items() if k != "palette_order"}
        )
    )
    PreferenceDataModule(synthetic=spec).prepare_data()  # an old folder: accepted as it is
    assert json.loads(record.read_text())["palette_order"] is False
    wide = SyntheticData(
        **{**spec.__dict__, "directory": str(tmp_path / "wide"), "train_pairs": 12, "palette_order": True}
    )
    PreferenceDataModule(synthetic=wide).prepare_data()
    assert json.loads((tmp_path / "wide" / "synthetic_spec.json").read_text())["palette_order"] is True
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "wide" / "train.jsonl").read_text().splitlines()]
    assert len(prompts) == 24 and all(p.startswith("a red ") for p in prompts)
    with pytest.raises(ValueError, match="palette_order"):
        PreferenceDataModule(synthetic=SyntheticData(**{**wide.__dict__, "palette_order": False})).prepare_data()


def test_batch_size_binds_resuming_training_only(synthetic_dir):
    """Issue 15: validate/test --ckpt_path refused a checkpoint trained with another batch size."""
    state = PreferenceDataModule(**_explicit(synthetic_dir), batch_size=4, seed=0).state_dict()
    module = PreferenceDataModule(**_explicit(synthetic_dir), batch_size=8, seed=0, view="images")
    module.load_state_dict(state)
    module.setup("validate")
    module.setup("test")
    assert next(iter(module.val_dataloader()))["images"].shape[0] == 8
    assert next(iter(module.test_dataloader()))["images"].shape[0] == 8
    message = (
        r"cannot resume training: the checkpoint was trained with data.batch_size=4, this run has data.seed=0, "
        r"data.batch_size=8"
    )
    with pytest.raises(ValueError, match=message):
        module.setup("fit")
    with pytest.raises(ValueError, match=message):
        module.train_dataloader()
    same = PreferenceDataModule(**_explicit(synthetic_dir), batch_size=4, seed=0, view="images")
    same.load_state_dict(state)
    same.setup("fit")
    assert len(same.train_dataloader()) > 0


class _MeanImage(L.LightningModule):
    """A one-parameter model of the images view: enough for Lightning to checkpoint and restore a data module."""

    def __init__(self) -> None:
        super().__init__()
        self.level = torch.nn.Parameter(torch.zeros(()))

    def _loss(self, batch) -> torch.Tensor:
        return (batch["images"].mean() - self.level).square()

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), batch_size=len(batch["ids"]))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._loss(batch), batch_size=len(batch["ids"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_validate_and_test_accept_a_checkpoint_of_another_batch_size(synthetic_dir, tmp_path):
    def trainer(**kwargs) -> L.Trainer:
        return L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(tmp_path),
            **kwargs,
        )

    def data(batch_size: int) -> PreferenceDataModule:
        return PreferenceDataModule(**_explicit(synthetic_dir), batch_size=batch_size, view="images")

    first = trainer(max_steps=2, limit_val_batches=1)
    first.fit(_MeanImage(), datamodule=data(4))
    ckpt = tmp_path / "four.ckpt"
    first.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["PreferenceDataModule"] == {"seed": 0, "batch_size": 4}
    validated = trainer().validate(_MeanImage(), datamodule=data(8), ckpt_path=str(ckpt), verbose=False)
    tested = trainer().test(_MeanImage(), datamodule=data(8), ckpt_path=str(ckpt), verbose=False)
    assert "val_loss" in validated[0] and "test_loss" in tested[0]
    with pytest.raises(
        ValueError, match=r"cannot resume training: .*data.batch_size=4, this run has .*data.batch_size=8"
    ):
        trainer(max_steps=4).fit(_MeanImage(), datamodule=data(8), ckpt_path=str(ckpt))
    resumed = trainer(max_steps=4, limit_val_batches=1)
    resumed.fit(_MeanImage(), datamodule=data(4), ckpt_path=str(ckpt))
    assert resumed.global_step == 4

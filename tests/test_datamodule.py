"""PreferenceDataModule: collation layout, deterministic and resumable sampling, curriculum, prompts view."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spatialscore.backbone import BackboneConfig, load_processor, resolve_backbone_path
from spatialscore.data.datamodule import (
    CurriculumSampler,
    CurriculumSchedule,
    PairCollator,
    PairDataset,
    PreferenceDataModule,
    mirror_groups,
)
from spatialscore.data.encode import RewardInputEncoder
from spatialscore.data.manifest import ManifestValidationError


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

    spec = SyntheticData(directory=str(tmp_path / "syn"), train_pairs=4, val_pairs=2, test_pairs=0, stages=(1,), eval_stages=(1,))
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

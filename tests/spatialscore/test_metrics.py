import datetime
import json
import math
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spatialscore.metrics import LOSS, TIE, WIN, PairwiseAccuracy, bootstrap_ci, pair_outcomes

# Eight pairs: wins at 0, 2, 3, 6; ties at 1, 7; losses at 4, 5.
CHOSEN = [1.0, 0.5, 3.0, 2.0, -1.0, 0.0, 4.0, -2.0]
REJECTED = [0.0, 0.5, 1.0, 1.0, 1.0, 2.0, 0.0, -2.0]
SUBSETS = ["1 pert", "1 pert", "2-3 pert", "2-3 pert", "1 pert", "2-3 pert", "2-3 pert", "1 pert"]
CATEGORIES = ["swap", "flip", "swap", "flip", "swap", "swap", "predicate", "predicate"]


def _floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: value.item() for key, value in result.items()}


def _assert_same(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, nan_ok=True), key


def _hand_metric(**kwargs) -> PairwiseAccuracy:
    metric = PairwiseAccuracy(**kwargs)
    metric.update(
        chosen=torch.tensor(CHOSEN[:5]),
        rejected=torch.tensor(REJECTED[:5]),
        subsets=SUBSETS[:5],
        categories=CATEGORIES[:5],
    )
    metric.update(
        chosen=torch.tensor(CHOSEN[5:]),
        rejected=torch.tensor(REJECTED[5:]),
        subsets=SUBSETS[5:],
        categories=CATEGORIES[5:],
    )
    return metric


def test_pair_outcomes_codes_and_tolerance():
    chosen = torch.tensor([1.0, 1.0, 0.0, 0.75, 0.25, -0.625, float("nan")])
    rejected = torch.tensor([0.0, 1.0, 1.0, 0.25, 0.75, 0.0, 0.0])
    assert pair_outcomes(chosen=chosen, rejected=rejected).tolist() == [WIN, TIE, LOSS, WIN, LOSS, LOSS, LOSS]
    assert pair_outcomes(chosen=chosen, rejected=rejected, tie_tolerance=0.5).tolist() == [
        WIN,
        TIE,
        LOSS,
        TIE,
        TIE,
        LOSS,
        LOSS,
    ]
    with pytest.raises(ValueError, match="shape"):
        pair_outcomes(chosen=torch.zeros(2), rejected=torch.zeros(3))


def test_hand_computed_overall_subset_and_category():
    result = _floats(_hand_metric().compute())
    expected = {
        "accuracy": 5 / 8,
        "accuracy_no_ties": 4 / 6,
        "tie_rate": 2 / 8,
        "num_pairs": 8,
        # 1 pert: pairs 0 (W), 1 (T), 4 (L), 7 (T)
        "subset/1 pert/accuracy": 2 / 4,
        "subset/1 pert/accuracy_no_ties": 1 / 2,
        "subset/1 pert/tie_rate": 2 / 4,
        "subset/1 pert/num_pairs": 4,
        # 2-3 pert: pairs 2 (W), 3 (W), 5 (L), 6 (W)
        "subset/2-3 pert/accuracy": 3 / 4,
        "subset/2-3 pert/accuracy_no_ties": 3 / 4,
        "subset/2-3 pert/tie_rate": 0.0,
        "subset/2-3 pert/num_pairs": 4,
        # flip: 1 (T), 3 (W)
        "category/flip/accuracy": 3 / 4,
        "category/flip/accuracy_no_ties": 1.0,
        "category/flip/tie_rate": 1 / 2,
        "category/flip/num_pairs": 2,
        # predicate: 6 (W), 7 (T)
        "category/predicate/accuracy": 3 / 4,
        "category/predicate/accuracy_no_ties": 1.0,
        "category/predicate/tie_rate": 1 / 2,
        "category/predicate/num_pairs": 2,
        # swap: 0 (W), 2 (W), 4 (L), 5 (L)
        "category/swap/accuracy": 1 / 2,
        "category/swap/accuracy_no_ties": 1 / 2,
        "category/swap/tie_rate": 0.0,
        "category/swap/num_pairs": 4,
    }
    _assert_same(result, expected)
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in _hand_metric().compute().values())


def test_tie_tolerance_changes_outcomes():
    metric = PairwiseAccuracy(tie_tolerance=0.5)
    metric.update(chosen=torch.tensor([1.0, 0.4, 0.5, -0.6]), rejected=torch.zeros(4))
    result = _floats(metric.compute())
    # win, tie, tie (|d| <= tol), loss
    assert result["accuracy"] == pytest.approx(2 / 4)
    assert result["tie_rate"] == pytest.approx(2 / 4)
    assert result["accuracy_no_ties"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        PairwiseAccuracy(tie_tolerance=-1.0)


def test_declared_groups_without_pairs_and_unlabelled_pairs():
    metric = PairwiseAccuracy(subset_names=["2-3 pert", "1 pert"], category_names=["swap"])
    metric.update(chosen=torch.tensor([1.0, 2.0]), rejected=torch.zeros(2), subsets=["1 pert", "1 pert"])
    result = _floats(metric.compute())
    assert result["num_pairs"] == 2 and result["accuracy"] == 1.0
    assert result["subset/1 pert/num_pairs"] == 2
    assert result["subset/2-3 pert/num_pairs"] == 0
    assert math.isnan(result["subset/2-3 pert/accuracy"]) and math.isnan(result["subset/2-3 pert/tie_rate"])
    assert result["category/swap/num_pairs"] == 0
    keys = list(result)
    assert keys.index("subset/2-3 pert/accuracy") < keys.index("subset/1 pert/accuracy")  # declared order kept

    plain = PairwiseAccuracy()
    plain.update(chosen=torch.tensor([1.0]), rejected=torch.zeros(1))
    assert set(plain.compute()) == {"accuracy", "accuracy_no_ties", "tie_rate", "num_pairs"}


def test_all_ties_and_no_pairs_give_nan_rates():
    metric = PairwiseAccuracy()
    metric.update(chosen=torch.zeros(3), rejected=torch.zeros(3))
    result = _floats(metric.compute())
    assert result["accuracy"] == 0.5 and result["tie_rate"] == 1.0 and math.isnan(result["accuracy_no_ties"])
    empty = PairwiseAccuracy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _floats(empty.compute())
    assert result["num_pairs"] == 0 and math.isnan(result["accuracy"])


def test_reset_clears_pairs_and_labels_are_recorded_again():
    metric = _hand_metric()
    metric.reset()
    metric.update(chosen=torch.tensor([0.0]), rejected=torch.tensor([1.0]), subsets=["1 pert"], categories=["swap"])
    result = _floats(metric.compute())
    assert result["num_pairs"] == 1 and result["accuracy"] == 0.0
    assert result["subset/1 pert/num_pairs"] == 1 and "subset/2-3 pert/num_pairs" not in result


def test_forward_returns_batch_values_and_accumulates():
    metric = PairwiseAccuracy()
    batch = metric(chosen=torch.tensor([1.0, -1.0]), rejected=torch.zeros(2), subsets=["a", "b"])
    assert batch["accuracy"].item() == 0.5 and batch["subset/a/accuracy"].item() == 1.0
    metric(chosen=torch.tensor([1.0]), rejected=torch.zeros(1), subsets=["a"])
    result = _floats(metric.compute())
    assert result["num_pairs"] == 3 and result["subset/a/num_pairs"] == 2 and result["subset/b/num_pairs"] == 1


def test_label_validation():
    metric = PairwiseAccuracy()
    with pytest.raises(ValueError, match="subsets"):
        metric.update(chosen=torch.zeros(2), rejected=torch.zeros(2), subsets=["a"])
    with pytest.raises(ValueError, match="categories"):
        metric.update(chosen=torch.zeros(2), rejected=torch.zeros(2), categories="ab")


def _outcomes(n: int, p_win: float, p_tie: float, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator)
    return torch.where(u < p_win, WIN, torch.where(u < p_win + p_tie, TIE, LOSS)).to(torch.int8)


def test_bootstrap_ci_is_deterministic_and_shrinks_with_n():
    g = torch.Generator().manual_seed(0)
    outcomes = _outcomes(500, 0.7, 0.1, g)
    assert bootstrap_ci(outcomes, seed=3) == bootstrap_ci(outcomes, seed=3)
    assert bootstrap_ci(outcomes, seed=3) != bootstrap_ci(outcomes, seed=4)
    low, high = bootstrap_ci(outcomes)
    accuracy = ((outcomes == WIN).sum() + 0.5 * (outcomes == TIE).sum()).item() / 500
    assert low < accuracy < high
    widths = []
    for n in (100, 1_000, 10_000):
        low, high = bootstrap_ci(_outcomes(n, 0.7, 0.1, g))
        widths.append(high - low)
    assert widths[0] > 2.5 * widths[1] > 6 * widths[2]
    assert all(math.isnan(v) for v in bootstrap_ci(torch.empty(0, dtype=torch.int8)))


def test_bootstrap_ci_matches_explicit_resampling_and_normal_width():
    g = torch.Generator().manual_seed(1)
    outcomes = _outcomes(400, 0.6, 0.2, g)
    credit = (outcomes.double() + 1) / 2
    indices = torch.randint(0, 400, (4000, 400), generator=g)
    explicit = torch.quantile(credit[indices].mean(dim=1), torch.tensor([0.025, 0.975], dtype=torch.float64))
    low, high = bootstrap_ci(outcomes, num_samples=4000)
    assert low == pytest.approx(explicit[0].item(), abs=0.006)
    assert high == pytest.approx(explicit[1].item(), abs=0.006)
    assert high - low == pytest.approx(2 * 1.96 * credit.std().item() / 20, rel=0.06)


def test_bootstrap_ci_covers_true_accuracy_at_nominal_rate():
    g = torch.Generator().manual_seed(2)
    true_accuracy = 0.7 + 0.5 * 0.1
    covered = 0
    for seed in range(300):
        low, high = bootstrap_ci(_outcomes(300, 0.7, 0.1, g), num_samples=500, seed=seed)
        covered += low <= true_accuracy <= high
    assert 0.91 <= covered / 300 <= 0.98


def test_metric_reports_bootstrap_ci_per_group():
    metric = _hand_metric(bootstrap_samples=200, ci_seed=5)
    result = _floats(metric.compute())
    for prefix in ("", "subset/1 pert/", "category/swap/"):
        assert result[f"{prefix}accuracy_ci_low"] <= result[f"{prefix}accuracy"] <= result[f"{prefix}accuracy_ci_high"]
    outcomes = pair_outcomes(chosen=torch.tensor(CHOSEN), rejected=torch.tensor(REJECTED))
    assert (result["accuracy_ci_low"], result["accuracy_ci_high"]) == pytest.approx(
        bootstrap_ci(outcomes, num_samples=200, seed=5)
    )


# ---- real two-process DDP sync (gloo on CPU) ----


def _all_pairs():
    g = torch.Generator().manual_seed(7)
    chosen = torch.randn(40, generator=g).round(decimals=1)
    rejected = torch.randn(40, generator=g).round(decimals=1)
    subsets = ["1 pert" if i % 3 else "2-3 pert" for i in range(40)]
    categories = ["swap", "flip", "predicate", "ränk-1 only ✓"]
    categories = [categories[i % 3] if i < 20 else categories[i % 4] for i in range(40)]
    return chosen, rejected, subsets, categories


def _metrics_to_check() -> dict[str, PairwiseAccuracy]:
    return {
        "discovered": PairwiseAccuracy(bootstrap_samples=100, tie_tolerance=0.05),
        # Every label declared up front: rank 0 records no label bytes at all.
        "declared": PairwiseAccuracy(
            subset_names=["1 pert", "2-3 pert"], category_names=["swap", "flip", "predicate", "ränk-1 only ✓"]
        ),
        # Rank 1 never calls update.
        "idle_rank": PairwiseAccuracy(),
    }


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        chosen, rejected, subsets, categories = _all_pairs()
        rows = range(0, 20) if rank == 0 else range(20, 40)  # only rank 1 sees "ränk-1 only ✓"
        results = {}
        for name, metric in _metrics_to_check().items():
            if not (name == "idle_rank" and rank == 1):
                for batch in (list(rows)[:7], list(rows)[7:]):
                    metric.update(
                        chosen=chosen[batch],
                        rejected=rejected[batch],
                        subsets=[subsets[i] for i in batch],
                        categories=[categories[i] for i in batch],
                    )
            results[name] = _floats(metric.compute())
            # The local (unsynced) state is restored after compute: still only this rank's pairs.
            assert sum(len(t) for t in metric.outcomes) == (0 if name == "idle_rank" and rank == 1 else 20)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_sync_matches_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    chosen, rejected, subsets, categories = _all_pairs()
    for name, metric in _metrics_to_check().items():
        rows = list(range(20)) if name == "idle_rank" else list(range(40))
        metric.update(
            chosen=chosen[rows],
            rejected=rejected[rows],
            subsets=[subsets[i] for i in rows],
            categories=[categories[i] for i in rows],
        )
        expected = _floats(metric.compute())
        assert "category/ränk-1 only ✓/num_pairs" in expected or name == "idle_rank"
        for rank in (0, 1):
            with open(tmp_path / f"rank{rank}.json") as f:
                _assert_same(json.load(f)[name], expected)

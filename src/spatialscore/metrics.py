"""Pairwise preference accuracy, overall and per subset/category, with DDP sync and bootstrap CIs.

Group labels under DDP: strings cannot be all-gathered, so every label is mapped to a stable integer id
(``zlib.crc32`` of its UTF-8 bytes; Python's ``hash`` is salted per process) stored per pair, and the UTF-8
bytes of each label a rank sees are kept in tensor states too. Both are synced with ``dist_reduce_fx="cat"``,
so after sync every rank can decode every name, including labels that only another rank saw. Labels passed
as ``subset_names``/``category_names`` at construction are always reported (also with zero pairs), which
keeps the logged key set fixed across epochs and ranks.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["LOSS", "NO_GROUP", "TIE", "WIN", "PairwiseAccuracy", "bootstrap_ci", "label_id", "pair_outcomes"]

WIN, TIE, LOSS = 1, 0, -1
NO_GROUP = -1

_STATE_DTYPES = {
    "outcomes": torch.int8,
    "subset_ids": torch.int64,
    "category_ids": torch.int64,
    "name_bytes": torch.uint8,
    "name_lengths": torch.int64,
}


def label_id(name: str) -> int:
    """Stable id of a group label, identical on every rank and in every process: CRC-32 of its UTF-8 bytes."""
    return zlib.crc32(name.encode("utf-8"))


def pair_outcomes(*, chosen: Tensor, rejected: Tensor, tie_tolerance: float = 0.0) -> Tensor:
    """Per-pair outcome codes (int8): ``WIN`` (1) if ``chosen - rejected > tie_tolerance``, ``TIE`` (0) if
    ``|chosen - rejected| <= tie_tolerance``, otherwise ``LOSS`` (-1), which includes NaN differences."""
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen and rejected must have the same shape, got {chosen.shape} and {rejected.shape}")
    dtype = torch.promote_types(torch.promote_types(chosen.dtype, rejected.dtype), torch.float32)
    diff = chosen.detach().to(dtype).flatten() - rejected.detach().to(dtype).flatten()
    outcomes = torch.full_like(diff, LOSS, dtype=torch.int8)
    outcomes[diff.abs() <= tie_tolerance] = TIE
    outcomes[diff > tie_tolerance] = WIN
    return outcomes


def _counts(outcomes: Tensor) -> tuple[int, int, int]:
    return int((outcomes == WIN).sum()), int((outcomes == TIE).sum()), int((outcomes == LOSS).sum())


def bootstrap_ci(
    outcomes: Tensor, *, num_samples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` CI of the accuracy (ties count half) of outcome codes.

    Resampling n pairs with replacement only matters through the resampled (win, tie, loss) counts, which are
    Multinomial(n, observed frequencies); sampling those counts directly is the exact same bootstrap at
    O(num_samples) cost instead of O(num_samples * n). Deterministic for a given ``seed``.
    Returns ``(nan, nan)`` for no pairs.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    wins, ties, losses = _counts(outcomes)
    n = wins + ties + losses
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [wins / n, ties / n, losses / n], size=num_samples)
    accuracies = (counts[:, 0] + 0.5 * counts[:, 1]) / n
    low, high = np.quantile(accuracies, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


class PairwiseAccuracy(Metric):
    """Accuracy of a reward model on (chosen, rejected) pairs, with ties reported separately.

    ``compute()`` returns float32 scalars: ``accuracy`` (ties count half), ``accuracy_no_ties`` (wins over
    non-tied pairs), ``tie_rate`` and ``num_pairs``, plus the same under ``subset/{name}/...`` and
    ``category/{name}/...``; with ``bootstrap_samples > 0`` also ``accuracy_ci_low``/``accuracy_ci_high``
    (percentile bootstrap, level ``1 - ci_alpha``) for each of them. Rates of empty groups are NaN.
    A pair whose score difference is NaN (a NaN score, or inf - inf) counts as a loss, so a diverged model scores
    low in validation; ``spatialscore benchmark`` refuses such pairs instead
    (:class:`spatialscore.benchmark.UndefinedScoresError`).

    Args:
        tie_tolerance: score differences with ``|chosen - rejected| <= tie_tolerance`` are ties.
        subset_names: subsets always reported (in this order); others are added as they are seen.
        category_names: categories always reported (in this order); others are added as they are seen.
        bootstrap_samples: bootstrap resamples for the accuracy CIs; 0 disables them.
        ci_alpha: one minus the CI level.
        ci_seed: seed of the bootstrap (each group uses the same seed, so results are reproducible).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        *,
        tie_tolerance: float = 0.0,
        subset_names: Sequence[str] | None = None,
        category_names: Sequence[str] | None = None,
        bootstrap_samples: int = 0,
        ci_alpha: float = 0.05,
        ci_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if tie_tolerance < 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
        if bootstrap_samples < 0:
            raise ValueError(f"bootstrap_samples must be >= 0, got {bootstrap_samples}")
        self.tie_tolerance = float(tie_tolerance)
        self.bootstrap_samples = bootstrap_samples
        self.ci_alpha = ci_alpha
        self.ci_seed = ci_seed
        self.subset_names = list(subset_names or [])
        self.category_names = list(category_names or [])
        self._static_names: dict[int, str] = {}
        self._register_names(self.subset_names + self.category_names, self._static_names)
        self._recorded_ids: set[int] = set()
        for state in _STATE_DTYPES:
            self.add_state(state, default=[], dist_reduce_fx="cat")

    @staticmethod
    def _register_names(names: Iterable[str], registry: dict[int, str]) -> None:
        for name in names:
            key = label_id(name)
            if registry.setdefault(key, name) != name:
                raise ValueError(f"labels {registry[key]!r} and {name!r} have the same CRC-32 id; rename one")

    def _group_ids(self, labels: Sequence[str] | None, num_pairs: int, kind: str) -> Tensor:
        if labels is None:
            return torch.full((num_pairs,), NO_GROUP, dtype=torch.int64, device=self.device)
        if isinstance(labels, str) or len(labels) != num_pairs:
            raise ValueError(f"{kind} must be a sequence of {num_pairs} labels, one per pair")
        ids = []
        for name in labels:
            key = label_id(name)
            if key not in self._recorded_ids and key not in self._static_names:
                encoded = name.encode("utf-8")
                self.name_bytes.append(torch.tensor(list(encoded), dtype=torch.uint8, device=self.device))
                self.name_lengths.append(torch.tensor([len(encoded)], dtype=torch.int64, device=self.device))
                self._recorded_ids.add(key)
            ids.append(key)
        return torch.tensor(ids, dtype=torch.int64, device=self.device)

    def update(
        self,
        *,
        chosen: Tensor,
        rejected: Tensor,
        subsets: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
    ) -> None:
        """Record one outcome per pair; ``subsets``/``categories`` hold one label per pair (or None)."""
        outcomes = pair_outcomes(chosen=chosen, rejected=rejected, tie_tolerance=self.tie_tolerance)
        num_pairs = outcomes.numel()
        self.outcomes.append(outcomes.to(self.device))
        self.subset_ids.append(self._group_ids(subsets, num_pairs, "subsets"))
        self.category_ids.append(self._group_ids(categories, num_pairs, "categories"))

    def reset(self) -> None:
        """Clear all pairs (and the record of which labels this rank has stored)."""
        super().reset()
        self._recorded_ids = set()

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Sync states across ranks; first gives empty list states a typed, zero-length tensor.

        torchmetrics fills a rank's empty list state with a float tensor before gathering, whose dtype would
        not match the integer tensors of the other ranks (e.g. a rank that saw no new labels).
        """
        for state, dtype in _STATE_DTYPES.items():
            if isinstance(getattr(self, state), list) and not getattr(self, state):
                getattr(self, state).append(torch.empty(0, dtype=dtype, device=self.device))
        super().sync(*args, **kwargs)

    def _state(self, state: str) -> Tensor:
        value = getattr(self, state)
        if isinstance(value, list) and not value:
            return torch.empty(0, dtype=_STATE_DTYPES[state], device=self.device)
        return dim_zero_cat(value)

    def _names(self) -> dict[int, str]:
        names = dict(self._static_names)
        lengths = self._state("name_lengths").tolist()
        for chunk in torch.split(self._state("name_bytes").cpu(), lengths):
            self._register_names([bytes(chunk.tolist()).decode("utf-8")], names)
        return names

    def _summary(self, outcomes: Tensor) -> dict[str, Tensor]:
        wins, ties, losses = _counts(outcomes)
        n = wins + ties + losses
        nan = float("nan")
        values = {
            "accuracy": (wins + 0.5 * ties) / n if n else nan,
            "accuracy_no_ties": wins / (wins + losses) if wins + losses else nan,
            "tie_rate": ties / n if n else nan,
            "num_pairs": n,
        }
        if self.bootstrap_samples:
            low, high = bootstrap_ci(
                outcomes, num_samples=self.bootstrap_samples, alpha=self.ci_alpha, seed=self.ci_seed
            )
            values |= {"accuracy_ci_low": low, "accuracy_ci_high": high}
        return {key: torch.tensor(value, dtype=torch.float32, device=self.device) for key, value in values.items()}

    def _group_summaries(
        self, prefix: str, outcomes: Tensor, ids: Tensor, declared: list[str], names: dict[int, str]
    ) -> dict[str, Tensor]:
        present = {names[key] for key in ids.unique().tolist() if key != NO_GROUP}
        ordered = declared + sorted(present - set(declared))
        result = {}
        for name in ordered:
            summary = self._summary(outcomes[ids == label_id(name)])
            result |= {f"{prefix}/{name}/{key}": value for key, value in summary.items()}
        return result

    def compute(self) -> dict[str, Tensor]:
        """Overall and per-group metrics (see the class docstring) over all pairs seen on all ranks."""
        outcomes = self._state("outcomes")
        names = self._names()
        result = self._summary(outcomes)
        result |= self._group_summaries("subset", outcomes, self._state("subset_ids"), self.subset_names, names)
        result |= self._group_summaries("category", outcomes, self._state("category_ids"), self.category_names, names)
        return result

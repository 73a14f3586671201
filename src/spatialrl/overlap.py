"""Score rollout chunks while the next chunk samples, so that reward time hides behind rollout time.

:func:`score_while_sampling` runs the scoring of each finished chunk in one background thread while the caller's
thread samples the next. One worker scores the chunks one after another, in order, each exactly as a direct call
would, so the results are those of scoring each chunk in turn. It pays off when scoring waits on something other
than the sampler's processors (a reward server, another GPU); the last chunk's scoring is never hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["score_while_sampling"]

Chunk = TypeVar("Chunk")
Score = TypeVar("Score")


def score_while_sampling(chunks: Iterable[Chunk], score: Callable[[Chunk], Score]) -> tuple[list[Chunk], list[Score]]:
    """Draw ``chunks`` in this thread (a generator that samples each on demand) and ``score`` each in a background
    thread as soon as it exists; return the chunks and their scores, in order.

    The first scoring error is raised as soon as the sampling loop sees it (the chunks not yet scored are not
    scored), or after the last chunk; an error while sampling cancels the pending scoring and propagates. The
    worker thread uses the caller's current CUDA device (it is per thread in torch).
    """
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def use_callers_device() -> None:
        if device is not None:
            torch.cuda.set_device(device)

    produced: list[Chunk] = []
    futures: list[Future[Score]] = []
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward", initializer=use_callers_device)
    try:
        for chunk in chunks:
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:
                failed.result()
            produced.append(chunk)
            futures.append(pool.submit(score, chunk))
        return produced, [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

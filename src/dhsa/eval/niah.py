"""Needle in a haystack: one magic-number needle at a chosen depth of an essay haystack.

The sample is RULER's ``niah_single_2`` (essay haystack, word key, seven-digit value) with the
needle's depth given instead of drawn; the reply scores 1 when it contains the number.
"""

from __future__ import annotations

from .haystack import TokenCounter
from .ruler import NEEDLE_TASKS, Sample, needle_sample, sample_rng

NIAH_TASK = "niah_single_2"


def niah_sample(
    length: int, depth: float, index: int, count_tokens: TokenCounter, essays, seed: int = 0
) -> Sample:
    """Sample ``index`` at ``length`` tokens with its needle at ``depth`` (0 = first, 1 = last).

    The key, value and haystack start depend on ``(seed, length, index)`` only, so every depth of
    one index hides the same needle in the same text.
    """
    rng = sample_rng(seed, "niah", length, index)
    return needle_sample(
        NEEDLE_TASKS[NIAH_TASK], "niah", rng, length, count_tokens, essays, depths=[depth]
    )


def niah_cell_sample(
    length: int, index: int, depth: float, count_tokens: TokenCounter, essays, seed: int = 0
) -> Sample:
    """:func:`niah_sample` with the arguments in the order a grid cell gives them
    (``length, index, item``, as :func:`dhsa.eval.session.run_session` calls ``sample_for``)."""
    return niah_sample(length, depth, index, count_tokens, essays, seed=seed)

"""Haystacks for needle tasks: essay sentences, a fitted length and needle insertion by depth.

A haystack is a list of *units* (sentences, or distractor lines) joined by single spaces. Needles go
between units, so they always sit at a sentence boundary, and the context is sized in the model's
own tokens: the largest number of units whose full prompt still fits the target length.
"""

from __future__ import annotations

import json
import os
import re
from bisect import bisect_left
from collections.abc import Callable
from functools import lru_cache
from itertools import accumulate
from pathlib import Path

# The essays are not bundled: $DHSA_HAYSTACK, else the copy beside a checkout of this repository.
DEFAULT_HAYSTACK = os.environ.get("DHSA_HAYSTACK", "../shared/data/PaulGrahamEssays.json")

# A sentence ends at . ! or ? and the next one starts with a capital, a quote or a bracket; the
# essays lost their paragraph breaks ("...die?The startling"), so no whitespace is required.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s*(?=[A-Z\"'(])")

NOISE_SENTENCES = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

TokenCounter = Callable[[str], int]


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, empty ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


@lru_cache(maxsize=4)
def _essay_sentences(resolved: str) -> tuple[str, ...]:
    with open(resolved, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ValueError(f'haystack file {resolved} must be JSON {{"text": "..."}}')
    sentences = tuple(split_sentences(data["text"]))
    if len(sentences) < 2:
        raise ValueError(f"haystack file {resolved} holds fewer than two sentences")
    return sentences


def essay_sentences(path: str | Path = DEFAULT_HAYSTACK) -> tuple[str, ...]:
    """Sentences of an essay collection stored as JSON ``{"text": ...}`` (cached per path)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"haystack file not found: {path} (pass --haystack PATH, or set DHSA_HAYSTACK, to a "
            'JSON file {"text": ...})'
        )
    return _essay_sentences(str(path.resolve()))


def cycle_units(units: tuple[str, ...] | list[str], start: int, count: int) -> list[str]:
    """``count`` units read from ``start`` on, wrapping around (haystacks beyond the source)."""
    n = len(units)
    return [units[(start + i) % n] for i in range(count)]


def insert_at_depths(units: list[str], needles: list[str], depths: list[float]) -> list[str]:
    """``units`` with ``needles[i]`` placed at the unit boundary nearest to fraction ``depths[i]``
    of the joined text's characters.

    Depth 0 puts a needle first, depth 1 last. Needles keep their order where depths tie.
    """
    if len(needles) != len(depths):
        raise ValueError(f"{len(needles)} needles but {len(depths)} depths")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"needle depth must lie in [0, 1], got {depth}")
    # Character offset of every boundary: before unit i, after the joining spaces.
    offsets = list(accumulate((len(u) + 1 for u in units), initial=0))
    total = max(offsets[-1] - 1, 0)
    slots = [bisect_nearest(offsets, d * total) for d in depths]
    out: list[str] = []
    order = sorted(range(len(needles)), key=lambda i: (slots[i], i))
    cursor = 0
    for i in order:
        out.extend(units[cursor : slots[i]])
        cursor = max(cursor, slots[i])
        out.append(needles[i])
    out.extend(units[cursor:])
    return out


def bisect_nearest(sorted_values: list[int], target: float) -> int:
    """The index of the entry of ``sorted_values`` nearest to ``target`` (the first on ties)."""
    i = bisect_left(sorted_values, target)
    if i == len(sorted_values) or (
        i > 0 and target - sorted_values[i - 1] <= sorted_values[i] - target
    ):
        return i - 1
    return i


def fit_units(render: Callable[[int], str], count_tokens: TokenCounter, max_tokens: int) -> int:
    """The largest ``n`` with ``count_tokens(render(n)) <= max_tokens`` (``render`` grows with n).

    Doubling then bisection: about ``2 log2(n)`` tokenizations of the prompt.
    """
    if count_tokens(render(0)) > max_tokens:
        raise ValueError(
            f"the prompt without any haystack already exceeds {max_tokens} tokens: raise the length"
        )
    lo, hi = 0, 16
    while count_tokens(render(hi)) <= max_tokens:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(render(mid)) <= max_tokens:
            lo = mid
        else:
            hi = mid
    return lo


def join_units(units: list[str]) -> str:
    return " ".join(units)

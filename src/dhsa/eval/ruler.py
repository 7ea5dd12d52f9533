"""RULER-style synthetic tasks, generated locally and reproducibly from a seed.

Every task turns ``(rng, length, count_tokens, essays)`` into a :class:`Sample` whose prompt is the
largest one that leaves ``max_new_tokens`` of room inside ``length`` tokens of the model's own
tokenizer. Answers are the strings a correct reply contains; a reply scores the fraction of them
it contains (:func:`dhsa.eval.metrics.string_match_all`), as in RULER.

Tasks: needle retrieval (``niah_single_1..3``, ``niah_multikey_1..3``, ``niah_multivalue``,
``niah_multiquery``), ``vt`` (variable tracking), ``cwe`` (common-word extraction) and ``fwe``
(frequent-word extraction).
"""

from __future__ import annotations

import random
import string
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial

from .haystack import (
    NOISE_SENTENCES,
    TokenCounter,
    cycle_units,
    fit_units,
    insert_at_depths,
    join_units,
)


@dataclass(frozen=True)
class Sample:
    """One prompt and what a correct reply must contain.

    ``prompt`` ends with an answer prefix so base and instruct models both complete it directly.
    ``needles`` are the inserted needle texts and ``depths`` their requested depths in [0, 1]
    (needle tasks only).
    """

    task: str
    prompt: str
    answers: tuple[str, ...]
    max_new_tokens: int
    needles: tuple[str, ...] = ()
    depths: tuple[float, ...] = ()
    extra: dict = field(default_factory=dict)


@lru_cache(maxsize=1)
def english_words() -> tuple[str, ...]:
    """Lower-case single English words (nouns, adjectives, verbs) from ``wonderwords``' lists."""
    try:
        from wonderwords import RandomWord
    except ImportError as error:
        raise ImportError("RULER word tasks need wonderwords: pip install 'dhsa[eval]'") from error
    lists = RandomWord(enhanced_prefixes=False)
    listed = lists.filter(include_categories=["noun", "adjective", "verb"])
    return tuple(sorted({w for w in listed if w.isalpha() and w.islower()}))


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _word_key(rng: random.Random) -> str:
    words = english_words()
    return f"{rng.choice(words)}-{rng.choice(words)}"


_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "words": _word_key,
    "numbers": _number,
    "uuids": _uuid,
}


def _distinct(rng: random.Random, kind: str, count: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        item = _MAKERS[kind](rng)
        if item not in taken:
            taken.add(item)
            out.append(item)
    return out


@dataclass(frozen=True)
class NeedleSpec:
    """A needle-retrieval task.

    ``haystack``: ``"noise"`` (repeated filler sentences), ``"essay"`` (essay sentences from a
    random start) or ``"needles"`` (distractor needles with other keys). ``num_keys`` needles
    with distinct keys are inserted (each with ``num_values`` values); the first ``num_queries``
    keys are asked for.
    """

    haystack: str
    key_kind: str
    value_kind: str
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1

    @property
    def noun(self) -> str:
        return "numbers" if self.value_kind == "numbers" else "uuids"

    @property
    def max_new_tokens(self) -> int:
        per_value = 12 if self.value_kind == "numbers" else 48
        return 8 + per_value * self.num_values * self.num_queries


class _GrowingUnits:
    """Haystack units produced on demand from their own rng, so ``take(n)`` is a prefix of
    ``take(n + 1)`` (fitting the length then only ever adds units at the end)."""

    def __init__(self, make: Callable[[], str]):
        self._make = make
        self._units: list[str] = []

    def take(self, n: int) -> list[str]:
        while len(self._units) < n:
            self._units.append(self._make())
        return self._units[:n]


def _haystack_units(spec: NeedleSpec, rng: random.Random, essays, taken: set[str]):
    if spec.haystack == "noise":
        return lambda n: cycle_units(NOISE_SENTENCES, 0, n)
    if spec.haystack == "essay":
        start = rng.randrange(len(essays))
        return lambda n: cycle_units(essays, start, n)
    filler_rng = random.Random(rng.getrandbits(64))

    def distractor() -> str:
        key = _distinct(filler_rng, spec.key_kind, 1, taken)[0]
        value = _MAKERS[spec.value_kind](filler_rng)
        return _needle_text(spec, key, value)

    return _GrowingUnits(distractor).take


def _needle_text(spec: NeedleSpec, key: str, value: str) -> str:
    return f"One of the special magic {spec.noun} for {key} is: {value}."


def needle_sample(
    spec: NeedleSpec,
    task: str,
    rng: random.Random,
    length: int,
    count_tokens: TokenCounter,
    essays,
    depths: list[float] | None = None,
) -> Sample:
    """A needle-retrieval sample of ``spec`` fitted to ``length`` tokens.

    ``depths`` (one per inserted needle, in [0, 1]) fixes where the needles go; random otherwise.
    """
    taken: set[str] = set()
    keys = _distinct(rng, spec.key_kind, spec.num_keys, taken)
    values = [_distinct(rng, spec.value_kind, spec.num_values, taken) for _ in keys]
    needles = [_needle_text(spec, k, v) for k, vs in zip(keys, values, strict=False) for v in vs]
    if depths is None:
        depths = [rng.random() for _ in needles]
    if len(depths) != len(needles):
        raise ValueError(f"task {task} inserts {len(needles)} needles, got {len(depths)} depths")
    order = list(range(len(needles)))
    rng.shuffle(order)
    needles = [needles[i] for i in order]
    units = _haystack_units(spec, rng, essays, taken)
    queries = keys[: spec.num_queries]
    query = ", ".join(queries[:-1]) + (" and " if len(queries) > 1 else "") + queries[-1]
    header = (
        f"Some special magic {spec.noun} are hidden within the following text. Make sure to "
        f"memorize it. I will quiz you about the {spec.noun} afterwards.\n"
    )
    if spec.num_values * spec.num_queries > 1:
        asked, verb = f"all the special magic {spec.noun}", "are"
    else:
        asked, verb = f"the special magic {spec.noun[:-1]}", "is"
    question = (
        f"\nWhat {verb} {asked} for {query} mentioned in the provided text? "
        f"{asked[0].upper()}{asked[1:]} for {query} mentioned in the provided text {verb}"
    )

    def render(n: int) -> str:
        return header + join_units(insert_at_depths(units(n), needles, depths)) + question

    n = fit_units(render, count_tokens, length - spec.max_new_tokens)
    answers = tuple(v for k, vs in zip(keys, values, strict=False) if k in queries for v in vs)
    return Sample(
        task=task,
        prompt=render(n),
        answers=answers,
        max_new_tokens=spec.max_new_tokens,
        needles=tuple(needles),
        depths=tuple(depths),
    )


def _variable_name(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=5))


def variable_tracking_sample(
    task: str, rng: random.Random, length: int, count_tokens: TokenCounter, essays, hops: int = 4
) -> Sample:
    """One chain ``VAR A = value``, ``VAR B = VAR A``, ... (``hops`` links) in noise text; the
    answer is every variable that ends up holding the value."""
    names: list[str] = []
    while len(names) < hops + 1:
        name = _variable_name(rng)
        if name not in names:
            names.append(name)
    value = str(rng.randint(10_000, 99_999))
    lines = [f"VAR {names[0]} = {value}."]
    lines += [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:], strict=False)]
    depths = sorted(rng.random() for _ in lines)
    header = (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    )
    question = (
        f"\nQuestion: Find all variables that are assigned the value {value} in the text above. "
        f"Answer: According to the chain(s) of variable assignment in the text above, "
        f"{len(names)} variables are assigned the value {value}, they are:"
    )

    def render(n: int) -> str:
        units = cycle_units(NOISE_SENTENCES, 0, n)
        return header + join_units(insert_at_depths(units, lines, depths)) + question

    max_new = 30
    n = fit_units(render, count_tokens, length - max_new)
    return Sample(
        task, render(n), tuple(names), max_new, needles=tuple(lines), depths=tuple(depths)
    )


def common_words_sample(
    task: str, rng: random.Random, length: int, count_tokens: TokenCounter, essays, top: int = 10
) -> Sample:
    """A numbered word list where ``top`` words repeat more often than all others; the answer is
    those words. Repeats scale with the length so short contexts still fit them."""
    words = list(english_words())
    rng.shuffle(words)
    common, rare = words[:top], words[top:]
    common_freq = max(6, min(30, length // 256))
    rare_freq = 3
    seed = rng.getrandbits(64)

    def word_list(n: int) -> list[str]:
        items = common * common_freq + rare[:n] * rare_freq
        random.Random(seed).shuffle(items)
        return items

    header = (
        "Below is a numbered list of words. In these words, some appear more often than others.\n"
    )
    question = (
        f"\nQuestion: What are the {top} most common words in the above list? "
        f"Answer: The top {top} words that appear most often in the list are:"
    )

    def render(n: int) -> str:
        return header + " ".join(f"{i + 1}. {w}" for i, w in enumerate(word_list(n))) + question

    n = fit_units(render, count_tokens, length - 120)
    return Sample(task, render(n), tuple(common), 120, extra={"common_freq": common_freq})


def frequent_words_sample(
    task: str, rng: random.Random, length: int, count_tokens: TokenCounter, essays, top: int = 3
) -> Sample:
    """Coded text of random three-letter words drawn from a Zipf law (exponent 2); the answer is
    the ``top`` most frequent words, counted in the text itself."""
    vocab: list[str] = []
    while len(vocab) < 500:
        word = "".join(rng.choices(string.ascii_lowercase, k=3))
        if word not in vocab:
            vocab.append(word)
    weights = [1.0 / (rank + 1) ** 2 for rank in range(len(vocab))]
    stream = _GrowingUnits(lambda: rng.choices(vocab, weights)[0])
    header = (
        "Read the following coded text and track the frequency of each coded word. Find the "
        f"{top} most frequently appeared coded words.\n"
    )
    question = (
        f"\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the "
        f"{top} most frequently appeared words in the above coded text? Answer: According to the "
        f"coded text above, the {top} most frequently appeared words are:"
    )

    def render(n: int) -> str:
        return header + " ".join(stream.take(n)) + " ...." + question

    n = fit_units(render, count_tokens, length - 50)
    while n > top:
        ranked = Counter(stream.take(n)).most_common(top + 1)
        if len(ranked) <= top or ranked[top - 1][1] > ranked[top][1]:
            break
        n -= 1  # a tie for the last answer place: shorten until the answer is unambiguous
    ranked = Counter(stream.take(n)).most_common(top)
    return Sample(task, render(n), tuple(w for w, _ in ranked), 50)


NEEDLE_TASKS: dict[str, NeedleSpec] = {
    "niah_single_1": NeedleSpec("noise", "words", "numbers"),
    "niah_single_2": NeedleSpec("essay", "words", "numbers"),
    "niah_single_3": NeedleSpec("essay", "words", "uuids"),
    "niah_multikey_1": NeedleSpec("essay", "words", "numbers", num_keys=4),
    "niah_multikey_2": NeedleSpec("needles", "words", "numbers"),
    "niah_multikey_3": NeedleSpec("needles", "uuids", "uuids"),
    "niah_multivalue": NeedleSpec("essay", "words", "numbers", num_values=4),
    "niah_multiquery": NeedleSpec("essay", "words", "numbers", num_keys=4, num_queries=4),
}

TaskFn = Callable[[random.Random, int, TokenCounter, tuple], Sample]

TASKS: dict[str, TaskFn] = {
    **{name: partial(needle_sample, spec, name) for name, spec in NEEDLE_TASKS.items()},
    "vt": partial(variable_tracking_sample, "vt"),
    "cwe": partial(common_words_sample, "cwe"),
    "fwe": partial(frequent_words_sample, "fwe"),
}


def sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    """The rng of one sample: the same ``(seed, task, length, index)`` gives the same sample."""
    return random.Random(f"{seed}:{task}:{length}:{index}")


def make_sample(
    task: str, length: int, index: int, count_tokens: TokenCounter, essays, seed: int = 0
) -> Sample:
    """Sample ``index`` of ``task`` at ``length`` tokens (see :data:`TASKS`)."""
    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}: allowed {sorted(TASKS)}")
    return TASKS[task](sample_rng(seed, task, length, index), length, count_tokens, essays)

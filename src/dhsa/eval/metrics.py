"""Answer scorers: RULER's string match and LongBench's metrics. Every score lies in [0, 1].

LongBench's conventions are followed: answers are normalized (lower case, punctuation and the
articles a/an/the removed, whitespace collapsed) before token F1 and ROUGE-L; a sample's score is
the best over its reference answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def string_match_all(prediction: str, answers: Sequence[str]) -> float:
    """RULER: the fraction of ``answers`` found (case-insensitive) anywhere in ``prediction``."""
    if not answers:
        raise ValueError("string_match_all needs at least one answer")
    text = prediction.lower()
    return sum(answer.lower() in text for answer in answers) / len(answers)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD / LongBench)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction_tokens: Sequence[str], reference_tokens: Sequence[str]) -> float:
    """Harmonic mean of token precision and recall (multiset overlap)."""
    common = Counter(prediction_tokens) & Counter(reference_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def _best(score, prediction: str, answers: Iterable[str]) -> float:
    answers = list(answers)
    if not answers:
        raise ValueError("a sample needs at least one reference answer")
    return max(score(prediction, answer) for answer in answers)


def qa_f1(prediction: str, answers: Iterable[str]) -> float:
    """LongBench ``qa_f1_score``: token F1 of the normalized texts, best over ``answers``."""
    return _best(
        lambda p, a: token_f1(normalize_answer(p).split(), normalize_answer(a).split()),
        prediction,
        answers,
    )


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (``O(len(a) * len(b))``)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b):
            above = row[j + 1]
            row[j + 1] = diagonal + 1 if x == y else max(row[j + 1], row[j])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, answers: Iterable[str]) -> float:
    """ROUGE-L F1 (LCS of normalized tokens), best over ``answers``."""

    def score(p: str, a: str) -> float:
        pt, at = normalize_answer(p).split(), normalize_answer(a).split()
        if not pt or not at:
            return 0.0
        lcs = lcs_length(pt, at)
        if lcs == 0:
            return 0.0
        precision, recall = lcs / len(pt), lcs / len(at)
        return 2 * precision * recall / (precision + recall)

    return _best(score, prediction, answers)


def classification_accuracy(
    prediction: str, answers: Iterable[str], classes: Sequence[str]
) -> float:
    """LongBench ``classification_score``: the class names found in ``prediction`` (a name that
    is part of another found name does not count); 1 / (number found) when the right class is
    among them, else 0."""
    found = [c for c in classes if c in prediction]
    found = [c for c in found if not any(c != other and c in other for other in found)]
    return _best(lambda _, a: 1.0 / len(found) if a in found else 0.0, prediction, answers)


def edit_similarity(prediction: str, reference: str) -> float:
    """``1 - levenshtein(prediction, reference) / max(len)``: 1 for equal strings."""
    if not prediction and not reference:
        return 1.0
    previous = list(range(len(reference) + 1))
    for i, a in enumerate(prediction, start=1):
        current = [i]
        for j, b in enumerate(reference, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return 1.0 - previous[-1] / max(len(prediction), len(reference))


def code_similarity(prediction: str, answers: Iterable[str]) -> float:
    """LongBench ``code_sim_score``: edit similarity of the first line of ``prediction`` that is
    code (not a markdown fence or a comment), best over ``answers``."""
    lines = prediction.lstrip("\n").split("\n")
    code = next((line for line in lines if not line.lstrip().startswith(("```", "#", "//"))), "")
    return _best(edit_similarity, code, answers)

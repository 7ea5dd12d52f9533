"""LongBench from a local JSONL file: loading, prompts and scoring with the data set's metric.

Each line is one sample as LongBench publishes it: ``input`` (the question), ``context``,
``answers`` (list of references), ``dataset`` (its name), optionally ``all_classes`` (for
classification sets) and ``_id``. The data set is not bundled: pass the path of a downloaded file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .metrics import classification_accuracy, code_similarity, qa_f1, rouge_l

METRICS: dict[str, str] = {
    "narrativeqa": "qa_f1",
    "qasper": "qa_f1",
    "multifieldqa_en": "qa_f1",
    "hotpotqa": "qa_f1",
    "2wikimqa": "qa_f1",
    "musique": "qa_f1",
    "triviaqa": "qa_f1",
    "gov_report": "rouge_l",
    "qmsum": "rouge_l",
    "multi_news": "rouge_l",
    "samsum": "rouge_l",
    "trec": "classification",
    "lcc": "code_sim",
    "repobench-p": "code_sim",
}

# LongBench scores only the first line of the reply on these few-shot sets.
FIRST_LINE_ONLY = frozenset({"trec", "triviaqa", "samsum"})

DEFAULT_TEMPLATE = (
    "Read the text below and answer the question.\n\n{context}\n\nQuestion: {input}\nAnswer:"
)


@dataclass(frozen=True)
class LongBenchSample:
    dataset: str
    input: str
    context: str
    answers: tuple[str, ...]
    classes: tuple[str, ...] = ()
    id: str = ""

    def prompt(self, template: str = DEFAULT_TEMPLATE) -> str:
        """The prompt: ``template`` with ``{context}`` and ``{input}`` filled in."""
        return template.format(context=self.context, input=self.input)


def truncate_middle(tokenizer, prompt: str, max_tokens: int) -> str:
    """``prompt`` cut to at most about ``max_tokens`` tokens as LongBench does: the first and the
    last ``max_tokens // 2`` tokens are kept (the instructions and the question), the middle of
    the context goes."""
    tokens = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(tokens) <= max_tokens:
        return prompt
    half = max_tokens // 2
    head = tokenizer.decode(tokens[:half], skip_special_tokens=True)
    return head + tokenizer.decode(tokens[len(tokens) - half :], skip_special_tokens=True)


def _sample_from_record(record: dict, where: str) -> LongBenchSample:
    missing = [name for name in ("input", "context", "answers", "dataset") if name not in record]
    if missing:
        raise ValueError(f"{where}: LongBench record lacks fields {missing}")
    answers = record["answers"]
    if not isinstance(answers, list) or not answers:
        raise ValueError(f"{where}: 'answers' must be a non-empty list, got {answers!r}")
    dataset = record["dataset"]
    if dataset not in METRICS:
        raise ValueError(
            f"{where}: dataset {dataset!r} is not supported: allowed {sorted(METRICS)}"
        )
    classes = tuple(record.get("all_classes") or ())
    if METRICS[dataset] == "classification" and not classes:
        raise ValueError(f"{where}: classification set {dataset!r} needs 'all_classes'")
    return LongBenchSample(
        dataset=dataset,
        input=str(record["input"]),
        context=str(record["context"]),
        answers=tuple(str(a) for a in answers),
        classes=tuple(str(c) for c in classes),
        id=str(record.get("_id", "")),
    )


def load_longbench(path: str | Path) -> list[LongBenchSample]:
    """Samples of a LongBench JSONL file; ValueError naming the line of a malformed record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LongBench file not found: {path}")
    samples = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
            samples.append(_sample_from_record(record, f"{path}:{number}"))
    return samples


_SCORERS: dict[str, Callable[[str, LongBenchSample], float]] = {
    "qa_f1": lambda prediction, s: qa_f1(prediction, s.answers),
    "rouge_l": lambda prediction, s: rouge_l(prediction, s.answers),
    "classification": lambda prediction, s: classification_accuracy(
        prediction, s.answers, s.classes
    ),
    "code_sim": lambda prediction, s: code_similarity(prediction, s.answers),
}


def score_sample(prediction: str, sample: LongBenchSample) -> float:
    """The score in [0, 1] of ``prediction`` under the metric of the sample's data set."""
    if sample.dataset in FIRST_LINE_ONLY:
        prediction = prediction.lstrip("\n").split("\n")[0]
    return _SCORERS[METRICS[sample.dataset]](prediction, sample)


def score_dataset(predictions: Iterable[str], samples: Iterable[LongBenchSample]) -> dict:
    """Mean score x 100 per data set: ``{dataset: {"score": ..., "samples": n}}``."""
    totals: dict[str, list[float]] = {}
    predictions, samples = list(predictions), list(samples)
    if len(predictions) != len(samples):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples")
    for prediction, sample in zip(predictions, samples, strict=False):
        totals.setdefault(sample.dataset, []).append(score_sample(prediction, sample))
    return {
        name: {"score": 100.0 * sum(values) / len(values), "samples": len(values)}
        for name, values in sorted(totals.items())
    }

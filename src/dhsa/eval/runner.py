"""The evaluation loop shared by ``dhsa niah`` and ``dhsa ruler``.

Cells are ``(length, index, item)`` where ``item`` is a needle depth or a task name; each cell's
sample is generated once and answered by every contender, so all contenders see the same
prompts. Lengths run shortest first and sample indices in order, so a run stopped early still has
complete, comparable cells. Every answer is appended to the result file as soon as it exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tqdm import tqdm

from ..config import DHSAConfig
from ..hf import use_attention
from .generation import Contender, greedy_answer
from .metrics import string_match_all
from .options import recorded_name
from .results import ResultStore
from .ruler import Sample

logger = logging.getLogger(__name__)

SampleMaker = Callable[[int, int, object], Sample]


def cell_key(item_field: str) -> tuple[str, ...]:
    """The record fields that identify a cell of a grid over ``item_field``."""
    return ("model", "seed", "length", "index", item_field, "method", "budget")


def run_grid(
    store: ResultStore,
    model,
    tokenizer,
    *,
    model_name: str,
    item_field: str,
    items: list,
    lengths: list[int],
    samples: int,
    contenders: list[Contender],
    base_config: DHSAConfig,
    make_sample: SampleMaker,
    seed: int = 0,
    progress: bool = True,
) -> int:
    """Answer every missing cell; returns how many cells ran now.

    ``make_sample(length, index, item)`` builds the sample of a cell; ``item_field`` names the
    item in the records (``"depth"`` or ``"task"``). Cells are keyed by model, seed, length,
    index, item, method and budget (see :func:`cell_key`).
    """
    total = len(lengths) * samples * len(items) * len(contenders)
    # dhsa with another chunker or per-layer boundaries is recorded under its own name, so runs
    # of several chunkers can share a result file without taking each other's cells as done.
    names = {c: recorded_name(c.label, base_config) for c in contenders}
    ran = 0
    with tqdm(total=total, disable=not progress, desc=f"{item_field} cells", unit="cell") as bar:
        for length in sorted(lengths):
            for index in range(samples):
                for item in items:
                    base = {
                        "model": model_name,
                        "seed": seed,
                        "length": length,
                        "index": index,
                        item_field: item,
                    }
                    todo = [
                        c
                        for c in contenders
                        if not store.done({**base, "method": names[c], "budget": c.budget})
                    ]
                    bar.update(len(contenders) - len(todo))
                    if not todo:
                        continue
                    sample = make_sample(length, index, item)
                    for contender in todo:
                        answer = answer_cell(model, tokenizer, sample, contender, base_config)
                        store.add({**base, **answer, "method": names[contender]})
                        ran += 1
                        bar.update(1)
    return ran


def answer_cell(model, tokenizer, sample: Sample, contender: Contender, base: DHSAConfig) -> dict:
    """Run one contender on one sample: the record fields of the answer and its score."""
    use_attention(model, contender.method, contender.config(base))
    start = time.perf_counter()
    reply, prompt_tokens = greedy_answer(model, tokenizer, sample.prompt, sample.max_new_tokens)
    score = string_match_all(reply, sample.answers)
    logger.info("%s %s: %.2f (%r)", contender.name, sample.task, score, reply[:80])
    return {
        "method": contender.method,
        "budget": contender.budget,
        "score": score,
        "reply": reply,
        "answers": list(sample.answers),
        "prompt_tokens": prompt_tokens,
        "seconds": round(time.perf_counter() - start, 3),
    }

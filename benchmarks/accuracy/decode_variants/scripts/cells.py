"""The loop the decode-variant scripts share: answer NIAH cells of gemma3 with dhsa, one JSON line
per cell, the variant's own fields first."""

import json
import os

import torch

from dhsa.config import DHSAConfig
from dhsa.eval.generation import Contender, token_counter
from dhsa.eval.haystack import DEFAULT_HAYSTACK, essay_sentences
from dhsa.eval.niah import niah_cell_sample
from dhsa.eval.runner import answer_cell
from dhsa.models import load_model


def parse_cells(text: str) -> list[tuple[int, float]]:
    """``"2:0.1,4:0.5"`` -> ``[(2, 0.1), (4, 0.5)]`` (sample index, needle depth)."""
    return [(int(i), float(d)) for i, d in (c.split(":") for c in text.split(","))]


def answer_cells(variant: dict, length: int, budget: int, cells: str, **config) -> None:
    model, tokenizer = load_model("gemma3", device="cpu", dtype=torch.float32)
    essays = essay_sentences(os.environ.get("DHSA_HAYSTACK", DEFAULT_HAYSTACK))
    count = token_counter(tokenizer)
    for index, depth in parse_cells(cells):
        sample = niah_cell_sample(length, index, depth, count, essays)
        answer = answer_cell(
            model, tokenizer, sample, Contender("dhsa", budget), DHSAConfig(min_length=0, **config)
        )
        record = {
            **variant,
            "index": index,
            "depth": depth,
            "score": answer["score"],
            "reply": answer["reply"],
        }
        print(json.dumps(record), flush=True)

"""Greedy answers from a Hugging Face causal LM under one attention method at a time.

A :class:`Contender` names the attention a model runs: ``dense`` or a sparse method at a token
budget; :func:`dhsa.hf.use_attention` switches a loaded model to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DHSAConfig
from .haystack import TokenCounter
from .options import split_method


@dataclass(frozen=True)
class Contender:
    """An attention method and its token budget (None for ``dense``); ``scoring`` picks the
    ``dhsa`` chunk scoring (:attr:`DHSAConfig.scoring`) when it is not the default."""

    method: str
    budget: int | None
    scoring: str | None = None

    @property
    def label(self) -> str:
        """The method as the command line and the result files name it (``dhsa-paper``)."""
        return self.method if self.scoring is None else f"{self.method}-{self.scoring}"

    @property
    def name(self) -> str:
        return self.label if self.budget is None else f"{self.label}@{self.budget}"

    def config(self, base: DHSAConfig) -> DHSAConfig:
        """``base`` with this contender's budget and scoring."""
        budget = base.budget if self.budget is None else self.budget
        scoring = base.scoring if self.scoring is None else self.scoring
        return base.replace(budget=budget, scoring=scoring)


def contenders(methods: list[str], budgets: list[int]) -> list[Contender]:
    """``dense`` once (budget-free), every other method at every budget."""
    out = [Contender("dense", None)] if "dense" in methods else []
    sparse = [split_method(m) for m in methods if m != "dense"]
    out += [Contender(method, b, scoring) for method, scoring in sparse for b in budgets]
    return out


def token_counter(tokenizer) -> TokenCounter:
    """Tokens of a prompt exactly as :func:`greedy_answer` feeds it (special tokens included)."""
    return lambda text: len(tokenizer(text)["input_ids"])


def _first_line_done(tokenizer, prompt_len: int):
    """A stopping rule: the reply has some text and then a line break (answers are one line)."""
    from transformers import StoppingCriteria

    class FirstLine(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            text = tokenizer.decode(input_ids[0, prompt_len:], skip_special_tokens=True)
            return text.strip() != "" and "\n" in text.lstrip()

    return FirstLine()


def greedy_answer(
    model, tokenizer, prompt: str, max_new_tokens: int, *, first_line: bool = True
) -> tuple[str, int]:
    """``(reply, prompt_tokens)``: greedy decoding of up to ``max_new_tokens``, stopping after the
    first line of the reply when ``first_line``."""
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList(
                [_first_line_done(tokenizer, prompt_len)] if first_line else []
            ),
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    reply = tokenizer.decode(output[0, prompt_len:], skip_special_tokens=True)
    return reply, prompt_len

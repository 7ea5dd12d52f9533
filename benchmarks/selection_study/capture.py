"""Record the queries and keys (after RoPE) of a model's full-attention layers on NIAH prompts.

Usage: python benchmarks/selection_study/capture.py MODEL LENGTH OUT.pt INDEX:DEPTH [...]

Runs one dense prefill per NIAH cell (CPU, float32) and saves, per cell, the value's token
positions and, per full-attention layer, ``q [1, Hq, L, D]`` and ``k [1, Hkv, L, D]`` in bfloat16,
the layer's scale and softcap: the input of ``study.py``. The haystack is read from
``$DHSA_HAYSTACK`` or ``../shared/data/PaulGrahamEssays.json``.
"""

import os
import sys

import torch

from dhsa.eval.generation import token_counter
from dhsa.eval.haystack import DEFAULT_HAYSTACK, essay_sentences
from dhsa.eval.niah import niah_cell_sample
from dhsa.models import load_model

RECORD = "dhsa_capture"


def main(model_name: str, length: int, out: str, cells: list[str]) -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    model, tokenizer = load_model(model_name, device="cpu", dtype=torch.float32)
    essays = essay_sentences(os.environ.get("DHSA_HAYSTACK", DEFAULT_HAYSTACK))
    layers: dict[int, dict] = {}

    def record(module, query, key, value, attention_mask, **kwargs):
        window = kwargs.get("sliding_window")
        if window is None or window >= key.shape[2]:
            layers[module.layer_idx] = {
                "q": query.to(torch.bfloat16),
                "k": key.to(torch.bfloat16),
                "scale": kwargs.get("scaling") or query.shape[-1] ** -0.5,
                "softcap": kwargs.get("softcap"),
            }
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(RECORD, record)
    ALL_MASK_ATTENTION_FUNCTIONS.register(RECORD, sdpa_mask)
    model.set_attn_implementation(RECORD)
    saved = []
    for cell in cells:
        index, depth = cell.split(":")
        sample = niah_cell_sample(
            length, int(index), float(depth), token_counter(tokenizer), essays
        )
        value = sample.answers[0]
        at = sample.prompt.index(value)
        encoded = tokenizer(sample.prompt, return_offsets_mapping=True, return_tensors="pt")
        offsets = encoded["offset_mapping"][0].tolist()
        needle = [i for i, (a, b) in enumerate(offsets) if a < at + len(value) and b > at]
        layers.clear()
        with torch.no_grad():
            logits = model(input_ids=encoded["input_ids"], use_cache=False).logits[0, -1]
        first = tokenizer.decode(logits.argmax())
        print(
            f"cell {cell}: {encoded['input_ids'].shape[1]} tokens, value {value} at {needle}, "
            f"first answer token {first!r}",
            flush=True,
        )
        saved.append({"cell": cell, "value": value, "needle": needle, "layers": dict(layers)})
    torch.save({"model": model_name, "length": length, "cells": saved}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:])

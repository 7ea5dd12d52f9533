"""Trace one NIAH answer: which decode steps and layers keep the needle's value tokens.

Usage: python benchmarks/accuracy/scripts/needle_trace.py MODEL LENGTH BUDGET INDEX DEPTH
(CPU, float32, the haystack from $DHSA_HAYSTACK or ../shared/data/PaulGrahamEssays.json.)

Generates the answer of NIAH cell ``(LENGTH, INDEX, DEPTH)`` with dhsa at BUDGET and, at every
decode step of every full-attention layer, prints one JSON line: how many of the value's tokens
the selection keeps, the largest share of one query head's dense attention that falls on them,
the chunks that hold them and each chunk's rank among the chunk scores of the first KV head
(rank 0 is the best).
"""

import json
import os
import sys

import torch

import dhsa
import dhsa.hf as hf
from dhsa.eval.generation import greedy_answer, token_counter
from dhsa.eval.haystack import DEFAULT_HAYSTACK, essay_sentences
from dhsa.eval.niah import niah_cell_sample
from dhsa.models import load_model


def main(model_name: str, length: int, budget: int, index: int, depth: float) -> None:
    model, tokenizer = load_model(model_name, device="cpu", dtype=torch.float32)
    essays = essay_sentences(os.environ.get("DHSA_HAYSTACK", DEFAULT_HAYSTACK))
    sample = niah_cell_sample(length, index, depth, token_counter(tokenizer), essays)
    value = sample.answers[0]
    at = sample.prompt.index(value)
    offsets = tokenizer(sample.prompt, return_offsets_mapping=True)["offset_mapping"]
    needle = [i for i, (a, b) in enumerate(offsets) if a < at + len(value) and b > at]
    print(json.dumps({"command": " ".join(sys.argv), "value": value, "value_tokens": needle}))
    sparse_attend = hf._attend

    def traced(q, k, v, binding, layer, scale, window, softcap, *, row):
        out = sparse_attend(q, k, v, binding, layer, scale, window, softcap, row=row)
        if q.shape[2] != 1 or window is not None:
            return out
        _, config = binding.plan(layer)
        chunks = binding.session._chunks[(layer, row)]
        starts, ends = chunks.fill(q, config, use_triton=False)
        spans = list(zip(starts[0, 0].tolist(), ends[0, 0].tolist(), strict=False))
        kept = sum(any(a <= p < b for a, b in spans) for p in needle)
        group = q.shape[1] // k.shape[1]
        logits = (q[0, :, 0] @ k[0].repeat_interleave(group, 0).transpose(-1, -2)) * scale
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        mass = torch.softmax(logits.float(), -1)[..., needle].sum(-1).max()
        lo, hi = chunks.lo[0].tolist(), chunks.hi[0].tolist()
        scores = chunks.table[0, 0] @ q[0, :group, 0].float().mean(0)
        holding = sorted(
            {
                next(c for c, (a, b) in enumerate(zip(lo, hi, strict=False)) if a <= p < b)
                for p in needle
            }
        )
        print(
            json.dumps(
                {
                    "layer": layer,
                    "keys": k.shape[2],
                    "value_tokens_kept": kept,
                    "of": len(needle),
                    "max_head_mass_on_value": round(float(mass), 3),
                    "chunks": [[lo[c], min(hi[c], k.shape[2])] for c in holding],
                    "ranks": [int((scores > scores[c]).sum()) for c in holding],
                    "closed_chunks": sum(b > a for a, b in zip(lo[:-1], hi[:-1], strict=False)),
                }
            ),
            flush=True,
        )
        return out

    hf._attend = traced
    dhsa.configure(model, dhsa.DHSAConfig(budget=budget, min_length=0))
    reply, _ = greedy_answer(model, tokenizer, sample.prompt, sample.max_new_tokens)
    print(json.dumps({"reply": reply, "answer": value}))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))

"""NIAH answers of selection variants that the CLI does not name (chunk sizes, scorings).

Usage: python benchmarks/selection_study/niah_variants.py MODEL LENGTH SEED SAMPLES OUT.jsonl
       VARIANT [VARIANT ...]

A variant is ``METHOD[:field=value,...]`` over ``DHSAConfig(budget=2048, min_length=0)``, e.g.
``dhsa:scoring=paper`` or ``dhsa:min_chunk=4,max_chunk=32``; ``dense`` runs dense attention. Each
NIAH cell (sample index x depths 0.1/0.5/0.9) is answered by every variant, one JSON line each;
cells already in OUT are skipped. CPU, float32; the haystack from ``$DHSA_HAYSTACK``.
"""

import json
import os
import sys
from pathlib import Path

import torch

import dhsa
from dhsa.eval.generation import greedy_answer, token_counter
from dhsa.eval.haystack import DEFAULT_HAYSTACK, essay_sentences
from dhsa.eval.metrics import string_match_all
from dhsa.eval.niah import niah_cell_sample
from dhsa.models import load_model


def parse_variant(text: str) -> tuple[str, dict]:
    method, _, fields = text.partition(":")
    changes = {}
    for item in filter(None, fields.split(",")):
        key, value = item.split("=")
        current = getattr(dhsa.DHSAConfig, key)
        if isinstance(current, bool):
            changes[key] = value == "True"
        elif current is None:
            changes[key] = int(value)
        else:
            changes[key] = type(current)(value)
    return method, changes


def main(model_name, length, seed, samples, out, variants, device="cpu"):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model, tokenizer = load_model(model_name, device=device, dtype=dtype)
    essays = essay_sentences(os.environ.get("DHSA_HAYSTACK", DEFAULT_HAYSTACK))
    done = set()
    if Path(out).exists():
        for line in Path(out).read_text().splitlines():
            r = json.loads(line)
            done.add((r["seed"], r["index"], r["depth"], r["variant"]))
    for index in range(samples):
        for depth in (0.1, 0.5, 0.9):
            sample = niah_cell_sample(
                length, index, depth, token_counter(tokenizer), essays, seed=seed
            )
            for variant in variants:
                if (seed, index, depth, variant) in done:
                    continue
                method, changes = parse_variant(variant)
                config = dhsa.DHSAConfig(budget=2048, min_length=0).replace(**changes)
                dhsa.configure(model, config, method=method)
                reply, _ = greedy_answer(model, tokenizer, sample.prompt, sample.max_new_tokens)
                row = {
                    "model": model_name,
                    "length": length,
                    "seed": seed,
                    "index": index,
                    "depth": depth,
                    "variant": variant,
                    "score": string_match_all(reply, sample.answers),
                    "reply": reply[:60],
                }
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    a = sys.argv
    main(a[1], int(a[2]), int(a[3]), int(a[4]), a[5], a[6:], os.environ.get("DEVICE", "cpu"))

"""Where does dhsa lose NIAH needles: in the prefill selection or in the decode selection?

Answers the NIAH grid of one model, length and budget with dhsa twice: as shipped (sparse prefill,
sparse decode), and with the decode steps attending densely (sparse prefill only). A needle that
the second variant finds and the first loses was lost in decode. One JSON line per answer.

Usage: python benchmarks/accuracy/scripts/decode_ablation.py MODEL LENGTH BUDGET SAMPLES OUT.jsonl
(CPU, float32, the haystack from $DHSA_HAYSTACK or ../shared/data/PaulGrahamEssays.json; the
models fetched with `dhsa models fetch`). A rerun skips the answers OUT already holds.
"""

import json
import os
import sys
from pathlib import Path

import torch

import dhsa.hf as hf
from dhsa.config import DHSAConfig
from dhsa.eval.generation import Contender, token_counter
from dhsa.eval.haystack import DEFAULT_HAYSTACK, essay_sentences
from dhsa.eval.niah import niah_cell_sample
from dhsa.eval.results import describe_device, library_versions, now
from dhsa.eval.runner import answer_cell
from dhsa.models import load_model

DEPTHS = (0.1, 0.5, 0.9)


def main(model_name: str, length: int, budget: int, samples: int, out: Path) -> None:
    model, tokenizer = load_model(model_name, device="cpu", dtype=torch.float32)
    essays = essay_sentences(os.environ.get("DHSA_HAYSTACK", DEFAULT_HAYSTACK))
    count = token_counter(tokenizer)
    sparse_attend = hf._attend

    def dense_decode(q, k, v, binding, layer, scale, window, softcap, *, row):
        if q.shape[2] == 1:
            clipped = window if window is not None and window < k.shape[2] else None
            return hf._dense(q, k, v, scale, clipped, softcap)
        return sparse_attend(q, k, v, binding, layer, scale, window, softcap, row=row)

    variants = {"sparse decode": sparse_attend, "dense decode": dense_decode}
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            if r.get("type") == "cell":
                done.add((r["index"], r["depth"], r["variant"]))
    with out.open("a") as f:
        f.write(
            json.dumps(
                {
                    "type": "run",
                    "command": " ".join(sys.argv),
                    "date": now(),
                    "device": describe_device("cpu"),
                    "versions": library_versions(),
                }
            )
            + "\n"
        )
        for index in range(samples):
            for depth in DEPTHS:
                sample = niah_cell_sample(length, index, depth, count, essays)
                for name, attend in variants.items():
                    if (index, depth, name) in done:
                        continue
                    hf._attend = attend
                    try:
                        answer = answer_cell(
                            model,
                            tokenizer,
                            sample,
                            Contender("dhsa", budget),
                            DHSAConfig(min_length=0),
                        )
                    finally:
                        hf._attend = sparse_attend
                    record = {
                        "type": "cell",
                        "model": model_name,
                        "length": length,
                        "budget": budget,
                        "index": index,
                        "depth": depth,
                        "variant": name,
                        "score": answer["score"],
                        "reply": answer["reply"],
                        "answers": answer["answers"],
                    }
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))

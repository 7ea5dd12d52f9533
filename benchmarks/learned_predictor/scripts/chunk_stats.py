"""Per layer, on the held-out slices: label F1 (learned vs trivial rules) and the mean chunk length
of the learned and similarity chunkers (default DHSAConfig limits), from the labelled keys train.sh
stores beside the predictor. Writes chunk_stats.json beside this file:

    .venv/bin/python benchmarks/learned_predictor/scripts/chunk_stats.py
"""

import json
from pathlib import Path

import torch

from dhsa.chunking import learned_boundaries, load_predictor, similarity_boundaries
from dhsa.chunking.training import LabelledKeys, evaluate

RECORDS = Path(__file__).parents[1]  # the folder of the records, above scripts/
PREDICTOR = RECORDS / "smollm2-predictor.pt"
stored = torch.load(f"{PREDICTOR}.data.pt", weights_only=True)
layers = stored["settings"]["layers"]
held_out = max(1, len(stored["slices"]) // 5)
predictor = load_predictor(PREDICTOR)
rows = []
for i, layer in enumerate(layers):
    counts = {"learned": [], "similarity": []}
    for group in stored["slices"][-held_out:]:
        keys = group[i][0][None, None]
        counts["learned"].append(learned_boundaries(keys, predictor).shape[1] - 1)
        counts["similarity"].append(similarity_boundaries(keys).shape[1] - 1)
    length = stored["settings"]["length"]
    scores = evaluate(predictor, [LabelledKeys(*g[i]) for g in stored["slices"][-held_out:]])
    rows.append(
        {
            "layer": layer,
            **{
                k: scores[k]
                for k in (
                    "positive_rate",
                    "f1_learned",
                    "f1_all_boundary",
                    "f1_fixed_spacing",
                    "f1_similarity_shift",
                )
            },
            **{f"mean_chunk_{name}": length * len(c) / sum(c) for name, c in counts.items()},
        }
    )
document = {"length": stored["settings"]["length"], "held_out_slices": held_out, "layers": rows}
(RECORDS / "chunk_stats.json").write_text(json.dumps(document, indent=1) + "\n")

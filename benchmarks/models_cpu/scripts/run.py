"""Real models on this machine's CPU: loading, tokenizer, dense perplexity, and a needle answered
through ``dhsa generate`` with dense SDPA and with ``dhsa`` at budget 1024.

Per model (``smollm2``, ``gemma3``, fetched with ``dhsa models fetch``, found in
``$DHSA_MODELS_DIR``), stage by stage, each stage's record written to ``results.json`` beside this
script as soon as it is done (a rerun skips recorded stages unless ``--force``):

  - ``load``: seconds of :func:`dhsa.load_model` (GGUF dequantized to float32);
  - ``tokenizer``: characters per token over the whole essay collection (no special tokens), and
    whether decoding the first 2000 tokens gives the text back;
  - ``perplexity``: dense (SDPA) perplexity on the first 1024 tokens of the essays (the tokenizer's
    special tokens included, 1023 predictions);
  - ``needle``: a RULER-style single magic-number needle (``dhsa.eval.niah.niah_sample``, depth
    0.5, seed 0) fitted to the model's length (4K tokens for smollm2, 16K for gemma3), written to a
    prompt file outside the repository, then ``dhsa generate`` in a subprocess (dense, and ``dhsa``
    at budget 1024): whether each continuation contains the number, prefill time, decode tokens/s,
    peak memory. The prompt's sha256 is recorded so the same prompt can be rebuilt.

    DHSA_MODELS_DIR=models python benchmarks/models_cpu/scripts/run.py [--models smollm2 gemma3]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dhsa.eval.generation import token_counter
from dhsa.eval.haystack import DEFAULT_HAYSTACK, essay_sentences
from dhsa.eval.niah import niah_sample
from dhsa.models import load_model

NEEDLE_LENGTHS = {"smollm2": 4096, "gemma3": 16384}
PERPLEXITY_TOKENS = 1024
RECORDS = Path(__file__).parents[1]  # the folder of the records, above scripts/


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Results:
    """``results.json``: a header and ``models[key][stage]`` records, rewritten after each stage."""

    def __init__(self, path: Path, force: bool):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() and not force else {}
        self.data.setdefault("models", {})

    def has(self, model: str, stage: str) -> bool:
        return stage in self.data["models"].get(model, {})

    def put(self, model: str, stage: str, record: dict) -> None:
        stamp = {"date": now(), "run_by": self.data["last_command"]}
        self.data["models"].setdefault(model, {})[stage] = {**record, **stamp}
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")
        print(f"{model} {stage}: {json.dumps(record)[:400]}", flush=True)


def essay_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return json.load(f)["text"]


def tokenizer_record(tokenizer, text: str) -> dict:
    start = time.perf_counter()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    seconds = time.perf_counter() - start
    head = ids[:2000]
    decoded = tokenizer.decode(head)
    return {
        "characters": len(text),
        "tokens": len(ids),
        "chars_per_token": len(text) / len(ids),
        "first_2000_tokens_round_trip": text.startswith(decoded),
        "seconds": round(seconds, 2),
    }


def perplexity_record(model, tokenizer, text: str) -> dict:
    ids = tokenizer(text[: 20 * PERPLEXITY_TOKENS], return_tensors="pt")["input_ids"]
    ids = ids[:, :PERPLEXITY_TOKENS]
    model.set_attn_implementation("sdpa")
    start = time.perf_counter()
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    return {
        "tokens": ids.shape[1],
        "attention": "sdpa",
        "mean_nll": float(loss),
        "perplexity": math.exp(float(loss)),
        "seconds": round(time.perf_counter() - start, 2),
    }


def write_needle_prompt(key: str, tokenizer, length: int, folder: Path, haystack: str) -> dict:
    sample = niah_sample(length, 0.5, 0, token_counter(tokenizer), essay_sentences(haystack), 0)
    path = folder / f"{key}_niah_{length}.txt"
    path.write_text(sample.prompt, encoding="utf-8")
    return {
        "prompt_file": str(path),
        "prompt_sha256": hashlib.sha256(sample.prompt.encode("utf-8")).hexdigest(),
        "prompt_tokens": token_counter(tokenizer)(sample.prompt),
        "needle": sample.needles[0],
        "answers": list(sample.answers),
        "max_new_tokens": sample.max_new_tokens,
    }


def run_generate(key: str, prompt: dict, args, out: Path) -> dict:
    command = [
        str(Path(sys.executable).with_name("dhsa")),
        "generate",
        "--model",
        key,
        "--prompt-file",
        prompt["prompt_file"],
        "--method",
        "dhsa",
        "--budget",
        str(args.budget),
        "--max-new-tokens",
        str(prompt["max_new_tokens"]),
        "--threads",
        str(args.threads),
        "--json",
        str(out),
        "--no-progress",
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    document = json.loads(out.read_text())
    rows = []
    for row in document["results"]:
        found = all(a in row["continuation"] for a in prompt["answers"])
        rows.append({**row, "answer_found": found})
    shown = ["dhsa generate", *command[2:]]
    return {
        **{k: v for k, v in prompt.items() if k != "prompt_file"},
        "command": f"DHSA_MODELS_DIR={os.environ.get('DHSA_MODELS_DIR', '')} "
        + " ".join(shown).replace(prompt["prompt_file"], Path(prompt["prompt_file"]).name),
        "device": document["device"],
        "load_seconds": document["load_seconds"],
        "wall_seconds": round(seconds, 1),
        "results": rows,
        "stdout": result.stdout,
    }


def run_model(key: str, args, results: Results, prompts: Path) -> None:
    stages = ("load", "tokenizer", "perplexity", "needle")
    if all(results.has(key, s) for s in stages):
        return
    start = time.perf_counter()
    model, tokenizer = load_model(key, dtype=torch.float32)
    load = {
        "seconds": round(time.perf_counter() - start, 2),
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if not results.has(key, "load"):
        results.put(key, "load", load)
    text = essay_text(args.haystack)
    if not results.has(key, "tokenizer"):
        results.put(key, "tokenizer", tokenizer_record(tokenizer, text))
    if not results.has(key, "perplexity"):
        results.put(key, "perplexity", perplexity_record(model, tokenizer, text))
    if results.has(key, "needle"):
        return
    prompt = write_needle_prompt(key, tokenizer, NEEDLE_LENGTHS[key], prompts, args.haystack)
    del model
    results.put(key, "needle", run_generate(key, prompt, args, prompts / f"{key}_generate.json"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=list(NEEDLE_LENGTHS), choices=list(NEEDLE_LENGTHS)
    )
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads here and in dhsa generate (default 1: this "
        "machine is shared, see benchmarks/decode_cpu/README.md)",
    )
    parser.add_argument("--haystack", default=DEFAULT_HAYSTACK)
    parser.add_argument("--prompts", help="folder for the prompt files (default: a temp folder)")
    parser.add_argument("--force", action="store_true", help="redo stages already recorded")
    parser.add_argument("--out", default=str(RECORDS / "results.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = Results(Path(args.out), args.force)
    results.data.update(
        {
            "last_command": " ".join(["python", *sys.argv]),
            "device": f"cpu: {platform.processor() or platform.machine()}, {args.threads} threads",
            "torch": torch.__version__,
        }
    )
    prompts = Path(args.prompts or tempfile.mkdtemp(prefix="dhsa-models-cpu-"))
    prompts.mkdir(parents=True, exist_ok=True)
    for key in args.models:
        run_model(key, args, results, prompts)
    return 0


if __name__ == "__main__":
    sys.exit(main())

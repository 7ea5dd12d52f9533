"""``dhsa generate``: greedy continuation of a prompt file, dense (SDPA) against sparse methods.

Each contender (``dense`` = transformers' SDPA attention, then every ``--method`` at every
``--budget``) continues the same prompt greedily, ``--warmup`` times untimed (first-call costs:
lazy initialization, allocator growth, kernel compilation) and then ``--repeats`` times timed. Per
contender the command reports the median and range over the repeats of the prefill time (one
forward pass over the prompt, which also yields the first new token) and the decode rate (the
later tokens, one forward pass each, over their wall time), and the peak memory of the
generations: on CUDA the allocator's peak, on CPU the process's resident-set high-water mark
(``VmHWM``), reset before each contender through ``/proc/self/clear_refs``.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ..cli import CommandError

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    from ..eval.options import DTYPES

    p = subparsers.add_parser(
        "generate",
        help="greedy continuation of a prompt file: dense vs sparse, with timings and memory",
        description="Continues the text of --prompt-file greedily, once with dense SDPA "
        "attention and once per sparse method and budget, and prints each continuation with its "
        "prefill time, decode tokens/s and peak memory.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="model key (smollm2, gemma3, ...), GGUF file, local folder or Hub id",
    )
    p.add_argument("--prompt-file", required=True, help="UTF-8 text file holding the prompt")
    p.add_argument(
        "--method",
        "--methods",
        dest="methods",
        default="dhsa",
        help="comma-separated sparse methods (default %(default)s)",
    )
    p.add_argument(
        "--budget",
        "--budgets",
        dest="budgets",
        default="1024",
        help="comma-separated token budgets (1024 or 1k; default %(default)s)",
    )
    p.add_argument("--no-dense", action="store_true", help="skip the dense SDPA contender")
    p.add_argument(
        "--min-length",
        type=int,
        default=0,
        help="sparse methods run dense below this many keys (default %(default)s)",
    )
    p.add_argument(
        "--chunker",
        choices=["similarity", "fixed"],
        default="similarity",
        help="dhsa chunker (default %(default)s)",
    )
    p.add_argument(
        "--boundaries",
        choices=["shared", "per-layer"],
        default="shared",
        help="dhsa chunk boundaries computed once (first sparse layer) and shared by "
        "all layers, or per layer from each layer's own keys (default %(default)s)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        help="tokens to generate, fewer if an end-of-sequence token comes (default %(default)s)",
    )
    p.add_argument(
        "--chat",
        action="store_true",
        help="wrap the prompt in the tokenizer's chat template as a user message",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed generations per contender before the timed ones (default %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed generations per contender: median and range reported (default %(default)s)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--models-dir", help="folder of fetched models (default $DHSA_MODELS_DIR)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


@dataclass
class Generation:
    """One greedy continuation and its measurements.

    ``tokens`` are the new token ids (a final end-of-sequence token included); the first comes
    from the prefill pass, each later one from a decode pass. ``peak_memory_bytes`` is the CUDA
    allocator's peak, or on CPU the process's resident-set high-water mark, during the
    generation; ``memory_before_bytes`` what was allocated (resident) when it started.
    """

    tokens: list[int]
    prefill_ms: float
    decode_ms: float
    peak_memory_bytes: int
    memory_before_bytes: int
    memory_kind: str

    @property
    def decode_steps(self) -> int:
        return max(len(self.tokens) - 1, 0)

    @property
    def decode_tokens_per_s(self) -> float | None:
        if self.decode_steps == 0 or self.decode_ms <= 0:
            return None
        return self.decode_steps / (self.decode_ms / 1e3)


def stop_token_ids(model, tokenizer) -> set[int]:
    """End-of-sequence ids of the tokenizer and the model's generation config."""
    ids = set()
    generation = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(generation, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _cache_argument(model) -> str:
    """The name ``model.forward`` takes its KV cache under (``past_key_values`` before
    transformers renamed it ``cache``)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def greedy_timed(model, input_ids, max_new_tokens: int, stop_ids: set[int], bar=None) -> Generation:
    """Greedy decoding of ``input_ids [1, L]`` with the prefill and decode passes timed apart.

    Stops after ``max_new_tokens`` tokens or at a token of ``stop_ids``. Only the last position's
    logits are computed (``logits_to_keep=1``): a long prompt never materializes ``L x vocab``.
    """
    import torch
    from transformers import DynamicCache

    from ..bench.measure import PeakMemory, synchronize

    device = input_ids.device
    cache = {_cache_argument(model): DynamicCache(config=model.config)}
    with torch.no_grad(), PeakMemory(device) as memory:
        synchronize(device)
        start = time.perf_counter()
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **cache)
        token = out.logits[:, -1].argmax(dim=-1)
        tokens = [int(token)]
        synchronize(device)
        prefill_ms = (time.perf_counter() - start) * 1e3
        if bar is not None:
            bar.update(1)
        start = time.perf_counter()
        while len(tokens) < max_new_tokens and tokens[-1] not in stop_ids:
            out = model(input_ids=token[:, None], use_cache=True, logits_to_keep=1, **cache)
            token = out.logits[:, -1].argmax(dim=-1)
            tokens.append(int(token))
            if bar is not None:
                bar.update(1)
        synchronize(device)
        decode_ms = (time.perf_counter() - start) * 1e3
    return Generation(
        tokens, prefill_ms, decode_ms, memory.peak_bytes, memory.baseline_bytes, memory.kind
    )


def read_prompt(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"prompt file not found: {file} (--prompt-file needs a UTF-8 text file)")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CommandError(f"prompt file {file} is not UTF-8 text: {error}") from error
    if not text.strip():
        raise CommandError(f"prompt file {file} is empty")
    return text


def encode_prompt(tokenizer, text: str, chat: bool, device):
    """``input_ids [1, L]`` of ``text``, as a chat user message when ``chat``."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise CommandError(
                "--chat: this model's tokenizer has no chat template; drop --chat to continue "
                "the raw prompt"
            )
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    else:
        encoded = tokenizer(text, return_tensors="pt")
    return encoded["input_ids"].to(device)


def _row(contender, runs: list[Generation], text: str, prompt_tokens: int) -> dict:
    """The record of one contender's timed ``runs``: medians, ranges and every run's times."""
    first = runs[0]
    prefill = [g.prefill_ms for g in runs]
    decode = [g.decode_ms for g in runs]
    median = Generation(
        first.tokens,
        statistics.median(prefill),
        statistics.median(decode),
        max(g.peak_memory_bytes for g in runs),
        first.memory_before_bytes,
        first.memory_kind,
    )
    return {
        "name": contender.name,
        "method": contender.method,
        "budget": contender.budget,
        "attention": "sdpa" if contender.method == "dense" else "dhsa",
        "continuation": text,
        "prompt_tokens": prompt_tokens,
        "new_tokens": len(first.tokens),
        "repeats": len(runs),
        "same_tokens_every_run": all(g.tokens == first.tokens for g in runs),
        "prefill_ms": round(median.prefill_ms, 2),
        "prefill_ms_range": [round(min(prefill), 2), round(max(prefill), 2)],
        "prefill_ms_runs": [round(t, 2) for t in prefill],
        "decode_steps": median.decode_steps,
        "decode_ms": round(median.decode_ms, 2),
        "decode_ms_range": [round(min(decode), 2), round(max(decode), 2)],
        "decode_tokens_per_s": (
            None if median.decode_tokens_per_s is None else round(median.decode_tokens_per_s, 3)
        ),
        "peak_memory_bytes": median.peak_memory_bytes,
        "memory_before_bytes": median.memory_before_bytes,
        "memory_kind": median.memory_kind,
    }


def _table(rows: list[dict]) -> str:
    from ..eval.summary import format_table

    shown = [
        {
            **r,
            "peak_mib": r["peak_memory_bytes"] / 2**20,
            "prefill_range": "{:.1f}-{:.1f}".format(*r["prefill_ms_range"]),
            "same": "-" if r["matches_dense"] is None else ("yes" if r["matches_dense"] else "no"),
        }
        for r in rows
    ]
    return format_table(
        shown,
        [
            ("name", "contender"),
            ("prompt_tokens", "prompt"),
            ("new_tokens", "new"),
            ("prefill_ms", "prefill ms (median)"),
            ("prefill_range", "prefill ms range"),
            ("decode_tokens_per_s", "decode tok/s"),
            ("peak_mib", "peak MiB"),
            ("same", "same as dense"),
        ],
    )


def run(args) -> int:
    from tqdm import tqdm

    from ..eval.generation import contenders
    from ..eval.options import (
        base_config,
        check_context,
        model_context,
        open_model,
        parse_lengths,
        parse_names,
    )
    from ..eval.results import describe_device, now, write_json
    from ..hf import use_attention

    text = read_prompt(args.prompt_file)
    methods = [m for m in parse_names(args.methods) if m != "dense"]
    if args.no_dense and not methods:
        raise CommandError("--no-dense leaves nothing to run: name a sparse --method")
    if args.max_new_tokens < 1:
        raise CommandError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.min_length < 0:
        raise CommandError(f"--min-length must be >= 0, got {args.min_length}")
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be >= 1, got {args.threads}")
    if args.repeats < 1 or args.warmup < 0:
        raise CommandError(
            f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}"
        )
    budgets = parse_lengths(args.budgets, "budget")
    base = base_config(args)
    runs = contenders(([] if args.no_dense else ["dense"]) + methods, budgets)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = open_model(args, methods=methods, budgets=budgets)
    load_s = time.perf_counter() - start
    logger.info("loaded %s in %.1f s", args.model, load_s)
    input_ids = encode_prompt(tokenizer, text, args.chat, args.device)
    check_context(
        [input_ids.shape[1] + args.max_new_tokens],
        model_context(model),
        args.model,
        "the prompt's tokens plus --max-new-tokens",
    )
    stop_ids = stop_token_ids(model, tokenizer)
    rows = []
    passes = args.warmup + args.repeats
    with tqdm(
        total=len(runs) * passes * args.max_new_tokens,
        disable=args.no_progress,
        unit="tok",
        desc="generate",
    ) as bar:
        for contender in runs:
            use_attention(model, contender.method, contender.config(base))
            timed = []
            for index in range(passes):
                warm = index < args.warmup
                what = "warm-up" if warm else f"run {index - args.warmup + 1}/{args.repeats}"
                bar.set_postfix_str(f"{contender.name} {what} (prompt {input_ids.shape[1]} tokens)")
                generation = greedy_timed(model, input_ids, args.max_new_tokens, stop_ids, bar)
                bar.update(args.max_new_tokens - len(generation.tokens))
                if not warm:
                    timed.append(generation)
            continuation = tokenizer.decode(timed[0].tokens, skip_special_tokens=True)
            row = _row(contender, timed, continuation, input_ids.shape[1])
            if not row["same_tokens_every_run"]:
                logger.warning("%s: the repeats generated different tokens", contender.name)
            rows.append(row)
    dense = next((r for r in rows if r["method"] == "dense"), None)
    for row in rows:
        compared = dense is not None and row is not dense
        row["matches_dense"] = row["continuation"] == dense["continuation"] if compared else None
    for row in rows:
        print(f"--- {row['name']} ---\n{row['continuation']}\n")
    print(_table(rows))
    if args.json:
        document = {
            "command": args.command_line,
            "date": now(),
            "device": describe_device(args.device),
            "model": args.model,
            "dtype": args.dtype,
            "prompt_file": str(args.prompt_file),
            "chat": args.chat,
            "max_new_tokens": args.max_new_tokens,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "min_length": args.min_length,
            "chunker": args.chunker,
            "boundaries": args.boundaries,
            "load_seconds": round(load_s, 2),
            "results": rows,
        }
        print(f"wrote {write_json(args.json, document)}")
    return 0

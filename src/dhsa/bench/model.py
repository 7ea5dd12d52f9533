"""End-to-end benchmark of a whole model: time to first token, peak memory and decode speed.

A model of a known size is built from its configuration with random weights (no download): what
is measured is the cost of the computation, which does not depend on the weights' values. Each
length runs dense (``sdpa``) and dhsa on the same model and the same prompt tokens.

Decode runs on transformers' static cache by default (``cache="static"``, sized to the prompt and
the decoded tokens: the cache ``generate(..., cache_implementation="static")`` and compiled
decoding use), or its dynamic cache. With ``compile``, the decode step is ``torch.compile``d the
way transformers compiles it (the forward pass, dynamic shapes off); prefill stays eager, and
the compilation happens in the untimed warm-up.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import DHSAConfig
from ..hf import use_attention
from .measure import PeakMemory, synchronize
from .presets import MODEL_SIZES
from .runner import record_header, resolve_device


def build_model(size: str, device: torch.device, dtype: torch.dtype):
    """A Llama model of ``size`` (a key of ``MODEL_SIZES``) with random weights on ``device``."""
    import transformers

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}: allowed {sorted(MODEL_SIZES)}")
    config = transformers.LlamaConfig(**MODEL_SIZES[size])
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation="sdpa", dtype=dtype
        )
    return model.eval()


CACHES = ("static", "dynamic")


def _new_cache(model, kind: str, max_length: int):
    from transformers import DynamicCache, StaticCache

    if kind == "static":
        return StaticCache(config=model.config, max_cache_len=max_length)
    if kind == "dynamic":
        return DynamicCache(config=model.config)
    raise ValueError(f"unknown cache {kind!r}: allowed {CACHES}")


def prefill_and_decode(
    model, ids: torch.Tensor, decode_tokens: int, cache: str = "static", forward=None, kv=None
) -> dict:
    """Prefill ``ids [1, L]`` (logits of the last position only), then greedy decode with
    ``forward`` (default: the model itself) on a ``cache`` (``static`` or ``dynamic``) cache.

    ``kv``: the static cache to reset and reuse (a compiled step is specialized to its tensors);
    default a new one sized for this run."""
    device = ids.device
    forward = model if forward is None else forward
    if kv is None:
        kv = _new_cache(model, cache, ids.shape[1] + decode_tokens + 1)
    kv.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with torch.no_grad():
        with PeakMemory(device) as prefill_memory:
            start = time.perf_counter()
            out = model(ids, cache=kv, use_cache=True, logits_to_keep=1)
            synchronize(device)
            ttft = time.perf_counter() - start
        token = out.logits[:, -1:].argmax(dim=-1)
        steps = []
        with PeakMemory(device) as decode_memory:
            for _ in range(decode_tokens):
                start = time.perf_counter()
                out = forward(token, cache=kv, use_cache=True, logits_to_keep=1)
                token = out.logits[:, -1:].argmax(dim=-1)
                synchronize(device)
                steps.append(time.perf_counter() - start)
    peak = max(prefill_memory.peak_bytes, decode_memory.peak_bytes)
    step = statistics.median(steps[1:] or steps) if steps else float("nan")
    return {
        "ttft_ms": ttft * 1e3,
        "prefill_peak_mb": prefill_memory.extra_bytes / 2**20,
        "peak_mb": (peak - prefill_memory.baseline_bytes) / 2**20,
        "decode_ms_per_token": step * 1e3,
        "decode_tokens_per_s": 1.0 / step if steps else float("nan"),
    }


def run_model_bench(
    *,
    size: str,
    lengths: tuple[int, ...],
    methods: tuple[str, ...],
    config: DHSAConfig,
    device: str,
    dtype: str,
    out_path: str | Path,
    command: str,
    decode_tokens: int = 16,
    progress: bool = True,
    cache: str = "static",
    compile: bool = False,
) -> dict:
    """TTFT, peak memory and decode speed of every method at every length; JSON kept current.

    ``cache`` and ``compile`` as in the module docstring; each method compiles its own step.

    Every method first runs once untimed at each length (a 2-token generation of the same
    prompt), so kernel compilation and per-shape caches stay out of the timed run: a Triton
    kernel may compile a variant per size class, which a warm-up at another length would miss.
    """
    device_ = resolve_device(device)
    model = build_model(size, device_, getattr(torch, dtype))
    document = {
        **record_header(command, device_),
        "model": dict(size=size, **MODEL_SIZES[size], dtype=dtype),
        "config": dataclasses.asdict(config),
        "cache": cache,
        "compile": compile,
        "records": [],
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    document["warmup"] = "one untimed 2-token generation per method and length"
    bar = tqdm(total=len(lengths) * len(methods), desc="dhsa model bench", disable=not progress)
    for length in lengths:
        ids = torch.randint(0, vocab, (1, length), generator=generator).to(device_)
        dense_ms = None
        for method in methods:
            bar.set_postfix_str(f"L={length} {method}")
            use_attention(model, method, config)
            forward = None
            if compile:
                torch._dynamo.reset()
                forward = torch.compile(model, dynamic=False)
            kv = _new_cache(model, cache, length + decode_tokens + 1) if cache == "static" else None
            prefill_and_decode(model, ids, 2, cache, forward, kv)
            record = dict(method=method, length=length, cache=cache, compile=compile)
            record.update(prefill_and_decode(model, ids, decode_tokens, cache, forward, kv))
            if method == "dense":
                dense_ms = record
            elif dense_ms is not None:
                record["ttft_speedup"] = dense_ms["ttft_ms"] / record["ttft_ms"]
                record["decode_speedup"] = (
                    dense_ms["decode_ms_per_token"] / record["decode_ms_per_token"]
                )
            document["records"].append(record)
            out_path.write_text(json.dumps(document, indent=1))
            bar.update(1)
    bar.close()
    return document

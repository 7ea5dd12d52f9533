"""``dhsa bench``: kernel-level latency and peak memory of each method vs dense attention."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ..bench.presets import MODEL_SIZES, PRESETS
from ..cli import CommandError
from ..config import CHUNKERS, SCORINGS


def _ints(text: str, what: str) -> tuple[int, ...]:
    from ..eval.options import parse_lengths

    try:
        return tuple(parse_lengths(text, what))
    except ValueError as error:
        raise CommandError(str(error)) from error


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="latency and peak memory of sparse methods vs dense attention",
        description="Times each contender over a grid of lengths on random (or recorded) q/k/v, "
        "checks each output on sampled queries against a float64 recomputation, and records JSON "
        "and a PNG plot. Speedups are printed only for outputs that passed the check.",
    )
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="shape grid")
    p.add_argument("--lengths", help="comma-separated sequence lengths, e.g. 4k,8k,16k")
    p.add_argument("--budgets", help="comma-separated token budgets")
    p.add_argument("--methods", help="comma-separated contenders (dense references included)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int)
    p.add_argument("--q-heads", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--backend", default="auto", help="auto, torch, triton or reference")
    p.add_argument("--inputs", help="recorded q/k/v (.pt with keys q, k, v) instead of random")
    p.add_argument(
        "--chunker",
        choices=CHUNKERS,
        default="similarity",
        help="dhsa chunker (default %(default)s)",
    )
    p.add_argument("--predictor", help="boundary predictor file for --chunker learned")
    p.add_argument(
        "--scoring",
        choices=list(SCORINGS),
        help="how dhsa ranks chunks (DHSAConfig.scoring; default peak)",
    )
    p.add_argument(
        "--triton-fill",
        action="store_true",
        help="prefill greedy fill by its Triton kernel (DHSAConfig.triton_fill)",
    )
    p.add_argument("--out", default="bench-results/bench.json", help="JSON output path")
    p.add_argument("--plot", help="PNG plot path (default: next to --out)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--decode",
        action="store_true",
        help="time one new query per sequence (decode) instead of prefill",
    )
    mode.add_argument(
        "--model",
        choices=sorted(MODEL_SIZES),
        help="time a whole model of this size (random weights): time to first "
        "token, peak memory and decode tokens/s, dense vs the sparse --methods",
    )
    p.add_argument(
        "--batches",
        help="with --decode: comma-separated batch sizes (default: the preset's, else 1)",
    )
    p.add_argument(
        "--page-size",
        type=int,
        default=16,
        help="with --decode: also time the attention over a paged copy of the cache with pages "
        "of this many keys (0: skip; default 16)",
    )
    p.add_argument(
        "--cache",
        choices=["static", "dynamic"],
        default="static",
        help="with --model: transformers' KV cache to decode with (default static)",
    )
    p.add_argument(
        "--min-length",
        type=int,
        help="keys below which attention runs dense (DHSAConfig.min_length; default: the "
        "device's measured threshold)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="with --model: torch.compile the decode step (the static-cache recipe)",
    )
    p.add_argument(
        "--decode-tokens",
        type=int,
        default=16,
        help="with --decode / --model: tokens decoded per case (default 16)",
    )
    # The sparse contenders keep the dense threshold measured for the device (DHSAConfig's
    # default; the kernel and decode benches time below it anyway).
    p.set_defaults(run=run, min_length=None)


def _preset_from_args(args):
    preset = PRESETS[args.preset]
    changes = {}
    if args.lengths is not None:
        changes["lengths"] = _ints(args.lengths, "length")
    if args.budgets is not None:
        changes["budgets"] = _ints(args.budgets, "budget")
    if args.methods is not None:
        changes["contenders"] = _names(args.methods)
        if not changes["contenders"]:
            raise CommandError(f"--methods must name at least one contender, got {args.methods!r}")
    for field in ("device", "dtype", "batch", "q_heads", "kv_heads", "head_dim", "repeats"):
        value = getattr(args, field)
        if value is not None:
            if field not in ("device", "dtype") and value < 1:
                option = "--" + field.replace("_", "-")
                raise CommandError(f"{option} must be >= 1, got {value}")
            changes[field] = value
    preset = dataclasses.replace(preset, **changes)
    if preset.q_heads % preset.kv_heads:
        raise CommandError(
            f"--q-heads {preset.q_heads} must be a multiple of --kv-heads {preset.kv_heads}"
        )
    return preset


def print_table(document: dict) -> None:
    header = (
        f"{'length':>7} {'contender':<16} {'budget':>6} {'ms':>10} {'MB':>8} "
        f"{'density':>7} {'speedup':>7} {'ideal':>5} {'check':>5}"
    )
    print(header)
    for r in document["records"]:
        speedup = "" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        ideal = "" if r.get("fraction_of_ideal") is None else f"{r['fraction_of_ideal']:.2f}"
        print(
            f"{r['length']:>7} {r['contender']:<16} {r['budget'] or '-':>6} "
            f"{r['median_ms']:>10.1f} {r['peak_extra_mb']:>8.1f} {r['density']:>7.3f} "
            f"{speedup:>7} {ideal:>5} {'ok' if r['check_passed'] else 'FAIL':>5}"
        )


def run_decode(args, preset, config) -> int:
    from ..bench.decode import run_decode_bench

    if args.page_size < 0:
        raise CommandError(f"--page-size must be >= 0, got {args.page_size}")
    batches = preset.batches if args.batches is None else _ints(args.batches, "batch size")
    document = run_decode_bench(
        lengths=preset.lengths,
        budgets=preset.budgets,
        batches=batches,
        q_heads=preset.q_heads,
        kv_heads=preset.kv_heads,
        head_dim=preset.head_dim,
        dtype=preset.dtype,
        device=preset.device,
        out_path=args.out,
        command=args.command_line,
        backend=args.backend,
        steps=args.decode_tokens,
        repeats=preset.repeats,
        config=config,
        progress=not args.no_progress,
        page_size=args.page_size,
    )
    print(
        f"{'length':>7} {'batch':>5} {'contender':<10} {'budget':>6} {'ms/token':>9} "
        f"{'attend ms':>9} {'paged ms':>9} {'speedup':>7} {'check':>5}"
    )
    for r in document["records"]:
        speedup = "" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        attend_ms = f"{r['attend_ms']:.3f}" if "attend_ms" in r else ""
        paged_ms = f"{r['paged_attend_ms']:.3f}" if "paged_attend_ms" in r else ""
        check = "ok" if r.get("check_passed", True) and r.get("paged_matches", True) else "FAIL"
        print(
            f"{r['length']:>7} {r['batch']:>5} {r['contender']:<10} {r['budget'] or '-':>6} "
            f"{r['step_ms']:>9.3f} {attend_ms:>9} {paged_ms:>9} {speedup:>7} {check:>5}"
        )
    print(f"results: {args.out}")
    passed = [
        r.get("check_passed", True) and r.get("paged_matches", True) for r in document["records"]
    ]
    return 0 if all(passed) else 1


def run_model(args, preset, config) -> int:
    from ..bench.model import run_model_bench

    methods = ("dense",) + tuple(m for m in preset.contenders if not m.startswith("dense"))
    document = run_model_bench(
        size=args.model,
        lengths=preset.lengths,
        methods=methods,
        config=config.replace(budget=preset.budgets[0]),
        device=preset.device,
        dtype=preset.dtype,
        out_path=args.out,
        command=args.command_line,
        decode_tokens=args.decode_tokens,
        progress=not args.no_progress,
        cache=args.cache,
        compile=args.compile,
    )
    print(
        f"{'length':>7} {'method':<14} {'TTFT ms':>9} {'peak MB':>9} {'decode tok/s':>12} "
        f"{'TTFT speedup':>12}"
    )
    for r in document["records"]:
        speedup = f"{r['ttft_speedup']:.2f}x" if "ttft_speedup" in r else ""
        print(
            f"{r['length']:>7} {r['method']:<14} {r['ttft_ms']:>9.1f} {r['peak_mb']:>9.0f} "
            f"{r['decode_tokens_per_s']:>12.1f} {speedup:>12}"
        )
    print(f"results: {args.out}")
    return 0


def run(args) -> int:
    from ..eval.options import base_config

    preset = _preset_from_args(args)
    config = base_config(args)
    if args.scoring:
        config = config.replace(scoring=args.scoring)
    for budget in preset.budgets:
        config.replace(budget=budget)  # a budget below the fixed part is refused before any run
    if args.decode:
        return run_decode(args, preset, config)
    if args.model:
        return run_model(args, preset, config)
    from ..bench import run_bench

    document = run_bench(
        preset,
        out_path=args.out,
        command=args.command_line,
        backend=args.backend,
        inputs_path=args.inputs,
        config=config,
        progress=not args.no_progress,
    )
    print_table(document)
    plot_path = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
    try:
        from ..plots import plot_lines
    except ImportError:
        return 0
    records = [
        dict(r, series=r["contender"] if r["budget"] is None else f"{r['contender']}@{r['budget']}")
        for r in document["records"]
    ]
    try:
        plot_lines(
            records,
            x="length",
            panels=[("median_ms", "latency (ms)"), ("peak_extra_mb", "peak extra memory (MB)")],
            group="series",
            path=plot_path,
            title=f"dhsa bench on {document['device']}",
            log_y=True,
        )
    except ImportError as error:
        print(f"plot skipped: {error}", file=sys.stderr)
        return 0
    print(f"results: {args.out}\nplot: {plot_path}")
    failed = [r for r in document["records"] if not r["check_passed"]]
    return 1 if failed else 0

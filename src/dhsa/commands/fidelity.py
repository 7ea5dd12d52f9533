"""``dhsa fidelity``: per-layer attention recall, output error and density on real activations."""

from __future__ import annotations

from pathlib import Path

KEY = ("model", "seed", "length", "budget", "index", "layer", "method")


def add_parser(subparsers) -> None:
    from ..eval.options import add_model_options

    p = subparsers.add_parser(
        "fidelity",
        help="how much dense attention mass each method's selection keeps, per layer",
        description="Runs one prefill per prompt with a recording attention function and, in "
        "every layer, measures for each method the fraction of the dense softmax mass its "
        "selection keeps (attention recall), the relative output error against dense attention "
        "and the density. Writes a resumable JSONL file, a summary JSON and a per-layer PNG. "
        "dhsa with another chunker or per-layer boundaries is recorded as e.g. dhsa:learned, so "
        "runs with different --chunker can share one --out file.",
    )
    add_model_options(p, "benchmarks/accuracy/fidelity.jsonl", decode=False)
    p.add_argument(
        "--length",
        "--lengths",
        dest="lengths",
        default="4k",
        help="comma-separated prompt lengths in tokens (default %(default)s)",
    )
    p.add_argument(
        "--methods",
        default="dhsa,block_sparse,streaming",
        help="comma-separated methods (default %(default)s)",
    )
    p.add_argument(
        "--budget",
        "--budgets",
        dest="budgets",
        default="1024,2048",
        help="comma-separated token budgets (default %(default)s)",
    )
    p.add_argument(
        "--samples", type=int, default=2, help="prompts per length (default %(default)s)"
    )
    p.add_argument(
        "--max-query-blocks",
        type=int,
        default=32,
        help="query blocks evaluated per layer, evenly spaced (default %(default)s)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from tqdm import tqdm

    from ..eval.fidelity import FidelityProbe, fidelity_summary, run_fidelity
    from ..eval.generation import token_counter
    from ..eval.haystack import essay_sentences
    from ..eval.niah import niah_sample
    from ..eval.options import (
        base_config,
        model_label,
        open_model,
        parse_lengths,
        parse_names,
        recorded_name,
    )
    from ..eval.results import ResultStore, describe_device, write_json
    from ..eval.summary import format_table

    lengths, budgets = parse_lengths(args.lengths), parse_lengths(args.budgets)
    methods = parse_names(args.methods)
    if args.samples < 1 or args.max_query_blocks < 1:
        raise ValueError("--samples and --max-query-blocks must be >= 1")
    essays = essay_sentences(args.haystack)
    out = Path(args.out)
    store = ResultStore(out, KEY)
    config = base_config(args)
    model, tokenizer = open_model(args, methods=methods, budgets=budgets, lengths=lengths)
    count = token_counter(tokenizer)
    name = model_label(args.model)
    store.start_run(
        kind="fidelity",
        command=args.command_line,
        device=describe_device(args.device),
        model=args.model,
        dtype=args.dtype,
        lengths=lengths,
        methods=methods,
        budgets=budgets,
        samples=args.samples,
        seed=args.seed,
        chunker=args.chunker,
        predictor=args.predictor,
        boundaries=args.boundaries,
        max_query_blocks=args.max_query_blocks,
    )
    label = {m: recorded_name(m, config) for m in methods}
    passes = [(n, b, i) for n in sorted(lengths) for b in budgets for i in range(args.samples)]
    for length, budget, index in tqdm(passes, disable=args.no_progress, desc="prefills"):
        base = {
            "model": name,
            "seed": args.seed,
            "length": length,
            "budget": budget,
            "index": index,
        }
        if store.done({**base, "layer": 0, "method": label[methods[0]]}):
            continue
        sample = niah_sample(length, 0.5, index, count, essays, args.seed)
        ids = tokenizer(sample.prompt, return_tensors="pt")["input_ids"].to(args.device)
        probe = FidelityProbe(config.replace(budget=budget), methods, args.max_query_blocks)
        for record in run_fidelity(model, ids, probe):
            record["method"] = label[record["method"]]
            store.add({**base, **record, "prompt_tokens": ids.shape[1]})
    document = fidelity_summary(store)
    paths = [write_json(out.with_suffix(".json"), document)]
    print(
        format_table(
            document["overall"],
            [
                ("model", "model"),
                ("length", "length"),
                ("budget", "budget"),
                ("method", "method"),
                ("recall", "recall"),
                ("output_error", "rel. error"),
                ("density", "density"),
                ("top32", "top-32 key recall"),
                ("worst_layer", "worst layer"),
                ("worst_recall", "worst recall"),
            ],
        )
    )
    paths += _plot(document, out)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


def _plot(document: dict, out: Path) -> list[Path]:
    try:
        from ..plots import plot_lines
    except ImportError:
        return []
    paths = []
    for length in sorted({r["length"] for r in document["layers"]}):
        rows = [
            dict(r, series=f"{r['method']}@{r['budget']}")
            for r in document["layers"]
            if r["length"] == length
        ]
        paths.append(
            plot_lines(
                rows,
                x="layer",
                group="series",
                log_x=False,
                panels=[("recall", "attention recall"), ("output_error", "relative output error")],
                path=out.with_name(f"{out.stem}-{length}.png"),
                title=f"attention fidelity per layer, {rows[0]['model']}, {length} tokens",
            )
        )
    return paths

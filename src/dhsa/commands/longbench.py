"""``dhsa longbench``: LongBench samples from a local JSONL file, per method and budget."""

from __future__ import annotations

from pathlib import Path

from ..cli import CommandError


def add_parser(subparsers) -> None:
    from ..eval.options import add_contender_options, add_model_options

    p = subparsers.add_parser(
        "longbench",
        help="LongBench scores of each attention method on a local JSONL file",
        description="Answers each LongBench sample of --data (one JSON record per line, as "
        "LongBench publishes them) with greedy decoding, once per method and budget, and scores "
        "the reply with its data set's metric (QA F1, ROUGE-L, classification, code "
        "similarity). Prompts longer than --max-length tokens lose the middle of their context, "
        "as LongBench does. Writes a resumable JSONL result file and a summary JSON with the "
        "mean score x 100 per data set.",
    )
    add_model_options(p, "benchmarks/accuracy/longbench.jsonl", synthetic=False)
    p.add_argument("--data", required=True, help="LongBench JSONL file")
    add_contender_options(p, methods="dense,dhsa")
    p.add_argument("--limit", type=int, help="answer only the first N samples of --data")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="longest reply in tokens (default %(default)s)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        help="prompt tokens kept, the middle of longer prompts cut out (default: the model's "
        "context minus --max-new-tokens)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from ..eval.generation import contenders, greedy_answer
    from ..eval.longbench import load_longbench, score_sample, truncate_middle
    from ..eval.options import (
        base_config,
        model_context,
        model_label,
        open_model,
        parse_lengths,
        parse_names,
        recorded_name,
    )
    from ..eval.results import ResultStore, describe_device, write_json
    from ..eval.summary import SCORE_COLUMNS, format_table, longbench_summary
    from ..hf import use_attention

    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be >= 1, got {args.limit}")
    if args.max_new_tokens < 1:
        raise CommandError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.max_length is not None and args.max_length < 2:
        raise CommandError(f"--max-length must be >= 2, got {args.max_length}")
    samples = load_longbench(args.data)[: args.limit]
    if not samples:
        raise CommandError(f"{args.data} holds no LongBench samples")
    methods = parse_names(args.methods)
    budgets = parse_lengths(args.budgets, "budget")
    config = base_config(args)
    model, tokenizer = open_model(args, methods=methods, budgets=budgets)
    max_length = args.max_length
    if max_length is None:
        context = model_context(model)
        if context is None:
            raise CommandError("the model declares no context length: pass --max-length")
        max_length = context - args.max_new_tokens
    out = Path(args.out)
    store = ResultStore(out, ("model", "data", "index", "method", "budget"))
    store.start_run(
        kind="longbench",
        command=args.command_line,
        device=describe_device(args.device),
        model=args.model,
        dtype=args.dtype,
        data=str(args.data),
        samples=len(samples),
        methods=methods,
        budgets=budgets,
        max_new_tokens=args.max_new_tokens,
        max_length=max_length,
        chunker=args.chunker,
    )
    base = {"model": model_label(args.model), "data": Path(args.data).name}
    for contender in contenders(methods, budgets):
        name = recorded_name(contender.label, config)
        use_attention(model, contender.method, contender.config(config))
        for index, sample in enumerate(samples):
            cell = {**base, "index": index, "method": name, "budget": contender.budget}
            if store.done(cell):
                continue
            prompt = truncate_middle(tokenizer, sample.prompt(), max_length)
            reply, prompt_tokens = greedy_answer(
                model, tokenizer, prompt, args.max_new_tokens, first_line=False
            )
            store.add(
                {
                    **cell,
                    "dataset": sample.dataset,
                    "id": sample.id,
                    "score": score_sample(reply, sample),
                    "reply": reply,
                    "prompt_tokens": prompt_tokens,
                }
            )
    document = longbench_summary(store)
    path = write_json(out.with_suffix(".json"), document)
    columns = [c for c in SCORE_COLUMNS if c[0] != "length"]
    print(format_table(document["datasets"], columns[:3] + [("dataset", "data set")] + columns[3:]))
    print()
    print(format_table(document["overall"], columns))
    print(f"wrote {path}")
    return 0

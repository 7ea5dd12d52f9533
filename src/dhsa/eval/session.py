"""One evaluation run from command-line arguments: result file, model, contenders, grid, summary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .generation import contenders, token_counter
from .haystack import essay_sentences
from .options import base_config, model_label, open_model, parse_lengths, parse_names
from .results import ResultStore, describe_device
from .ruler import Sample
from .runner import cell_key, run_grid

logger = logging.getLogger(__name__)


def run_session(
    args,
    *,
    kind: str,
    item_field: str,
    items: list,
    sample_for: Callable[..., Sample],
) -> ResultStore:
    """Answer the grid ``lengths x samples x items x contenders`` given by ``args``.

    ``sample_for(length, index, item, count_tokens, essays, seed)`` builds a cell's sample. The
    invocation (command, device, settings) is recorded in the result file before any cell runs.
    """
    lengths = parse_lengths(args.lengths)
    methods = parse_names(args.methods)
    budgets = parse_lengths(args.budgets, "budget")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    essays = essay_sentences(args.haystack)
    out = Path(args.out)
    store = ResultStore(out, cell_key(item_field))
    config = base_config(args)
    model, tokenizer = open_model(args, methods=methods, budgets=budgets, lengths=lengths)
    count_tokens = token_counter(tokenizer)
    store.start_run(
        kind=kind,
        command=args.command_line,
        device=describe_device(args.device),
        model=args.model,
        dtype=args.dtype,
        lengths=lengths,
        methods=methods,
        budgets=budgets,
        samples=args.samples,
        items=items,
        seed=args.seed,
        chunker=args.chunker,
    )
    ran = run_grid(
        store,
        model,
        tokenizer,
        model_name=model_label(args.model),
        item_field=item_field,
        items=items,
        lengths=lengths,
        samples=args.samples,
        contenders=contenders(methods, budgets),
        base_config=config,
        make_sample=lambda length, index, item: sample_for(
            length, index, item, count_tokens, essays, args.seed
        ),
        seed=args.seed,
        progress=not args.no_progress,
    )
    logger.info("%d cells answered now, %d recorded in %s", ran, len(store.cells), out)
    return store

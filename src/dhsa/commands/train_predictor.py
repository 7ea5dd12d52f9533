"""``dhsa train-predictor``: train the learned chunker's boundary predictor on a real model."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from ..cli import CommandError

logger = logging.getLogger(__name__)

TEXT_ENV = "DHSA_TEXT"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-predictor",
        help="train the boundary predictor of chunker='learned' on a model's keys",
        description="Runs the model densely over slices of a text, labels each cut where later "
        "queries put >= RATIO times more attention on one side's WINDOW keys than on the other's, "
        "and trains the predictor (focal BCE, Adam); its logit 0 is then moved to the threshold "
        "with the best label F1 on the training slices. Checkpoints go to OUT.ckpt and the "
        "labelled keys to OUT.data.pt; running the same command again resumes. Prints the loss "
        "curve and held-out label F1 against trivial rules (all cuts, fixed spacing, similarity "
        "shift). Use the result with DHSAConfig(chunker='learned', predictor=OUT).",
    )
    p.add_argument("--model", required=True, help="model key (e.g. smollm2), GGUF file or folder")
    p.add_argument("--out", required=True, help="predictor file to write")
    p.add_argument(
        "--text",
        default=os.environ.get(TEXT_ENV),
        help=f"text file (plain, or JSON with a 'text' field); default ${TEXT_ENV}",
    )
    p.add_argument("--length", type=int, default=2048, help="tokens per text slice")
    p.add_argument("--slices", type=int, default=10, help="text slices (the last 20%% held out)")
    # Layer 0 included: with shared boundaries the chunker runs on the first layer's keys.
    p.add_argument("--layers", default="0,2,8,14,20,26", help="comma-separated layer indices")
    p.add_argument("--window", type=int, default=4, help="keys on each side of a cut")
    p.add_argument("--ratio", type=float, default=2.0, help="attention-mass ratio of a boundary")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(run=run)


def _read_text(path: str | None) -> str:
    if not path:
        raise CommandError(f"no text to train on: pass --text FILE or set ${TEXT_ENV}")
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"--text {path!r} is not a file")
    raw = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise CommandError(f"{path}: expected a JSON object with a 'text' string")
        return data["text"]
    return raw


def _layers(text: str) -> list[int]:
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as error:
        raise CommandError(f"--layers expects comma-separated integers, got {text!r}") from error
    if not layers or min(layers) < 0:
        raise CommandError(f"--layers expects non-negative integers, got {text!r}")
    return layers


def _collect(args, layers: list[int], text: str):
    """Labelled keys of every (slice, layer), from a dense run of the model."""
    from tqdm.auto import tqdm

    from ..chunking.labels import capture_keys_and_labels
    from ..chunking.training import LabelledKeys
    from ..eval.options import check_context
    from ..models import context_length, load_model

    check_context([args.length], context_length(args.model), args.model, "--length")
    model, tokenizer = load_model(
        args.model, attn_implementation="sdpa", progress=not args.no_progress
    )
    chars = args.slices * args.length * 8
    ids = tokenizer(text[:chars], return_tensors="pt").input_ids[0]
    if ids.numel() < args.slices * args.length:
        raise CommandError(
            f"the text gives {ids.numel()} tokens; --slices {args.slices} x --length "
            f"{args.length} need more"
        )
    slices = []
    for s in tqdm(range(args.slices), desc="label", disable=args.no_progress):
        chunk = ids[s * args.length : (s + 1) * args.length][None]
        captured = capture_keys_and_labels(
            model, chunk, layers, window=args.window, ratio=args.ratio
        )
        slices.append([LabelledKeys(*captured[layer]) for layer in layers])
    return slices


def _data_settings(args, layers: list[int]) -> dict:
    """What the labelled keys depend on: a stored data file is reused only when these match."""
    return {
        "model": args.model,
        "text": str(Path(args.text).resolve()) if args.text else None,
        "length": args.length,
        "slices": args.slices,
        "layers": layers,
        "window": args.window,
        "ratio": args.ratio,
    }


def _labelled_slices(args, layers: list[int], data_file: Path, checkpoint: Path):
    """Labelled keys per slice: from ``data_file`` when it was made with the same settings,
    otherwise by a dense run of the model (dropping a checkpoint trained on other data)."""
    import torch

    from ..chunking.training import LabelledKeys

    settings = _data_settings(args, layers)
    if data_file.is_file():
        stored = torch.load(data_file, weights_only=True)
        if isinstance(stored, dict) and stored.get("settings") == settings:
            logger.info("reusing labelled keys from %s", data_file)
            return [[LabelledKeys(*item) for item in group] for group in stored["slices"]]
        print(
            f"{data_file} was made with other settings: labelling again and training afresh",
            file=sys.stderr,
        )
        checkpoint.unlink(missing_ok=True)
    slices = _collect(args, layers, _read_text(args.text))
    stored = [[(e.keys, e.labels, e.valid) for e in group] for group in slices]
    torch.save({"settings": settings, "slices": stored}, data_file)
    return slices


def run(args) -> int:
    from ..chunking.learned import save_predictor
    from ..chunking.training import (
        calibrate_threshold,
        checkpoint_history,
        evaluate,
        train_predictor,
    )

    if args.length < 4 * args.window or args.slices < 2 or args.steps < 1:
        raise CommandError("need --length >= 4 * --window, --slices >= 2 and --steps >= 1")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data_file, checkpoint = Path(f"{out}.data.pt"), Path(f"{out}.ckpt")
    if args.restart:
        checkpoint.unlink(missing_ok=True)
    layers = _layers(args.layers)
    started = time.perf_counter()
    slices = _labelled_slices(args, layers, data_file, checkpoint)
    labelled = time.perf_counter()
    held_out = max(1, len(slices) // 5)
    train = [e for group in slices[:-held_out] for e in group]
    test = [e for group in slices[-held_out:] for e in group]
    predictor = train_predictor(
        train,
        window=args.window,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        checkpoint=checkpoint,
        progress=not args.no_progress,
    )
    shift = calibrate_threshold(predictor, train)
    trained = time.perf_counter()
    scores = evaluate(predictor, test)
    history = checkpoint_history(checkpoint)
    meta = {
        "model": args.model,
        "layers": layers,
        "length": args.length,
        "slices": len(slices),
        "held_out_slices": held_out,
        "window": args.window,
        "ratio": args.ratio,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "threshold_shift": shift,
        "loss_history": history,
        # This invocation only: a resumed run times what it did now.
        "seconds": {"label": labelled - started, "train": trained - labelled},
        "held_out": scores,
    }
    save_predictor(predictor, out, meta)
    print(json.dumps(meta, indent=2))
    return 0

"""``dhsa train-predictor``: train the learned chunker's boundary predictor on a real model."""

from __future__ import annotations

import json
import logging
import os
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
        "and trains the predictor (focal BCE, Adam). Checkpoints go to OUT.ckpt and the labelled "
        "keys to OUT.data.pt; running the same command again resumes. Prints held-out label F1 "
        "against trivial rules. Use the result with DHSAConfig(chunker='learned', predictor=OUT).",
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
    p.add_argument("--layers", default="2,8,14,20,26", help="comma-separated layer indices")
    p.add_argument("--window", type=int, default=4, help="keys on each side of a cut")
    p.add_argument("--ratio", type=float, default=2.0, help="attention-mass ratio of a boundary")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
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
    from ..models import load_model

    model, tokenizer = load_model(args.model, attn_implementation="sdpa")
    chars = args.slices * args.length * 8
    ids = tokenizer(text[:chars], return_tensors="pt").input_ids[0]
    if ids.numel() < args.slices * args.length:
        raise CommandError(
            f"the text gives {ids.numel()} tokens; --slices {args.slices} x --length "
            f"{args.length} need more"
        )
    slices = []
    for s in tqdm(range(args.slices), desc="label"):
        chunk = ids[s * args.length : (s + 1) * args.length][None]
        captured = capture_keys_and_labels(
            model, chunk, layers, window=args.window, ratio=args.ratio
        )
        slices.append([LabelledKeys(*captured[layer]) for layer in layers])
    return slices


def run(args) -> int:
    import torch

    from ..chunking.learned import save_predictor
    from ..chunking.training import LabelledKeys, evaluate, train_predictor

    if args.length < 4 * args.window or args.slices < 2 or args.steps < 1:
        raise CommandError("need --length >= 4 * --window, --slices >= 2 and --steps >= 1")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data_file, checkpoint = Path(f"{out}.data.pt"), Path(f"{out}.ckpt")
    if args.restart:
        checkpoint.unlink(missing_ok=True)
    layers = _layers(args.layers)
    if data_file.is_file():
        logger.info("reusing labelled keys from %s", data_file)
        stored = torch.load(data_file, weights_only=True)
        slices = [[LabelledKeys(*item) for item in group] for group in stored]
    else:
        slices = _collect(args, layers, _read_text(args.text))
        stored = [[(e.keys, e.labels, e.valid) for e in group] for group in slices]
        torch.save(stored, data_file)
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
    )
    scores = evaluate(predictor, test)
    meta = {
        "model": args.model,
        "layers": layers,
        "length": args.length,
        "slices": len(slices),
        "held_out_slices": held_out,
        "ratio": args.ratio,
        "steps": args.steps,
        "held_out": scores,
    }
    save_predictor(predictor, out, meta)
    print(json.dumps(meta, indent=2))
    return 0

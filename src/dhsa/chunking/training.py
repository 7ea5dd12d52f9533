"""Training of the boundary predictor: labelled keys from a real model, focal BCE, Adam.

Examples are ``(keys [L, D], labels [L - 1], valid [L - 1])`` per (text slice, layer), made by
:func:`dhsa.chunking.labels.capture_keys_and_labels`. Training samples random labelled cuts, takes
the ``2w`` keys around each, and minimizes the focal binary cross-entropy (``gamma = 2``) with
Adam. A checkpoint (model, optimizer, step, generator, loss history) is written every
``checkpoint_every`` steps and picked up again when training restarts with the same checkpoint path.

Focal BCE on rare positives leaves the logits biased low, so the trained predictor's logit 0 is not
its best decision point: :func:`calibrate_threshold` moves the output bias so that logit 0 is the
threshold with the best label F1 on the training cuts (the chunker's default threshold is 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .learned import BoundaryPredictor
from .similarity import shift_scores

logger = logging.getLogger(__name__)


@dataclass
class LabelledKeys:
    """Keys of one layer on one text slice, ``[L, D]``, with cut labels and validity ``[L - 1]``."""

    keys: Tensor
    labels: Tensor
    valid: Tensor


def focal_bce(logits: Tensor, targets: Tensor, gamma: float = 2.0) -> Tensor:
    """Mean focal binary cross-entropy: ``-(1 - p_t) ** gamma * log(p_t)``."""
    targets = targets.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = torch.exp(-bce)
    return ((1 - p_true) ** gamma * bce).mean()


def f1_score(predicted: Tensor, target: Tensor) -> float:
    """F1 of bool predictions against bool targets (0 when neither has a positive)."""
    tp = (predicted & target).sum().item()
    fp = (predicted & ~target).sum().item()
    fn = (~predicted & target).sum().item()
    return 2 * tp / max(2 * tp + fp + fn, 1)


def _sample_batch(examples: list[LabelledKeys], cuts: Tensor, window: int, size: int, generator):
    """Windows ``[size, 2w, D]`` and labels ``[size]`` of random valid cuts."""
    pick = cuts[torch.randint(0, cuts.shape[0], (size,), generator=generator)]
    offsets = torch.arange(-window + 1, window + 1)
    windows = torch.stack([examples[e].keys[t + offsets] for e, t in pick.tolist()])
    labels = torch.stack([examples[e].labels[t] for e, t in pick.tolist()])
    return windows, labels


def _valid_cuts(examples: list[LabelledKeys]) -> Tensor:
    """All ``(example, cut)`` pairs with a label, int64 ``[N, 2]``."""
    pairs = [
        torch.stack([torch.full_like(idx, e), idx], dim=1)
        for e, ex in enumerate(examples)
        for idx in [torch.nonzero(ex.valid).flatten()]
    ]
    return torch.cat(pairs)


def train_predictor(
    examples: list[LabelledKeys],
    *,
    window: int = 4,
    steps: int = 2000,
    batch: int = 256,
    lr: float = 1e-4,
    gamma: float = 2.0,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 200,
    progress: bool = True,
) -> BoundaryPredictor:
    """Train a :class:`BoundaryPredictor` on ``examples``; resumes from ``checkpoint`` if present
    (ValueError when it was made for another predictor shape)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    predictor = BoundaryPredictor(examples[0].keys.shape[-1], window=window)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start, history = 0, []
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("config") != predictor.constructor_args():
            raise ValueError(
                f"checkpoint {checkpoint} was made for a predictor {state.get('config')}, not "
                f"{predictor.constructor_args()}: delete it (or pass --restart) to train afresh"
            )
        predictor.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, history = int(state["step"]), list(state.get("history", []))
        logger.info("resuming boundary predictor training at step %d from %s", start, checkpoint)
    cuts = _valid_cuts(examples)
    predictor.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc="train")
    interval_loss, interval_steps = 0.0, 0
    for step in bar:
        windows, labels = _sample_batch(examples, cuts, window, batch, generator)
        present = torch.ones(windows.shape[:2], dtype=torch.bool)
        loss = focal_bce(predictor.forward_windows(windows, present), labels, gamma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        interval_loss, interval_steps = interval_loss + loss.item(), interval_steps + 1
        done = step + 1
        if done % checkpoint_every == 0 or done == steps:
            history.append({"step": done, "loss": interval_loss / interval_steps})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            logger.info("step %d: mean focal loss %.5f", done, history[-1]["loss"])
            interval_loss, interval_steps = 0.0, 0
            if checkpoint is not None:
                torch.save(
                    {
                        "config": predictor.constructor_args(),
                        "model": predictor.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(),
                        "step": done,
                        "history": history,
                    },
                    checkpoint,
                )
    return predictor.eval()


def checkpoint_history(checkpoint: str | Path) -> list[dict]:
    """The mean training loss per checkpoint interval, ``[{"step", "loss"}]``, stored in a
    checkpoint written by :func:`train_predictor` (empty when there is none)."""
    if not Path(checkpoint).is_file():
        return []
    return list(torch.load(checkpoint, map_location="cpu", weights_only=True).get("history", []))


def _logits_and_targets(predictor: BoundaryPredictor, examples: list[LabelledKeys]):
    """Logits and labels of every labelled cut of ``examples``, concatenated."""
    logits, targets = [], []
    with torch.no_grad():
        for ex in examples:
            logits.append(predictor(ex.keys[None].float())[0][ex.valid])
            targets.append(ex.labels[ex.valid])
    return torch.cat(logits), torch.cat(targets)


def best_f1_threshold(logits: Tensor, targets: Tensor) -> float:
    """The logit threshold (``logit > threshold`` is a boundary) with the highest F1."""
    order = torch.argsort(logits, descending=True)
    ranked = logits[order].double()
    true_positives = targets[order].double().cumsum(0)
    predicted = torch.arange(1, ranked.numel() + 1, dtype=torch.float64)
    # F1 = 2 TP / (predicted positives + actual positives); only cut between distinct logits.
    f1 = 2 * true_positives / (predicted + targets.sum().double())
    distinct = torch.ones_like(f1, dtype=torch.bool)
    distinct[:-1] = ranked[1:] < ranked[:-1]
    best = int(torch.argmax(torch.where(distinct, f1, torch.full_like(f1, -1.0))))
    if best == ranked.numel() - 1:
        return float(ranked[-1]) - 1.0
    return float((ranked[best] + ranked[best + 1]) / 2)


def calibrate_threshold(predictor: BoundaryPredictor, examples: list[LabelledKeys]) -> float:
    """Shift ``predictor``'s output bias so that logit 0 is the threshold with the best label F1
    on ``examples``; returns the shift (the old logit that now reads 0)."""
    threshold = best_f1_threshold(*_logits_and_targets(predictor, examples))
    with torch.no_grad():
        predictor.mlp[-1].bias -= threshold
    logger.info("boundary predictor threshold calibrated: old logit %.4f is now 0", threshold)
    return threshold


def evaluate(
    predictor: BoundaryPredictor, examples: list[LabelledKeys], threshold: float = 0.0
) -> dict:
    """Label F1 on ``examples`` of the predictor (logit > ``threshold``) and of trivial rules:
    every cut a boundary, a boundary every ``s`` tokens (best ``s``), and the similarity
    chunker's shift score above its mean + 1 std. Per-cut decisions, before NMS."""
    predicted, shifted, target, spacing = [], [], [], {s: [] for s in (2, 3, 4, 8, 16)}
    with torch.no_grad():
        for ex in examples:
            logits = predictor(ex.keys[None].float())[0]
            shift = shift_scores(ex.keys[None, None], predictor.window)[0]
            cut = torch.arange(ex.valid.numel())
            predicted.append((logits > threshold)[ex.valid])
            shifted.append((shift > shift.mean() + shift.std())[ex.valid])
            target.append(ex.labels[ex.valid])
            for s in spacing:
                spacing[s].append(((cut + 1) % s == 0)[ex.valid])
    target_all = torch.cat(target)
    fixed = {s: f1_score(torch.cat(v), target_all) for s, v in spacing.items()}
    best = max(fixed, key=fixed.get)
    return {
        "cuts": int(target_all.numel()),
        "positive_rate": target_all.float().mean().item(),
        "f1_learned": f1_score(torch.cat(predicted), target_all),
        "f1_all_boundary": f1_score(torch.ones_like(target_all), target_all),
        "f1_fixed_spacing": fixed[best],
        "fixed_spacing": best,
        "f1_similarity_shift": f1_score(torch.cat(shifted), target_all),
    }


__all__ = [
    "LabelledKeys",
    "best_f1_threshold",
    "calibrate_threshold",
    "checkpoint_history",
    "evaluate",
    "f1_score",
    "focal_bce",
    "train_predictor",
]

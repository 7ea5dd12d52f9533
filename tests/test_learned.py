"""The learned chunker: labels, predictor, file handling, training and its failure modes."""

from __future__ import annotations

import math
import re

import pytest
import torch

import dhsa
from dhsa.chunking.labels import boundary_labels
from dhsa.chunking.learned import (
    BoundaryPredictor,
    cut_windows,
    learned_boundaries,
    load_predictor,
    save_predictor,
)
from dhsa.chunking.training import (
    LabelledKeys,
    best_f1_threshold,
    calibrate_threshold,
    checkpoint_history,
    evaluate,
    f1_score,
    focal_bce,
    train_predictor,
)


def test_labels_match_their_definition(rng):
    length, window = 45, 3
    q = torch.randn(1, 4, length, 8, generator=rng)
    k = torch.randn(1, 2, length, 8, generator=rng)
    labels, valid = boundary_labels(q, k, window=window, query_tile=7)
    logits = q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2) / math.sqrt(8)
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    attention = logits.masked_fill(future, -torch.inf).softmax(-1).mean(1)[0]
    for t in range(length - 1):
        full = t - window + 1 >= 0 and t + window + 1 <= length - 1
        assert bool(valid[t]) == full
        if full:
            later = attention[t + window + 1 :]
            left = later[:, t - window + 1 : t + 1].sum()
            right = later[:, t + 1 : t + window + 1].sum()
            assert bool(labels[0, t]) == bool(max(left, right) >= 2 * min(left, right)), t
        else:
            assert not bool(labels[0, t])


def test_cut_windows_hold_the_keys_around_each_cut(rng):
    keys = torch.randn(2, 20, 4, generator=rng)
    windows, present = cut_windows(keys, 3)
    assert windows.shape == (2 * 19, 6, 4)
    torch.testing.assert_close(windows[19 + 7], keys[1, 5:11])
    assert present[0].tolist() == [False, False, True, True, True, True]
    assert present[18].tolist() == [True, True, True, True, False, False]


def test_focal_loss_formula():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    p_true = torch.where(targets > 0, p, 1 - p)
    expected = (-((1 - p_true) ** 2) * torch.log(p_true)).mean()
    torch.testing.assert_close(focal_bce(logits, targets), expected)


def _topic_examples(rng, count, length=200, dim=16, window=4):
    """Keys drawn around a topic vector that changes at random points; labels at the changes."""
    examples = []
    for _ in range(count):
        cuts = sorted(torch.randperm(length - 20, generator=rng)[:12].add(10).tolist())
        keys = torch.empty(length, dim)
        labels = torch.zeros(length - 1, dtype=torch.bool)
        for lo, hi in zip([0, *cuts], [*cuts, length], strict=True):
            keys[lo:hi] = 3 * torch.randn(dim, generator=rng)
        keys += torch.randn(length, dim, generator=rng)
        labels[[c - 1 for c in cuts]] = True
        valid = torch.zeros(length - 1, dtype=torch.bool)
        valid[window - 1 : length - window - 1] = True
        examples.append(LabelledKeys(keys, labels & valid, valid))
    return examples


def test_training_beats_trivial_rules_on_held_out_cuts(rng):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    train, test = _topic_examples(rng, 12), _topic_examples(rng, 4)
    predictor = train_predictor(train, steps=300, batch=128, lr=3e-3, progress=False)
    scores = evaluate(predictor, test)
    assert scores["f1_learned"] > max(scores["f1_all_boundary"], scores["f1_fixed_spacing"]) + 0.2


def test_training_resumes_from_its_checkpoint(rng, tmp_path):
    examples = _topic_examples(rng, 3, length=60)
    kwargs = dict(steps=12, batch=16, lr=1e-3, progress=False, checkpoint_every=4)
    straight = train_predictor(examples, **kwargs)
    checkpoint = tmp_path / "run.ckpt"
    train_predictor(examples, **{**kwargs, "steps": 8}, checkpoint=checkpoint)
    assert torch.load(checkpoint, weights_only=True)["step"] == 8
    first_history = checkpoint_history(checkpoint)
    assert [h["step"] for h in first_history] == [4, 8]
    resumed = train_predictor(examples, **kwargs, checkpoint=checkpoint)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    # The loss history continues across the resume instead of starting over.
    history = checkpoint_history(checkpoint)
    assert [h["step"] for h in history] == [4, 8, 12] and history[:2] == first_history
    assert checkpoint_history(tmp_path / "none.ckpt") == []


def test_training_loss_falls(rng, tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    train_predictor(
        _topic_examples(rng, 6),
        steps=200,
        batch=64,
        lr=3e-3,
        progress=False,
        checkpoint=checkpoint,
        checkpoint_every=50,
    )
    history = checkpoint_history(checkpoint)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]


def test_checkpoint_of_another_predictor_shape_is_refused(rng, tmp_path):
    examples = _topic_examples(rng, 2, length=60)
    checkpoint = tmp_path / "run.ckpt"
    train_predictor(examples, window=4, steps=2, batch=8, progress=False, checkpoint=checkpoint)
    with pytest.raises(ValueError, match="--restart"):
        train_predictor(examples, window=3, steps=4, batch=8, progress=False, checkpoint=checkpoint)


def test_best_f1_threshold_picks_the_best_cut_of_the_ranking(rng):
    logits = torch.randn(300, generator=rng)
    targets = (logits + 0.8 * torch.randn(300, generator=rng)) > 0.7
    threshold = best_f1_threshold(logits, targets)
    best = f1_score(logits > threshold, targets)
    candidates = torch.cat([logits, logits.min()[None] - 1])
    assert best == pytest.approx(max(f1_score(logits > c, targets) for c in candidates))
    assert best > f1_score(torch.ones_like(targets), targets)
    # With every cut positive, all-boundary is best: the threshold lies below every logit.
    assert best_f1_threshold(logits, torch.ones_like(targets)) < float(logits.min())


def test_calibration_moves_logit_zero_to_the_best_threshold(rng):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    examples = _topic_examples(rng, 3)
    predictor = BoundaryPredictor(16, window=4, heads=4, hidden=32).eval()
    with torch.no_grad():
        before = torch.cat([predictor(e.keys[None])[0][e.valid] for e in examples])
    targets = torch.cat([e.labels[e.valid] for e in examples])
    shift = calibrate_threshold(predictor, examples)
    with torch.no_grad():
        after = torch.cat([predictor(e.keys[None])[0][e.valid] for e in examples])
    torch.testing.assert_close(after, before - shift)
    assert evaluate(predictor, examples)["f1_learned"] == pytest.approx(
        f1_score(before > best_f1_threshold(before, targets), targets)
    )


def test_config_loads_the_predictor_and_selects(rng, tmp_path):
    path = tmp_path / "predictor.pt"
    save_predictor(BoundaryPredictor(16, window=2, heads=2, hidden=32), path, {"model": "test"})
    assert load_predictor(path).window == 2
    config = dhsa.DHSAConfig(
        chunker="learned",
        predictor=str(path),
        budget=64,
        sink=4,
        local=8,
        query_block=16,
        min_chunk=4,
        max_chunk=32,
    )
    q = torch.randn(1, 4, 150, 16, generator=rng)
    k = torch.randn(1, 2, 150, 16, generator=rng)
    v = torch.randn(1, 2, 150, 16, generator=rng)
    layout = dhsa.select(q, k, config, method="dhsa")
    layout.validate()
    torch.testing.assert_close(
        dhsa.attend(q, k, v, layout, backend="torch"),
        dhsa.attend(q, k, v, layout, backend="reference"),
    )


def test_nothing_above_threshold_falls_back_to_max_length_splits(rng):
    predictor = BoundaryPredictor(8, window=2, heads=2, hidden=16)
    k = torch.randn(2, 1, 101, 8, generator=rng)
    bounds = learned_boundaries(k, predictor, threshold=1e9, min_chunk=4, max_chunk=32)
    assert bounds.tolist() == [[0, 25, 50, 75, 101]] * 2


def test_clear_errors_for_missing_wrong_and_mismatched_files(rng, tmp_path):
    missing = str(tmp_path / "missing.pt")
    # The file is read where the keys are chunked, not when the config is made.
    unread = dhsa.DHSAConfig(chunker="learned", predictor=missing, min_length=0)
    q = torch.randn(1, 1, 64, 16, generator=rng)
    message = re.escape(repr(missing)) + " not found: train one with `dhsa train-predictor"
    with pytest.raises(FileNotFoundError, match=message):
        dhsa.select(q, q, unread)
    with pytest.raises(FileNotFoundError, match=message):
        load_predictor(missing)
    with pytest.raises(ValueError, match="predictor=PATH"):
        dhsa.DHSAConfig(chunker="learned")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    with pytest.raises(ValueError, match="not a boundary predictor"):
        load_predictor(junk)
    path = tmp_path / "d32.pt"
    save_predictor(BoundaryPredictor(32, window=2, heads=2, hidden=16), path)
    config = dhsa.DHSAConfig(chunker="learned", predictor=str(path))
    k = torch.randn(1, 1, 64, 16, generator=rng)
    with pytest.raises(ValueError, match="head size 32"):
        dhsa.select(torch.randn(1, 1, 64, 16, generator=rng), k, config)


def test_train_predictor_command_relabels_when_settings_change(rng, tmp_path, monkeypatch):
    import argparse

    from dhsa.commands import train_predictor as command

    calls = []

    def collect(args, layers, text):
        calls.append((args.length, layers))
        return [_topic_examples(rng, len(layers), length=args.length) for _ in range(args.slices)]

    monkeypatch.setattr(command, "_collect", collect)
    text = tmp_path / "text.txt"
    text.write_text("some text")
    out = tmp_path / "p.pt"
    args = argparse.Namespace(
        model="m",
        out=str(out),
        text=str(text),
        length=40,
        slices=3,
        layers="0,2",
        window=4,
        ratio=2.0,
        steps=3,
        batch=8,
        lr=1e-3,
        seed=0,
        restart=False,
        no_progress=True,
    )
    assert command.run(args) == 0
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["layers"] == [0, 2] and meta["held_out_slices"] == 1
    assert [h["step"] for h in meta["loss_history"]] == [3]
    assert set(meta["held_out"]) >= {"f1_learned", "f1_all_boundary", "f1_fixed_spacing"}
    assert load_predictor(out).head_dim == 16
    # Same settings: the labelled keys are reused and training resumes (nothing left to do).
    assert command.run(args) == 0
    assert calls == [(40, [0, 2])]
    # Another slice length: the keys are labelled again and the old checkpoint is dropped.
    old = torch.load(f"{out}.ckpt", weights_only=True)["model"]
    args.length = 48
    assert command.run(args) == 0
    assert calls == [(40, [0, 2]), (48, [0, 2])]
    new = torch.load(f"{out}.ckpt", weights_only=True)["model"]
    assert not all(torch.equal(old[name], new[name]) for name in old)

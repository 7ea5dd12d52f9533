"""1.5-entmax and the ``dash`` selector against hand-checked values and independent references."""

from __future__ import annotations

import math

import pytest
import torch

import dhsa
from conftest import make_qkv, naive_attention, rel_error
from dhsa.methods.dash import dash_probabilities, row_density_quantiles
from dhsa.methods.entmax import entmax15

entmax_package = pytest.importorskip("entmax")


def test_entmax_of_known_scores():
    # [3, 0]: (1.5 - tau)^2 = 1 gives tau = 0.5, so p = [1, 0] exactly.
    # [1, 0]: both kept, 2 tau^2 - tau - 0.75 = 0, tau = (1 - sqrt(7)) / 4.
    # [0, 0, 0, 0]: uniform.
    tau = (1 - math.sqrt(7)) / 4
    z = torch.tensor([[3.0, 0.0, -torch.inf], [1.0, 0.0, -torch.inf], [0.0, 0.0, 0.0]])
    expected = torch.tensor(
        [[1.0, 0.0, 0.0], [(0.5 - tau) ** 2, tau**2, 0.0], [1 / 3, 1 / 3, 1 / 3]]
    )
    torch.testing.assert_close(entmax15(z), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 7, 129, 1000])
@pytest.mark.parametrize("spread", [0.05, 1.0, 30.0])
def test_entmax_matches_sorting_implementation(rng, n, spread):
    z = torch.randn(64, n, generator=rng) * spread + 50 * torch.randn(64, 1, generator=rng)
    z[::4, : n // 2] = -torch.inf
    reference = entmax_package.entmax15(z.double().clamp(min=-1e6), dim=-1)
    got = entmax15(z)
    torch.testing.assert_close(got.double(), reference, atol=2e-6, rtol=0)
    assert bool(((got > 0) == (reference > 0)).all() or (got - reference).abs().max() < 2e-6)


def _expected_blocks(q, k, config, scale):
    """Kept key blocks per (b, h, query block), from loops and the sorting entmax: the blocks
    with keys between the sink and the local window, in descending entmax probability until the
    budget (the last one may be cut)."""
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group, bq, c = q_heads // kv_heads, config.query_block, config.dash_block
    offset = k_len - q_len
    kept = {}
    for b in range(batch):
        for h in range(kv_heads):
            for qb in range(-(-q_len // bq)):
                start, end = offset + qb * bq, min(offset + (qb + 1) * bq, k_len)
                window = max(start - config.local, 0)
                sink = min(config.sink, window)
                room = config.budget - sink - (end - window)
                q_mean = q[b, h * group : (h + 1) * group, start - offset : end - offset].double()
                q_mean = q_mean.mean(dim=(0, 1))
                blocks = [j for j in range(-(-k_len // c)) if j * c < window and (j + 1) * c > sink]
                if not blocks:
                    kept[b, h, qb] = []
                    continue
                reps = [k[b, h, j * c : (j + 1) * c].double().mean(0) for j in blocks]
                z = torch.stack([q_mean @ r for r in reps]) * config.dash_sparsity * scale
                p = entmax_package.entmax15(z, dim=-1)
                chosen = []
                for i in p.argsort(descending=True).tolist():
                    if p[i] <= 1e-6 or room <= 0:
                        break
                    j = blocks[i]
                    chosen.append(j)
                    room -= min((j + 1) * c, window) - max(j * c, sink)
                kept[b, h, qb] = sorted(chosen)
    return kept


def _kept_blocks(layout, b, h, qb, block, config):
    """Blocks with a selected key between the sink and the local window."""
    covered = set()
    for start, end in layout.spans(b, h, qb):
        covered.update(range(start, end))
    first = layout.q_offset + qb * layout.query_block
    window = max(first - config.local, 0)
    sink = min(config.sink, window)
    return sorted({j // block for j in covered if sink <= j < window})


@pytest.mark.parametrize("sparsity", [1.0, 8.0, 40.0])
@pytest.mark.parametrize("budget", [60, 400])
def test_dash_keeps_the_entmax_support_within_the_budget(rng, sparsity, budget):
    q, k, _ = make_qkv(2, 4, 2, 150, 203, 16, rng)
    # A shared direction makes some block means stand out, as real keys do.
    shared = torch.randn(1, 1, 203 // 16 + 1, 16, generator=rng).repeat_interleave(16, 2)
    k = k + 2.0 * shared[:, :, :203]
    config = dhsa.DHSAConfig(
        budget=budget, sink=4, local=8, query_block=32, dash_block=16, dash_sparsity=sparsity
    )
    layout = dhsa.select(q, k, config, method="dash")
    layout.validate()
    assert int(layout.num_selected().max()) <= budget
    expected = _expected_blocks(q, k, config, 0.25)
    for (b, h, qb), blocks in expected.items():
        assert _kept_blocks(layout, b, h, qb, 16, config) == blocks, (b, h, qb)


def test_dash_density_follows_the_sparsity_knob(rng):
    q, k, _ = make_qkv(1, 2, 1, 256, 256, 16, rng)
    k = k + 3.0 * torch.randn(1, 1, 16, 16, generator=rng).repeat_interleave(16, 2)
    densities = []
    for sparsity in (0.5, 5.0, 50.0):
        config = dhsa.DHSAConfig(
            budget=64, sink=0, local=0, query_block=16, dash_block=16, dash_sparsity=sparsity
        )
        layout = dhsa.select(q, k, config, method="dash")
        densities.append(layout.density())
        quantiles = row_density_quantiles(layout)
        assert 0 < quantiles["q0"] <= quantiles["q50"] <= quantiles["q100"] <= 1
    assert densities[0] > densities[1] > densities[2]


@pytest.mark.parametrize("window", [None, 70])
def test_dash_layout_is_causal_keeps_sink_and_window_and_backends_agree(rng, window):
    q, k, v = make_qkv(1, 6, 2, 173, 211, 8, rng)
    config = dhsa.DHSAConfig(
        budget=40, sink=4, local=8, query_block=16, dash_block=8, dash_sparsity=20.0
    )
    layout = dhsa.select(q, k, config, method="dash", sliding_window=window)
    layout.validate()
    offset = 211 - 173
    for qb in range(layout.num_q_blocks):
        start, end = offset + qb * 16, min(offset + (qb + 1) * 16, 211)
        spans = layout.spans(0, 1, qb)
        lowest = 0 if window is None else max(start - window + 1, 0)
        local = max(start - 8, lowest)
        assert any(s <= local and e == end for s, e in spans)
        if window is None:
            assert any(s == 0 and e >= min(4, local) for s, e in spans)
        assert all(e <= end for _, e in spans)
        if window is not None:
            assert all(e > start - window + 1 for _, e in spans)
    mask = layout.to_dense_mask()
    reference = naive_attention(q, k, v, mask=mask, window=window)
    for backend in ("reference", "torch"):
        out = dhsa.attend(q, k, v, layout, backend=backend)
        assert rel_error(out, reference) < 1e-5


def test_dash_prior_adds_log_probability_to_logits(rng):
    q, k, v = make_qkv(1, 4, 2, 97, 129, 8, rng)
    scale = 0.3
    config = dhsa.DHSAConfig(
        budget=48, sink=4, local=8, query_block=16, dash_block=8, dash_sparsity=3.0
    )
    plain = dhsa.select(q, k, config, method="dash", scale=scale)
    prior = dhsa.select(q, k, config.replace(dash_prior=True), method="dash", scale=scale)
    assert torch.equal(plain.to_dense_mask(), prior.to_dense_mask())
    probs, _ = dash_probabilities(q, k, config, sliding_window=None, scale=scale)
    # Per key: log p of its block between sink and window; sink and window get the row's max.
    offset, bias = 129 - 97, torch.zeros(1, 2, 97, 129, dtype=torch.float64)
    for h in range(2):
        for i in range(97):
            qb = i // 16
            start = offset + qb * 16
            window = max(start - 8, 0)
            sink = min(4, window)
            row = probs[0, h, qb].double()
            per_key = torch.log(row.repeat_interleave(8)[:129].clamp(min=1e-300))
            best = torch.log(row.max().clamp(min=1e-300))
            bias[0, h, i] = best
            bias[0, h, i, sink:window] = per_key[sink:window]
    mask = prior.to_dense_mask()
    group = 2
    logits = (q.double() @ k.double().repeat_interleave(group, 1).transpose(-1, -2)) * scale
    logits = logits + bias.repeat_interleave(group, 1)
    logits = logits.masked_fill(~mask.repeat_interleave(group, 1), -torch.inf)
    expected = logits.softmax(-1) @ v.double().repeat_interleave(group, 1)
    for backend in ("reference", "torch"):
        got = dhsa.attend(q, k, v, prior, scale=scale, backend=backend)
        assert rel_error(got, expected) < 1e-5
    without = dhsa.attend(q, k, v, plain, scale=scale, backend="torch")
    assert rel_error(without, expected) > 1e-3

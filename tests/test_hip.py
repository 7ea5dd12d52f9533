"""``hip`` finds planted blocks; ``hip`` and ``vertical_slash`` keep sink, window and budget."""

from __future__ import annotations

import pytest
import torch

import dhsa
from conftest import make_qkv, naive_attention, rel_error
from dhsa.layout import Geometry
from dhsa.methods.regions import block_regions


def _covered(layout, b, h, qb):
    keys = set()
    for start, end in layout.spans(b, h, qb):
        keys.update(range(start, end))
    return keys


def test_hip_finds_the_planted_block_of_every_query_block(rng):
    """Each query block gets its own direction; the keys carry a bump of that direction centred
    on one random key (attention is local in HiP's sense), plus noise. The search must keep it."""
    q_len, bq, dim, rep = 640, 32, 64, 8
    config = dhsa.DHSAConfig(budget=96, sink=8, local=16, query_block=bq, hip_block=rep)
    regions = block_regions(Geometry(1, 1, q_len, q_len, bq), 8, 16, "cpu")
    num_blocks = q_len // bq
    directions = torch.linalg.qr(torch.randn(dim, dim, generator=rng))[0][:num_blocks]
    q = torch.randn(1, 2, q_len, dim, generator=rng) * 0.1
    k = torch.randn(1, 1, q_len, dim, generator=rng) * 0.1
    positions = torch.arange(q_len, dtype=torch.float32)
    planted = {}
    for qb in range(4, num_blocks):
        lo, hi = int(regions.candidate_start[qb]), int(regions.candidate_end[qb])
        centre = int(torch.randint(lo, hi, (1,), generator=rng))
        planted[qb] = centre
        q[0, :, qb * bq : (qb + 1) * bq] += 3.0 * directions[qb]
        bump = torch.exp(-((positions - centre) ** 2) / (2 * ((hi - lo) / 6) ** 2))
        k[0, 0] += 3.0 * bump[:, None] * directions[qb]
    layout = dhsa.select(q, k, config, method="hip")
    layout.validate()
    for qb, centre in planted.items():
        # Leaves are hip_block long but not aligned to the bump: the peak key or a neighbour.
        nearest = min(abs(key - centre) for key in _covered(layout, 0, 0, qb))
        assert nearest <= rep // 2, (qb, centre, layout.spans(0, 0, qb))


@pytest.mark.parametrize("method", ["hip", "vertical_slash"])
@pytest.mark.parametrize("window", [None, 150])
def test_layout_keeps_sink_and_window_within_budget_and_backends_agree(rng, method, window):
    q_len, k_len, bq = 181, 263, 16
    q, k, v = make_qkv(2, 4, 2, q_len, k_len, 16, rng)
    config = dhsa.DHSAConfig(budget=80, sink=8, local=16, query_block=bq, hip_block=8)
    layout = dhsa.select(q, k, config, method=method, sliding_window=window)
    layout.validate()
    regions = block_regions(layout.geometry, 8, 16, "cpu")
    assert int(layout.num_selected().max()) <= config.budget
    for b in range(2):
        for h in range(2):
            for qb in range(layout.num_q_blocks):
                keys = _covered(layout, b, h, qb)
                fixed = set(range(int(regions.sink_start[qb]), int(regions.sink_end[qb])))
                fixed |= set(range(int(regions.window_start[qb]), int(regions.block_end[qb])))
                assert fixed <= keys
                assert max(keys) < int(regions.block_end[qb])
                assert min(keys) >= int(regions.lowest[qb])
    assert layout.density() < 0.9
    reference = naive_attention(q, k, v, mask=layout.to_dense_mask(), window=window)
    for backend in ("reference", "torch"):
        out = dhsa.attend(q, k, v, layout, backend=backend)
        assert rel_error(out, reference) < 1e-5


@pytest.mark.parametrize("method", ["hip", "vertical_slash", "dash"])
def test_budget_covering_everything_equals_dense(rng, method):
    q, k, v = make_qkv(1, 4, 2, 77, 77, 16, rng)
    config = dhsa.DHSAConfig(budget=128, sink=4, local=8, query_block=16, hip_block=8)
    out = dhsa.sparse_attention(q, k, v, config, method=method, backend="torch")
    if method == "dash":
        # dash has no budget: it is dense only when entmax keeps every block.
        config = config.replace(dash_sparsity=1e-6)
        out = dhsa.sparse_attention(q, k, v, config, method=method, backend="torch")
    assert rel_error(out, naive_attention(q, k, v)) < 1e-5


def test_hip_rejects_non_finite_input(rng):
    q, k, _ = make_qkv(1, 2, 1, 200, 200, 8, rng)
    k[0, 0, 50, 3] = torch.nan
    with pytest.raises(ValueError, match="NaN"):
        dhsa.select(q, k, dhsa.DHSAConfig(budget=64, sink=4, local=8, query_block=16), method="hip")

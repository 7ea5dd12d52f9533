"""``vertical_slash`` finds planted key columns and diagonals."""

from __future__ import annotations

import torch

import dhsa
from dhsa.layout import Geometry
from dhsa.methods.regions import block_regions
from dhsa.methods.vertical_slash import last_block_profiles

LENGTH, BLOCK, DIM = 400, 16, 64
CONFIG = dhsa.DHSAConfig(budget=160, sink=4, local=16, query_block=BLOCK, vs_slash_share=0.5)


def _covered(layout, qb):
    keys = set()
    for start, end in layout.spans(0, 0, qb):
        keys.update(range(start, end))
    return keys


def test_profiles_match_their_definition(rng):
    q = torch.randn(1, 2, 50, 8, generator=rng)
    k = torch.randn(1, 1, 70, 8, generator=rng)
    vertical, slash = last_block_profiles(q, k, 16, 0.5, None)
    # The last block holds 50 - 3 * 16 = 2 queries (positions 68, 69) of 2 heads.
    expected_vertical = torch.zeros(70, dtype=torch.float64)
    expected_slash = torch.zeros(70, dtype=torch.float64)
    for head in range(2):
        for position in (68, 69):
            logits = (k[0, 0, : position + 1].double() @ q[0, head, position - 20].double()) * 0.5
            probs = logits.softmax(0)
            expected_vertical[: position + 1] += probs
            expected_slash[: position + 1] += probs.flip(0)
    torch.testing.assert_close(vertical[0, 0].double(), expected_vertical, atol=1e-6, rtol=0)
    torch.testing.assert_close(slash[0, 0].double(), expected_slash, atol=1e-6, rtol=0)


def test_finds_planted_columns(rng):
    regions = block_regions(Geometry(1, 1, LENGTH, LENGTH, BLOCK), 4, 16, "cpu")
    lo, hi = int(regions.candidate_start[-1]), int(regions.candidate_end[-1])
    columns = torch.randperm(hi - lo, generator=rng)[:5] + lo
    direction = torch.randn(DIM, generator=rng)
    direction /= direction.norm()
    q = torch.randn(1, 2, LENGTH, DIM, generator=rng) * 0.2 + direction
    k = torch.randn(1, 1, LENGTH, DIM, generator=rng) * 0.2
    k[0, 0, columns] += 40.0 * direction
    layout = dhsa.select(q, k, CONFIG, method="vertical_slash")
    layout.validate()
    for qb in range(layout.num_q_blocks):
        start, end = int(regions.candidate_start[qb]), int(regions.candidate_end[qb])
        visible = {int(c) for c in columns if start <= c < end}
        assert visible <= _covered(layout, qb), qb


def test_finds_planted_diagonals(rng):
    offsets = sorted(torch.randperm(LENGTH // 2 - 40, generator=rng)[:2].add(40).tolist())
    k = torch.randn(1, 1, LENGTH, DIM, generator=rng)
    q = torch.randn(1, 2, LENGTH, DIM, generator=rng) * 0.1
    for o in offsets:
        # Query i looks like key i - o: a strong diagonal at offset o.
        q[0, :, o:] += 0.5 * k[0, 0, : LENGTH - o]
    layout = dhsa.select(q, k, CONFIG, method="vertical_slash")
    layout.validate()
    regions = block_regions(Geometry(1, 1, LENGTH, LENGTH, BLOCK), 4, 16, "cpu")
    for qb in range(layout.num_q_blocks):
        start, end = int(regions.candidate_start[qb]), int(regions.candidate_end[qb])
        block_start = int(regions.block_start[qb])
        for o in offsets:
            wanted = set(range(max(block_start - o, start), min(block_start + BLOCK - o, end)))
            assert wanted <= _covered(layout, qb), (qb, o)

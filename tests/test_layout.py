import pytest
import torch

from dhsa import Layout
from dhsa.intmath import ceil_div
from dhsa.layout import Geometry, merge_padded, merge_padded_rows


def test_merge_padded_sorts_merges_and_drops_empty():
    starts = torch.tensor([[10, 0, 5, 30, 40], [7, 7, 0, 0, 0]])
    ends = torch.tensor([[20, 5, 12, 35, 40], [9, 8, 0, 0, 0]])
    counts, s, e, bias = merge_padded(starts, ends, k_len=64)
    assert counts.tolist() == [2, 1]
    assert s.tolist() == [0, 30, 7]
    assert e.tolist() == [20, 35, 9]
    assert bias is None


def test_merge_padded_rows_matches_a_union_of_key_sets(rng):
    """Each row's merged spans cover exactly the union of its candidates' keys, sorted, disjoint
    and not touching, then padding: the same result however the candidates are ordered."""
    k_len, rows, width = 60, 40, 7
    starts = torch.randint(-5, k_len + 5, (rows, width), generator=rng)
    ends = starts + torch.randint(-3, 12, (rows, width), generator=rng)
    got_s, got_e = merge_padded_rows(starts, ends, k_len)
    assert got_s.shape == (rows, width)
    for r in range(rows):
        keys = {
            t
            for s, e in zip(starts[r].tolist(), ends[r].tolist(), strict=False)
            for t in range(max(s, 0), min(e, k_len))
        }
        spans = [
            (s, e) for s, e in zip(got_s[r].tolist(), got_e[r].tolist(), strict=False) if e > s
        ]
        n = len(spans)
        assert got_s[r, n:].eq(k_len + 1).all() and got_e[r, n:].eq(k_len + 1).all()
        assert {t for s, e in spans for t in range(s, e)} == keys
        assert all(e0 < s1 for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False)), (
            "merged runs apart"
        )
    counts, s, e, _ = merge_padded(starts, ends, k_len)
    keep = got_e > got_s
    assert torch.equal(counts, keep.sum(1))
    assert torch.equal(s, got_s[keep]) and torch.equal(e, got_e[keep])


def test_merge_padded_keeps_biased_spans_separate():
    starts = torch.tensor([[4, 0]])
    ends = torch.tensor([[8, 4]])
    bias = torch.tensor([[1.5, -2.0]])
    counts, s, e, b = merge_padded(starts, ends, 16, bias)
    assert counts.tolist() == [2]
    assert list(zip(s.tolist(), e.tolist(), b.tolist(), strict=False)) == [
        (0, 4, -2.0),
        (4, 8, 1.5),
    ]


def random_layout(generator, batch=2, kv_heads=3, q_len=37, k_len=50, query_block=8, window=None):
    rows = batch * kv_heads * -(-q_len // query_block)
    mask = torch.rand(rows, k_len, generator=generator) < 0.4
    return Layout.from_key_mask(
        mask,
        Geometry(batch, kv_heads, q_len, k_len, query_block, window),
    ), mask


def test_from_key_mask_round_trips_through_membership(rng):
    layout, mask = random_layout(rng)
    layout.validate()
    assert torch.equal(layout.key_membership(), mask)


@pytest.mark.parametrize("window", [None, 5])
def test_num_selected_and_density_agree_with_dense_mask(rng, window):
    layout, _ = random_layout(rng, window=window)
    dense = layout.to_dense_mask()
    assert dense.shape == (2, 3, 37, 50)
    assert torch.equal(layout.num_selected(), dense.sum(-1))
    q_pos = torch.arange(50 - 37, 50)[:, None]
    k_pos = torch.arange(50)[None, :]
    causal = k_pos <= q_pos
    if window is not None:
        causal &= q_pos - k_pos < window
    assert not (dense & ~causal).any()
    expected = dense.sum().item() / (causal.sum().item() * 2 * 3)
    assert layout.density() == pytest.approx(expected)


def test_validate_rejects_overlapping_and_out_of_range_spans():
    good = dict(geometry=Geometry(1, 1, 4, 10, 4))
    overlapping = Layout(
        offsets=torch.tensor([0, 2]),
        starts=torch.tensor([0, 3], dtype=torch.int32),
        ends=torch.tensor([5, 6], dtype=torch.int32),
        **good,
    )
    with pytest.raises(ValueError, match="sorted and disjoint"):
        overlapping.validate()
    outside = Layout(
        offsets=torch.tensor([0, 1]),
        starts=torch.tensor([0], dtype=torch.int32),
        ends=torch.tensor([11], dtype=torch.int32),
        **good,
    )
    with pytest.raises(ValueError, match="k_len"):
        outside.validate()
    wrong_rows = Layout(
        offsets=torch.tensor([0, 0, 0]),
        starts=torch.zeros(0, dtype=torch.int32),
        ends=torch.zeros(0, dtype=torch.int32),
        **good,
    )
    with pytest.raises(ValueError, match="rows"):
        wrong_rows.validate()


def test_key_bias_spreads_span_bias_over_its_keys():
    layout = Layout(
        offsets=torch.tensor([0, 2]),
        starts=torch.tensor([1, 5], dtype=torch.int32),
        ends=torch.tensor([3, 6], dtype=torch.int32),
        geometry=Geometry(1, 1, 2, 8, 2),
        span_bias=torch.tensor([0.5, -1.0]),
    )
    assert layout.key_bias()[0].tolist() == [0, 0.5, 0.5, 0, 0, -1.0, 0, 0]


def test_from_counts_builds_row_major_layouts_and_checks_the_row_count():
    starts, ends = torch.tensor([0, 5, 2]), torch.tensor([3, 9, 4])
    layout = Layout.from_counts(
        torch.tensor([2, 0, 1]),
        starts,
        ends,
        Geometry(1, 1, 12, 12, 4),
    )
    layout.validate()
    assert layout.spans(0, 0, 0) == [(0, 3), (5, 9)]
    assert layout.spans(0, 0, 1) == [] and layout.spans(0, 0, 2) == [(2, 4)]
    with pytest.raises(ValueError, match="counts has 2 rows, the geometry 3"):
        Layout.from_counts(
            torch.tensor([2, 1]),
            starts,
            ends,
            Geometry(1, 1, 12, 12, 4),
        )


def test_geometry_of_tensors_and_its_sizes_read_through_the_layout(rng):
    q, k = torch.randn(2, 6, 37, 8), torch.randn(2, 3, 50, 8)
    geometry = Geometry.of(q, k, 8, sliding_window=5)
    assert geometry == Geometry(
        batch=2, kv_heads=3, q_len=37, k_len=50, query_block=8, sliding_window=5
    )
    assert (geometry.num_q_blocks, geometry.num_rows, geometry.q_offset) == (5, 30, 13)
    starts, ends = geometry.block_bounds("cpu")
    assert starts.tolist() == [13, 21, 29, 37, 45] and ends.tolist() == [21, 29, 37, 45, 50]
    layout, _ = random_layout(rng, window=5)
    assert layout.geometry == geometry
    for name in ("batch", "kv_heads", "q_len", "k_len", "query_block", "sliding_window"):
        assert getattr(layout, name) == getattr(geometry, name), name
    assert (layout.num_q_blocks, layout.num_rows, layout.q_offset) == (5, 30, 13)


def test_ceil_div_of_ints_and_tensors():
    assert [ceil_div(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    lengths = torch.tensor([0, 1, 127, 128, 129])
    assert ceil_div(lengths, 128).tolist() == [0, 1, 1, 1, 2]

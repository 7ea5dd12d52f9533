"""Incremental decode selection: boundaries, scoring and layouts against whole-sequence runs."""

import pytest
import torch

import dhsa
from dhsa.chunking import BoundaryTracker, fixed_boundaries, similarity_boundaries
from dhsa.decode import DecodeSession


def segmented_keys(batch, kv_heads, length, dim, seed, lo=12, hi=60):
    """Keys made of constant random directions over segments of ``lo..hi`` tokens, plus noise;
    returns the keys and each row's true segment starts."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.empty(batch, kv_heads, length, dim)
    starts = []
    for b in range(batch):
        pos, row = 0, []
        while pos < length:
            n = int(torch.randint(lo, hi + 1, (1,), generator=gen))
            keys[b, :, pos : pos + n] = torch.randn(kv_heads, 1, dim, generator=gen) * 3
            row.append(pos)
            pos += n
        starts.append(row)
    keys += 0.05 * torch.randn(keys.shape, generator=gen)
    return keys, starts


def grow(tracker, k, start):
    for length in range(start + 1, k.shape[2] + 1):
        tracker.advance(k[:, :, :length])


@pytest.mark.parametrize("chunk_size,prefix,length", [(16, 37, 203), (7, 5, 61)])
def test_fixed_chunker_incremental_equals_full(chunk_size, prefix, length):
    config = dhsa.DHSAConfig(chunker="fixed", chunk_size=chunk_size, budget=256, sink=4, local=8)
    k = torch.randn(2, 2, length, 8)
    tracker = BoundaryTracker.start(k[:, :, :prefix], config, owner=0)
    grow(tracker, k, prefix)
    full = fixed_boundaries(2, length, chunk_size, "cpu")[0].tolist()
    for row in tracker.closed:
        assert row == [b for b in full if b <= length - 1]
    assert tracker.boundaries()[:, -1].tolist() == [length, length]


@pytest.mark.parametrize("seed,prefix", [(0, 90), (1, 301), (2, 150)])
def test_similarity_incremental_equals_full_up_to_delay(seed, prefix):
    config = dhsa.DHSAConfig(budget=256, sink=4, local=8, min_chunk=8, max_chunk=128)
    length = 613
    k, truth = segmented_keys(2, 2, length, 64, seed)
    full = similarity_boundaries(k, window=4, z=1.0, min_chunk=8, max_chunk=128)
    tracker = BoundaryTracker.start(k[:, :, :prefix], config, owner=0)
    grow(tracker, k, prefix)
    settled = length - tracker.delay
    for b in range(2):
        expected = [x for x in full[b].tolist() if x <= settled]
        assert [x for x in truth[b] if x <= settled] == expected  # the reference finds the truth
        assert tracker.closed[b] == expected


def test_similarity_flat_keys_close_at_max_chunk():
    config = dhsa.DHSAConfig(budget=256, sink=4, local=8, min_chunk=8, max_chunk=32)
    k = torch.ones(1, 1, 150, 8) + 1e-3 * torch.randn(1, 1, 150, 8)
    tracker = BoundaryTracker.start(k[:, :, :20], config, owner=0)
    grow(tracker, k, 20)
    gaps = torch.tensor(tracker.closed[0]).diff()
    assert bool((gaps >= 8).all()) and bool((gaps <= 32).all())
    assert 150 - tracker.closed[0][-1] <= 32 + tracker.delay


def decode_steps(session, q, k, config, start, layer=0, row=None):
    """Layouts of single-token decode steps for key lengths ``start..L``."""
    layouts = []
    for length in range(start, k.shape[2] + 1):
        layouts.append(
            session.select(
                q[:, :, length - 1 : length], k[:, :, :length], config, layer=layer, row=row
            )
        )
    return layouts


@pytest.mark.parametrize("chunker", ["similarity", "fixed"])
def test_decode_layout_equals_prefill_selector_on_same_boundaries(chunker):
    config = dhsa.DHSAConfig(
        budget=70, sink=5, local=9, query_block=1, chunker=chunker, chunk_size=11
    )
    batch, length, start = 2, 157, 101
    q = torch.randn(batch, 6, length, 16)
    k = torch.randn(batch, 2, length, 16)
    session = DecodeSession()
    for now in range(start, length + 1):
        query, keys = q[:, :, now - 1 : now], k[:, :, :now]
        layout = session.select(query, keys, config, layer=0)
        layout.validate()
        expected = dhsa.select(query, keys, config, boundaries=session.boundaries(0))
        assert torch.equal(layout.to_dense_mask(), expected.to_dense_mask())
        assert int(layout.num_selected().max()) <= config.budget


def test_decode_with_budget_covering_everything_is_dense():
    config = dhsa.DHSAConfig(budget=512, sink=4, local=8)
    q = torch.randn(1, 4, 95, 32)
    k = torch.randn(1, 2, 95, 32)
    v = torch.randn(1, 2, 95, 32)
    session = DecodeSession()
    for length, layout in zip(range(60, 96), decode_steps(session, q, k, config, 60), strict=False):
        assert layout.density() == 1.0
        out = dhsa.attend(q[:, :, length - 1 : length], k[:, :, :length], v[:, :, :length], layout)
        ref = dhsa.dense_attention(q[:, :, length - 1 : length], k[:, :, :length], v[:, :, :length])
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_batched_rows_are_independent():
    config = dhsa.DHSAConfig(budget=40, sink=3, local=5, query_block=8, min_chunk=4, max_chunk=16)
    q = torch.randn(3, 4, 131, 16)
    k, _ = segmented_keys(3, 2, 131, 16, seed=5, lo=5, hi=20)
    batched = decode_steps(DecodeSession(), q, k, config, 77)
    for b in range(3):
        alone = decode_steps(DecodeSession(), q[b : b + 1], k[b : b + 1], config, 77)
        for together, single in zip(batched, alone, strict=False):
            assert torch.equal(together.to_dense_mask()[b : b + 1], single.to_dense_mask())


def test_shared_boundaries_follow_the_first_layer():
    q = torch.randn(1, 2, 120, 16)
    k0, _ = segmented_keys(1, 1, 120, 16, seed=7, lo=8, hi=20)
    k1 = torch.randn(1, 1, 120, 16)
    for shared in (True, False):
        config = dhsa.DHSAConfig(budget=40, sink=3, local=5, query_block=8, share_boundaries=shared)
        session = DecodeSession()
        for length in range(80, 121):
            for layer, k in enumerate((k0, k1)):
                session.select(q[:, :, length - 1 : length], k[:, :, :length], config, layer=layer)
        own = BoundaryTracker.start(k1, config, owner=1).boundaries()
        layer1 = session.boundaries(1, shared=shared)
        if shared:
            assert torch.equal(layer1, session.boundaries(0, shared=shared))
            assert not torch.equal(layer1, own)
        else:
            assert not torch.equal(layer1, session.boundaries(0, shared=shared))


def test_replaced_keys_restart_the_state():
    config = dhsa.DHSAConfig(budget=40, sink=3, local=5, query_block=8)
    q = torch.randn(1, 2, 90, 16)
    first, second = torch.randn(1, 1, 90, 16), torch.randn(1, 1, 90, 16)
    session = DecodeSession()
    decode_steps(session, q, first, config, 60)
    reused = session.select(q[:, :, 89:90], second, config, layer=0)
    fresh = DecodeSession().select(q[:, :, 89:90], second, config, layer=0)
    assert torch.equal(reused.to_dense_mask(), fresh.to_dense_mask())


def test_rejects_multi_token_queries():
    with pytest.raises(ValueError, match="one query token"):
        DecodeSession().select(
            torch.randn(1, 2, 2, 8), torch.randn(1, 1, 9, 8), dhsa.DHSAConfig(), layer=0
        )


def test_learned_incremental_equals_full_up_to_delay(tmp_path):
    from dhsa.chunking import learned_boundaries, load_predictor
    from dhsa.chunking.learned import BoundaryPredictor, save_predictor

    torch.manual_seed(0)
    path = tmp_path / "predictor.pt"
    save_predictor(BoundaryPredictor(head_dim=16, window=3), path)
    predictor = load_predictor(path)
    length, prefix = 400, 120
    k, _ = segmented_keys(2, 2, length, 16, seed=3)
    with torch.no_grad():
        threshold = float(predictor(k.float().mean(dim=1)).quantile(0.8))
    config = dhsa.DHSAConfig(
        chunker="learned",
        predictor=str(path),
        predictor_threshold=threshold,
        min_chunk=4,
        max_chunk=length,
        budget=256,
        sink=4,
        local=8,
    )
    full = learned_boundaries(k, predictor, threshold=threshold, min_chunk=4, max_chunk=length)
    tracker = BoundaryTracker.start(k[:, :, :prefix], config, owner=0)
    assert tracker.delay == 3 + 4 - 1
    grow(tracker, k, prefix)
    settled = length - tracker.delay
    for b in range(2):
        expected = [x for x in full[b].tolist() if x <= settled]
        assert len(expected) > 10 and max(expected) > prefix
        assert tracker.closed[b] == expected


def test_spans_are_disjoint_and_fill_the_budget_exactly():
    config = dhsa.DHSAConfig(budget=64, sink=4, local=8, query_block=8, min_chunk=4, max_chunk=16)
    q = torch.randn(2, 4, 300, 16)
    k, _ = segmented_keys(2, 2, 300, 16, seed=11, lo=5, hi=20)
    session = DecodeSession()
    for length in range(200, 301, 7):
        starts, ends = session.select_spans(
            q[:, :, length - 1 : length], k[:, :, :length], config, layer=0
        )
        sizes = (ends - starts).clamp(min=0)
        assert bool((starts >= 0).all()) and bool((ends <= length).all())
        assert sizes.sum(-1).tolist() == [[config.budget] * 2] * 2
        covered = torch.zeros(2, 2, length, dtype=torch.int64)
        for b, h, i in torch.nonzero(sizes).tolist():
            covered[b, h, starts[b, h, i] : ends[b, h, i]] += 1
        assert int(covered.max()) == 1  # disjoint
        assert bool((covered[..., -1] == 1).all())  # the query's own key


def test_session_spans_are_decode_spans_whose_layout_keeps_their_keys():
    config = dhsa.DHSAConfig(budget=48, sink=4, local=8, query_block=8, min_chunk=4, max_chunk=16)
    q = torch.randn(2, 4, 1, 16)
    k, _ = segmented_keys(2, 2, 150, 16, seed=5, lo=5, hi=20)
    spans = DecodeSession().select_spans(q, k, config, layer=0)
    assert isinstance(spans, dhsa.DecodeSpans)
    starts, ends = spans
    assert starts is spans.starts and ends is spans.ends
    assert starts.dtype == ends.dtype == torch.int32 and starts.shape == ends.shape
    assert starts.shape[:2] == (2, 2)
    layout = dhsa.Layout.from_decode_spans(*spans, 150)
    layout.validate()
    assert (layout.batch, layout.kv_heads, layout.num_rows) == (2, 2, 4)
    assert layout.q_len == layout.query_block == 1 and layout.k_len == 150
    for b in range(2):
        for h in range(2):
            row = zip(starts[b, h].tolist(), ends[b, h].tolist(), strict=True)
            pairs = [(s, e) for s, e in row if e > s]
            assert pairs == sorted(pairs) and all(0 <= s and e <= 150 for s, e in pairs)
            merged = []  # the non-empty spans, touching ones merged
            for s, e in pairs:
                if merged and merged[-1][1] == s:
                    merged[-1] = (merged[-1][0], e)
                else:
                    merged.append((s, e))
            assert layout.spans(b, h, 0) == merged
            keys = torch.zeros(150, dtype=torch.bool)
            for s, e in pairs:
                keys[s:e] = True
            assert torch.equal(layout.to_dense_mask()[b, h, 0], keys)
    assert torch.equal(DecodeSession().select(q, k, config, layer=0).offsets, layout.offsets)


def test_attend_decode_equals_attention_over_the_session_layout():
    config = dhsa.DHSAConfig(budget=48, sink=4, local=8, query_block=8, min_chunk=4, max_chunk=16)
    q = torch.randn(2, 4, 1, 16)
    k, v = torch.randn(2, 2, 150, 16), torch.randn(2, 2, 150, 16)
    starts, ends = DecodeSession().select_spans(q, k, config, layer=0)
    out = dhsa.kernels.attend_decode(q, k, v, starts, ends, backend="reference")
    layout = DecodeSession().select(q, k, config, layer=0)
    torch.testing.assert_close(out, dhsa.attend(q, k, v, layout, backend="reference"))
    with pytest.raises(ValueError, match="spans"):
        dhsa.kernels.attend_decode(q, k, v, starts[:1], ends[:1])


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_torch_decode_over_random_spans_matches_the_reference(softcap):
    gen = torch.Generator().manual_seed(4)
    batch, kv_heads, k_len, width = 2, 3, 97, 7
    q = torch.randn(batch, 6, 1, 16, generator=gen)
    k, v = (torch.randn(batch, kv_heads, k_len, 16, generator=gen) for _ in "kv")
    cuts = torch.sort(torch.randint(0, k_len + 1, (batch, kv_heads, 2 * width), generator=gen))
    starts, ends = cuts.values[..., 0::2], cuts.values[..., 1::2]
    ends = torch.where(torch.rand(starts.shape, generator=gen) < 0.3, starts - 1, ends)
    ends[0, 1] = starts[0, 1]  # a row with no key at all
    shuffle = torch.argsort(torch.rand(starts.shape, generator=gen), dim=-1)
    starts, ends = starts.gather(-1, shuffle), ends.gather(-1, shuffle)
    kwargs = dict(scale=0.3, softcap=softcap)
    out = dhsa.kernels.attend_decode(q, k, v, starts, ends, backend="torch", **kwargs)
    ref = dhsa.kernels.attend_decode(q, k, v, starts, ends, backend="reference", **kwargs)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert bool((out[0, 2:4] == 0).all()) and bool((out[0, :2] != 0).any())  # group of KV head 1
    # A cache with room beyond the keys in use is read in place.
    roomy = [torch.cat([x, torch.randn_like(x)], dim=2)[:, :, :k_len] for x in (k, v)]
    again = dhsa.kernels.attend_decode(q, *roomy, starts, ends, backend="torch", **kwargs)
    torch.testing.assert_close(again, out, rtol=0, atol=0)

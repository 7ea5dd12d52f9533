"""The budgeted greedy fill: its specification against the definition, and the torch and Triton
fills against the specification on random inputs, odd sizes, ties and edge budgets.

Without a GPU the Triton fill runs under Triton's interpreter (``TRITON_INTERPRET=1``, set here
before triton is imported), as in ``test_triton.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from dhsa.fill import FillRegions, chunks_taken_bound, greedy_fill, naive_fill  # noqa: E402
from dhsa.fill.naive import padded  # noqa: E402
from dhsa.layout import Geometry  # noqa: E402
from dhsa.methods.regions import block_regions  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
try:
    import triton  # noqa: F401

    WAYS = [False, True]
except ImportError:
    WAYS = [False]


def random_chunks(gen, batch, length, num_chunks, *, empty=0.2, past_end=False):
    """``lo, hi [B, N]``: random cuts of ``[0, length)`` into chunks, some empty (as padding
    chunks or unused decode slots are), the last one optionally reaching past every key."""
    lo = torch.zeros(batch, num_chunks, dtype=torch.int64)
    hi = torch.zeros_like(lo)
    for b in range(batch):
        cuts = torch.randint(1, max(length, 2), (num_chunks - 1,), generator=gen)
        edges = torch.cat([torch.tensor([0]), torch.sort(cuts).values, torch.tensor([length])])
        lo[b], hi[b] = edges[:-1], edges[1:]
        drop = torch.rand(num_chunks, generator=gen) < empty
        lo[b] = torch.where(drop, 0, lo[b])
        hi[b] = torch.where(drop, 0, hi[b])
    if past_end:
        hi[:, -1] = torch.where(hi[:, -1] > 0, 1 << 62, 0)
    return lo, hi


def random_scores(gen, shape, ties):
    """Float32 scores; with ``ties`` few distinct values (zeros of both signs and ``-inf`` too)."""
    if not ties:
        return torch.randn(shape, generator=gen)
    values = torch.tensor([-torch.inf, -1.0, -0.0, 0.0, 0.5, 2.0])
    return values[torch.randint(0, len(values), shape, generator=gen)]


def regions_of(length, q_len, query_block, sink, local, window, budget):
    regions = block_regions(Geometry(1, 1, q_len, length, query_block, window), sink, local, "cpu")
    return regions.fill_regions(budget)


def run(scores, lo, hi, regions, width, use_triton):
    tensors = FillRegions(*(x if isinstance(x, int) else x.to(DEVICE) for x in regions.fields()))
    starts, ends, status = greedy_fill(
        scores.to(DEVICE),
        lo.to(DEVICE),
        hi.to(DEVICE),
        tensors,
        width=width,
        status=torch.zeros(2, dtype=torch.int32, device=DEVICE),
        use_triton=use_triton,
    )
    return starts.cpu(), ends.cpu(), status.cpu()


def assert_matches_spec(scores, lo, hi, regions, width, use_triton):
    starts, ends, status = run(scores, lo, hi, regions, width, use_triton)
    want = padded(naive_fill(scores, lo, hi, regions), width)
    assert status.tolist() == [0, 0]
    assert starts.dtype == torch.int32 and starts.shape == want[0].shape
    assert torch.equal(starts, want[0]) and torch.equal(ends, want[1])


@pytest.mark.parametrize("use_triton", WAYS)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_prefill_tiles_match_the_specification(seed, ties, use_triton):
    gen = torch.Generator().manual_seed(seed)
    batch, kv_heads = int(torch.randint(1, 3, (1,), generator=gen)), 2
    length = int(torch.randint(40, 200, (1,), generator=gen))
    q_len = int(torch.randint(1, length + 1, (1,), generator=gen))
    query_block = int(torch.randint(1, 24, (1,), generator=gen))
    sink, local = (int(x) for x in torch.randint(0, 20, (2,), generator=gen))
    window = [None, int(torch.randint(1, length, (1,), generator=gen))][seed % 2]
    budget = int(torch.randint(1, length + 20, (1,), generator=gen))
    num_chunks = int(torch.randint(1, 30, (1,), generator=gen))
    regions = regions_of(length, q_len, query_block, sink, local, window, budget)
    tiles = regions.remaining.numel()
    lo, hi = random_chunks(gen, batch, length, num_chunks)
    scores = random_scores(gen, (batch, kv_heads, tiles, num_chunks), ties)
    assert_matches_spec(scores, lo, hi, regions, num_chunks + 2, use_triton)
    sizes = hi - lo
    shortest = int(sizes[sizes > 0].min()) if bool((sizes > 0).any()) else 1
    sure = min(num_chunks, chunks_taken_bound(int(regions.remaining.max()), shortest))
    assert_matches_spec(scores, lo, hi, regions, sure + 2, use_triton)


@pytest.mark.parametrize("use_triton", WAYS)
@pytest.mark.parametrize("budget", ["fixed part", "one key", "tight", "everything"])
def test_edge_budgets_match_the_specification(rng, budget, use_triton):
    length, q_len, query_block = 131, 131, 16
    regions = block_regions(Geometry(1, 1, q_len, length, query_block), 5, 7, "cpu")
    fixed = regions.fixed_cost
    extra = {"fixed part": 0, "one key": 1, "tight": 13, "everything": length}[budget]
    remaining = torch.full_like(fixed, extra)
    fill_regions = regions.fill_regions(1)
    fill_regions = FillRegions(*fill_regions.fields()[:-1], remaining)
    lo, hi = random_chunks(rng, 2, length, 17)
    scores = random_scores(rng, (2, 3, len(fixed), 17), ties=True)
    assert_matches_spec(scores, lo, hi, fill_regions, 19, use_triton)
    starts, ends, _ = run(scores, lo, hi, fill_regions, 19, use_triton)
    kept = (ends - starts).clamp(min=0).sum(-1)
    part_lo = lo.clamp(min=regions.candidate_start[:, None, None])
    candidates = (hi.clamp(max=regions.candidate_end[:, None, None]) - part_lo).clamp(min=0)
    assert bool((kept <= fixed + extra).all())
    if budget == "everything":
        assert bool((kept == fixed + candidates.sum(-1).T[:, None]).all())


@pytest.mark.parametrize("use_triton", WAYS)
@pytest.mark.parametrize("seed", range(4))
def test_decode_steps_match_the_specification(seed, use_triton):
    """A decode step: one query block of one token, regions as Python ints, a tail slot reaching
    past every key and unused slots ``(0, 0)``."""
    gen = torch.Generator().manual_seed(100 + seed)
    batch, kv_heads, slots = 3, 2, int(torch.randint(2, 40, (1,), generator=gen))
    length = int(torch.randint(20, 300, (1,), generator=gen))
    sink, local = (int(x) for x in torch.randint(0, 30, (2,), generator=gen))
    budget = int(torch.randint(1, 2 * length, (1,), generator=gen))
    tensors = regions_of(length, 1, 1, sink, local, None, budget)
    regions = FillRegions(*(int(x) for x in tensors.fields()))
    lo, hi = random_chunks(gen, batch, length, slots, empty=0.3, past_end=True)
    scores = random_scores(gen, (batch, kv_heads, 1, slots), ties=seed % 2 == 1)
    assert_matches_spec(scores, lo, hi, regions, slots + 2, use_triton)
    assert_matches_spec(scores, lo, hi, tensors, slots + 2, use_triton)
    mixed = FillRegions(*regions.fields()[:-1], tensors.remaining)
    assert_matches_spec(scores, lo, hi, mixed, slots + 2, use_triton)


@pytest.mark.parametrize("use_triton", WAYS)
def test_rows_needing_more_than_the_width_are_flagged(use_triton):
    # Six candidate chunks of 4 keys; 10 keys of room: the fill takes three of them.
    lo = torch.arange(0, 24, 4)[None]
    hi = lo + 4
    regions = FillRegions(0, 0, 24, 30, 0, 24, 10)
    scores = torch.tensor([[[[0.1, 0.9, 0.3, 0.8, 0.2, 0.5]]]])
    assert_matches_spec(scores, lo, hi, regions, 5, use_triton)
    starts, ends, status = run(scores, lo, hi, regions, 4, use_triton)
    assert status.tolist() == [0, 1]
    assert run(scores, lo, hi, regions, 5, use_triton)[2].tolist() == [0, 0]


@pytest.mark.parametrize("use_triton", WAYS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_are_flagged(bad, use_triton):
    lo, hi = torch.arange(0, 40, 8)[None], torch.arange(8, 48, 8)[None]
    regions = FillRegions(0, 0, 40, 48, 0, 40, 12)
    scores = torch.randn(1, 1, 1, 5)
    scores[..., 3] = bad
    assert run(scores, lo, hi, regions, 7, use_triton)[2].tolist()[0] == 1
    scores[..., 3] = -torch.inf  # a valid lowest score
    assert run(scores, lo, hi, regions, 7, use_triton)[2].tolist()[0] == 0


@pytest.mark.parametrize("seed", range(10))
def test_the_specification_keeps_the_token_level_top_keys(seed):
    """Each kept candidate key scores at least as high as each candidate key left out, exactly
    ``min(remaining, candidates)`` are kept, and a cut chunk keeps its latest keys."""
    gen = torch.Generator().manual_seed(seed)
    length, num_chunks = 90, 12
    lo, hi = random_chunks(gen, 1, length, num_chunks, empty=0.1)
    scores = random_scores(gen, (1, 1, 1, num_chunks), ties=seed % 2 == 1)
    first, last = (int(x) for x in torch.sort(torch.randint(0, length, (2,), generator=gen))[0])
    remaining = int(torch.randint(0, length, (1,), generator=gen))
    regions = FillRegions(0, 0, last, last, first, last, remaining)
    spans = naive_fill(scores, lo, hi, regions)[0][0][0]
    kept = torch.zeros(length, dtype=torch.bool)
    for start, end in spans[1:-1]:
        assert first <= start < end <= last
        kept[start:end] = True
    key_score = torch.full((length,), float("nan"))
    for c in range(num_chunks):
        key_score[max(int(lo[0, c]), first) : min(int(hi[0, c]), last)] = scores[0, 0, 0, c]
    candidate = ~torch.isnan(key_score)
    assert int(kept.sum()) == min(remaining, int(candidate.sum()))
    if bool((candidate & ~kept).any()) and bool(kept.any()):
        assert float(key_score[kept].min()) >= float(key_score[candidate & ~kept].max())
    for c in range(num_chunks):
        part = kept[max(int(lo[0, c]), first) : min(int(hi[0, c]), last)]
        if bool(part.any()):  # a chunk's kept keys are its latest ones
            assert bool(part[int(part.int().argmax()) :].all())
    assert [start for start, _ in spans[1:-1]] == sorted(start for start, _ in spans[1:-1])


@pytest.mark.parametrize("use_triton", WAYS)
def test_tiles_written_into_one_buffer_equal_one_call(rng, use_triton):
    """A prefill writes each tile of blocks into a slice of one buffer, gathering one status."""
    length, num_chunks = 157, 19
    regions = regions_of(length, length, 8, 4, 9, None, 40)
    blocks = regions.remaining.numel()
    lo, hi = random_chunks(rng, 2, length, num_chunks)
    lo, hi = lo.to(DEVICE), hi.to(DEVICE)
    regions = FillRegions(*(x.to(DEVICE) for x in regions.fields()))
    scores = torch.randn(2, 2, blocks, num_chunks, generator=rng).to(DEVICE)
    whole = greedy_fill(scores, lo, hi, regions, width=num_chunks + 2, use_triton=use_triton)
    assert whole[2] is None  # no status asked, none computed
    starts = torch.full_like(whole[0], -7)
    ends = torch.full_like(starts, -7)
    status = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    for q0 in range(0, blocks, 6):
        q1 = min(q0 + 6, blocks)
        greedy_fill(
            scores[:, :, q0:q1],
            lo,
            hi,
            regions.tile(q0, q1),
            width=num_chunks + 2,
            out=(starts[:, :, q0:q1], ends[:, :, q0:q1]),
            status=status,
            use_triton=use_triton,
        )
    assert torch.equal(starts, whole[0]) and torch.equal(ends, whole[1])
    assert status.tolist() == [0, 0]


@pytest.mark.parametrize("scoring", ["peak", "paper"])
def test_a_decode_step_fills_by_the_specification(scoring):
    """The spans of a decode session are the specification's fill of its own chunk scores."""
    import dhsa
    from dhsa.decode import DecodeSession
    from dhsa.methods.regions import last_query_regions

    gen = torch.Generator().manual_seed(3)
    config = dhsa.DHSAConfig(
        budget=60, sink=4, local=8, query_block=8, min_chunk=3, max_chunk=12, scoring=scoring
    )
    q = torch.randn(2, 4, 1, 16, generator=gen)
    k = torch.randn(2, 2, 211, 16, generator=gen)
    session = DecodeSession()
    starts, ends = session.select_spans(q, k, config, layer=0)
    chunks = session._chunks[(0, None)]
    regions = last_query_regions(211, config.sink, config.local).fill_regions(config.budget)
    scores = chunks.slot_scores(q, regions, k=k)
    spec = naive_fill(scores[:, :, None], chunks.lo, chunks.hi, regions)
    want = padded(spec, starts.shape[-1])
    assert torch.equal(starts, want[0][:, :, 0]) and torch.equal(ends, want[1][:, :, 0])
    assert int((ends - starts).sum(-1).min()) == config.budget


def test_decode_regions_are_the_prefill_regions_of_one_query():
    from dhsa.methods.regions import last_query_regions

    for length in (1, 2, 5, 17, 64, 65, 300):
        for sink, local in ((0, 0), (4, 8), (64, 128), (3, 400)):
            tensors = block_regions(Geometry(1, 1, 1, length, 1), sink, local, "cpu")
            ints = last_query_regions(length, sink, local)
            for name in ("sink_start", "sink_end", "window_start", "block_end", "candidate_start"):
                assert [int(getattr(tensors, name)[0])] == [getattr(ints, name)], name
            assert int(tensors.fill_regions(50).remaining[0]) == ints.fill_regions(50).remaining


@pytest.mark.parametrize("use_triton", WAYS)
@pytest.mark.parametrize("seed", range(3))
def test_a_list_of_each_rows_best_chunks_fills_as_the_whole_row(seed, use_triton):
    """Per-row bounds ``[B, Hkv, T, K]``: each row's best chunks holding its room (in position
    order, ``-1`` padded, gathered with their scores) give the spans of the whole row's fill."""
    from dhsa.methods.greedy import listed_chunks

    gen = torch.Generator().manual_seed(seed)
    batch, kv_heads, length, num_chunks = 2, 2, 301, 37
    regions = regions_of(length, length, 16, 8, 16, None, 96)
    tiles = regions.remaining.numel()
    lo, hi = random_chunks(gen, batch, length, num_chunks, empty=0.1)
    scores = torch.randn(batch, kv_heads, tiles, num_chunks, generator=gen)
    width = num_chunks + 2
    want = run(scores, lo, hi, regions, width, use_triton)
    # Each row's chunks by score, kept while the better ones hold less than its room + 10 keys.
    start = torch.maximum(lo[:, None, None, :], regions.candidate_start[:, None])
    size = (torch.minimum(hi[:, None, None, :], regions.candidate_end[:, None]) - start).clamp(0)
    order = scores.argsort(dim=-1, descending=True)
    ranked = size.expand_as(scores).gather(-1, order)
    keep = (ranked.cumsum(-1) - ranked) < regions.remaining[:, None] + 10
    listed = torch.where(keep, order, num_chunks).sort(dim=-1).values
    listed = torch.where(listed < num_chunks, listed, -1).int()
    assert (listed < 0).any() and (listed >= 0).any()
    got = run(*listed_chunks(scores, lo, hi, listed), regions, width, use_triton)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[2].tolist() == [0, 0]

"""Stage 2 of the ``peak`` scoring as the Triton kernel against its tensor-operation form.

Without a GPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, set here
before triton is imported), as in ``test_triton.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from dhsa.layout import Geometry  # noqa: E402
from dhsa.methods.regions import block_regions  # noqa: E402
from dhsa.methods.scoring import chunk_peaks, head_block_means, peak_scores  # noqa: E402

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from dhsa.fill.triton_fill import order_key  # noqa: E402
from dhsa.methods.triton_peak import _top_cover  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The models' head sizes (smollm2 64, llama 128, gemma3 256) where the kernels really compile: a
# tile too large for the device's shared memory fails only there, not under the interpreter.
HEAD_SIZES = [16, 64, 128, 256] if torch.cuda.is_available() else [16]


def random_lists(gen, batch, kv_heads, rows, chunks, length):
    """Per row ``chunks`` random chunk lengths (some empty) laid end to end: ``offset, ends``,
    the chunks' first keys ``start`` (some reaching past either end of the keys) and the width."""
    size = torch.randint(0, 9, (batch, kv_heads, rows, chunks), generator=gen)
    size[..., -2:] = 0  # unchosen tail candidates
    start = torch.randint(-2, length, (batch, kv_heads, rows, chunks), generator=gen)
    ends = size.cumsum(-1)
    return start, size, start - (ends - size), ends, int(ends[..., -1].max())


def float64_peaks(head_q, lse, k, start, size, scale):
    """The definition, one chunk at a time in float64."""
    batch, kv_heads, group, rows, _ = head_q.shape
    out = torch.full(start.shape, -torch.inf, dtype=torch.float64)
    for b, h, t, j in torch.cartesian_prod(*(torch.arange(n) for n in start.shape)).tolist():
        s, n = int(start[b, h, t, j]), int(size[b, h, t, j])
        for p in range(s, s + n):
            key = k[b, h, min(max(p, 0), k.shape[2] - 1)].double()
            logits = scale * (head_q[b, h, :, t].double() @ key) - lse[b, h, :, t].double()
            out[b, h, t, j] = max(out[b, h, t, j], logits.max())
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("group", "dim", "chunks"),
    [(1, 16, 5), (3, 32, 23), (4, 16, 40)] + [(4, dim, 23) for dim in HEAD_SIZES[1:]],
)
def test_chunk_peaks_match_the_definition(rng, dtype, group, dim, chunks):
    batch, kv_heads, rows, length = 2, 2, 3, 57
    head_q = (torch.randn(batch, kv_heads, group, rows, dim, generator=rng) / dim**0.25).to(dtype)
    lse = torch.randn(batch, kv_heads, group, rows, generator=rng)
    k = (torch.randn(batch, kv_heads, length, dim, generator=rng) / dim**0.25).to(dtype)
    start, size, offset, ends, width = random_lists(rng, batch, kv_heads, rows, chunks, length)
    want = float64_peaks(head_q, lse, k, start, size, 0.3)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for use_triton in (False, True):
        on = [t.to(DEVICE) for t in (head_q, lse, k, offset, ends)]
        got = chunk_peaks(*on, width + 5, 0.3, use_triton).cpu().double()
        assert torch.equal(got.isinf(), want.isinf()), use_triton
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_chunk_peaks_read_a_sliced_cache(rng):
    """Keys that are a slice of a longer cache (strided batch and head) are read in place."""
    cache = torch.randn(2, 3, 40, 16, generator=rng)
    k = cache[:, :, :29]
    head_q = torch.randn(2, 3, 2, 4, 16, generator=rng)
    lse = torch.randn(2, 3, 2, 4, generator=rng)
    _, _, offset, ends, width = random_lists(rng, 2, 3, 4, 11, 29)
    want = chunk_peaks(head_q, lse, k.contiguous(), offset, ends, width, 0.25, False)
    on = [t.to(DEVICE) for t in (head_q, lse, k, offset, ends)]
    got = chunk_peaks(*on, width, 0.25, True)
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_peak_scores_with_the_kernel_equal_tensor_operations(seed):
    gen = torch.Generator().manual_seed(seed)
    # 26 query blocks: enough rows for stage 1's kernel (STAGE1_KERNEL_ROWS) as well.
    batch, kv_heads, group, dim, length, block = 2, 2, 2, 16, 403, 16
    q = torch.randn(batch, kv_heads * group, length, dim, generator=gen)
    k = torch.randn(batch, kv_heads, length, dim, generator=gen)
    cuts = torch.sort(torch.randperm(length - 1, generator=gen)[:40] + 1).values
    edges = torch.cat([torch.tensor([0]), cuts, torch.tensor([length])])
    lo, hi = edges[:-1].expand(batch, -1), edges[1:].expand(batch, -1)
    means = torch.stack([k[:, :, a:b].mean(2) for a, b in zip(lo[0], hi[0], strict=True)], dim=2)
    regions = block_regions(Geometry(1, 1, length, length, block), 4, 8, torch.device("cpu"))
    head_q = head_block_means(q, kv_heads, block)
    args = (lo, hi, regions.lowest, regions.block_end, regions.candidate_start)
    kwargs = dict(scale=0.25, room=40, shortest=int((hi - lo).min()), longest=int((hi - lo).max()))
    want = peak_scores(head_q, k, means, *args, regions.candidate_end, **kwargs, use_triton=False)
    on = [t.to(DEVICE) for t in (head_q, k, means, *args, regions.candidate_end)]
    got = peak_scores(*on, **kwargs, use_triton=True)
    assert torch.isfinite(want).any()
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dim", HEAD_SIZES)
@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize(("group", "rows", "num_chunks"), [(1, 5, 7), (3, 9, 40), (4, 33, 70)])
def test_chunk_mass_matches_tensor_operations(rng, group, rows, num_chunks, shuffled, dim):
    """Stage 1 in one launch: per-head lse over the visible chunks and the group's summed mass,
    rows seeing different chunk ranges (some none), padding chunks of length 0, and chunks out
    of position order (as a decode table's slots are)."""
    from dhsa.methods.triton_peak import chunk_mass

    batch, kv_heads, length = 2, 2, 300
    head_q = torch.randn(batch, kv_heads, group, rows, dim, generator=rng) / dim**0.25
    means = torch.randn(batch, kv_heads, num_chunks, dim, generator=rng)
    cuts = torch.sort(torch.randint(0, length, (batch, num_chunks + 1), generator=rng)).values
    lo, hi = cuts[:, :-1], cuts[:, 1:]
    if shuffled:
        order = torch.randperm(num_chunks, generator=rng)
        lo, hi = lo[:, order], hi[:, order]
    start = torch.randint(0, length, (rows,), generator=rng)
    end = start + torch.randint(0, length, (rows,), generator=rng)
    end[0] = start[0]  # a row that sees nothing
    scale = 0.3
    lengths = (hi - lo).clamp(min=1).float()[:, None, None, None, :]
    visible = (lo[:, None, :] < end[None, :, None]) & (hi[:, None, :] > start[None, :, None])
    visible = (visible & (hi > lo)[:, None, :])[:, None, None]  # [B, 1, 1, T, N]
    coarse = scale * head_q.double() @ means[:, :, None].double().transpose(-1, -2)
    coarse = coarse.masked_fill(~visible, -torch.inf)
    want_lse = torch.logsumexp(coarse + lengths.double().log(), dim=-1)
    want = (coarse - want_lse[..., None]).exp().nan_to_num(0.0).sum(dim=2)
    on = [t.to(DEVICE) for t in (head_q, means, lo, hi, start, end)]
    mass, lse = chunk_mass(*on, scale=scale)
    torch.testing.assert_close(lse.cpu().double(), want_lse, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mass.cpu().double(), want, atol=1e-5, rtol=1e-4)
    assert torch.equal(mass.cpu() > 0, want > 0)


@pytest.mark.parametrize("use_triton", [False, True])
def test_a_prior_on_one_row_leaves_the_other_rows_alone(use_triton):
    """The prompt-end probe's prior rides on the last row of a tile (``-inf`` on the others):
    every other row scores exactly as without a prior, and the last row as on its own."""
    gen = torch.Generator().manual_seed(5)
    batch, kv_heads, group, dim, length, block = 1, 2, 2, 16, 403, 16
    q = torch.randn(batch, kv_heads * group, length, dim, generator=gen)
    k = torch.randn(batch, kv_heads, length, dim, generator=gen)
    cuts = torch.sort(torch.randperm(length - 1, generator=gen)[:40] + 1).values
    edges = torch.cat([torch.tensor([0]), cuts, torch.tensor([length])])
    lo, hi = edges[:-1].expand(batch, -1), edges[1:].expand(batch, -1)
    means = torch.stack([k[:, :, a:b].mean(2) for a, b in zip(lo[0], hi[0], strict=True)], dim=2)
    regions = block_regions(Geometry(1, 1, length, length, block), 4, 8, torch.device("cpu"))
    head_q = head_block_means(q, kv_heads, block)
    rows = head_q.shape[3]
    prior = torch.full((batch, kv_heads, rows, lo.shape[1]), -torch.inf)
    prior[:, :, -1] = torch.randn(batch, kv_heads, lo.shape[1], generator=gen) - 6.0
    bounds = (regions.lowest, regions.block_end, regions.candidate_start, regions.candidate_end)
    on = [t.to(DEVICE) for t in (head_q, k, means, lo, hi, *bounds, prior)]
    kwargs = dict(scale=0.25, room=40, shortest=int((hi - lo).min()), longest=int((hi - lo).max()))
    kwargs.update(exact_prior=True, use_triton=use_triton)
    together = peak_scores(*on[:-1], prior=on[-1], **kwargs).cpu()
    alone = peak_scores(*on[:-1], **kwargs).cpu()
    assert torch.equal(together[:, :, :-1], alone[:, :, :-1])
    last = [on[0][:, :, :, -1:], *on[1:5], *(b[-1:] for b in on[5:9])]
    own = peak_scores(*last, prior=on[-1][:, :, -1:], **kwargs).cpu()
    torch.testing.assert_close(together[:, :, -1:], own, atol=1e-4, rtol=1e-5)
    assert not torch.equal(together[:, :, -1:], alone[:, :, -1:])


def chunked_keys(gen, batch, kv_heads, length, dim, counts):
    """Keys and per batch ``counts[b]`` random chunks, the batch padded with empty chunks at
    ``length`` to the largest count: ``k, lo, hi, means`` (float32 mean key, 0 when empty)."""
    k = torch.randn(batch, kv_heads, length, dim, generator=gen)
    most = max(counts)
    lo = torch.full((batch, most), length)
    hi = torch.full((batch, most), length)
    for b, n in enumerate(counts):
        cuts = torch.sort(torch.randperm(length - 1, generator=gen)[: n - 1] + 1).values
        edges = torch.cat([torch.tensor([0]), cuts, torch.tensor([length])])
        lo[b, :n], hi[b, :n] = edges[:-1], edges[1:]
    means = torch.zeros(batch, kv_heads, most, dim)
    for b in range(batch):
        for c in range(most):
            if hi[b, c] > lo[b, c]:
                means[b, :, c] = k[b, :, lo[b, c] : hi[b, c]].mean(1)
    return k, lo, hi, means


def float64_peak_scores(head_q, k, means, lo, hi, regions, *, scale, room, prior, factor):
    """The ``peak`` rule row by row in float64 (``exact_prior``): stage 1's masses, the prior's
    lead chunks, the candidates covering ``factor * room`` keys (``room`` more with a prior),
    their best keys; ``log(mass) - 1e4`` for the other candidates, ``-inf`` outside."""
    batch, kv_heads, group, rows, _ = head_q.shape
    out = torch.full((batch, kv_heads, rows, lo.shape[1]), -torch.inf, dtype=torch.float64)
    tiny = torch.finfo(torch.float32).tiny
    for b, h, t in torch.cartesian_prod(*(torch.arange(n) for n in (batch, kv_heads, rows))):
        b, h, t = int(b), int(h), int(t)
        first, last = int(regions.candidate_start[t]), int(regions.candidate_end[t])
        see_lo, see_hi = int(regions.lowest[t]), int(regions.block_end[t])
        visible = (lo[b] < see_hi) & (hi[b] > see_lo) & (hi[b] > lo[b])
        q = head_q[b, h, :, t].double()
        logits = scale * q @ means[b, h].double().T  # [G, N]
        weighted = logits + (hi[b] - lo[b]).clamp(min=1).double().log()
        lse = torch.logsumexp(weighted.masked_fill(~visible, -torch.inf), dim=-1)  # [G]
        mass = torch.where(visible, (logits - lse[:, None]).exp(), 0.0).sum(0)
        start = torch.clamp(lo[b], min=first)
        cost = (torch.clamp(hi[b], max=last) - start).clamp(min=0)
        seen = [c for c in range(lo.shape[1]) if cost[c] > 0]
        rank = {c: float(mass[c]) for c in seen}
        cover = factor * room
        row_prior = None if prior is None else prior[b, h, t].double()
        if row_prior is not None and bool(torch.isfinite(row_prior).any()):
            before = 0
            for c in sorted(seen, key=lambda c: -float(row_prior[c])):
                if before < room and row_prior[c] > -torch.inf:
                    rank[c] += 1e6
                    before += int(cost[c])
            cover += room
        before = 0
        for c in seen:
            out[b, h, t, c] = float(torch.log(torch.clamp(mass[c], min=tiny))) - 1e4
        for c in sorted(seen, key=lambda c: -rank[c]):
            if before >= cover:
                break
            before += int(cost[c])
            keys = k[b, h, int(start[c]) : int(start[c]) + int(cost[c])].double()
            best = (scale * q @ keys.T - lse[:, None]).max()
            if row_prior is not None:
                best = torch.maximum(best, row_prior[c])
            out[b, h, t, c] = best
    return out


@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("dim", [16, 32])
@pytest.mark.parametrize("group", [1, 4])
def test_peak_scores_in_three_launches_match_both_definitions(group, dim, with_prior):
    """The Triton form (stage 1's masses, the candidates chosen by bisection, the final scores
    written by stage 2) against the tensor operations and a float64 loop: odd lengths, a short
    last query block, empty padding chunks, prior rows among rows without one."""
    gen = torch.Generator().manual_seed(100 * group + dim + with_prior)
    batch, kv_heads, length, block = 2, 2, 301, 16
    k, lo, hi, means = chunked_keys(gen, batch, kv_heads, length, dim, [37, 29])
    q = torch.randn(batch, kv_heads * group, length, dim, generator=gen)
    regions = block_regions(Geometry(1, 1, length, length, block), 4, 8, torch.device("cpu"))
    head_q = head_block_means(q, kv_heads, block)
    rows = head_q.shape[3]
    prior = None
    if with_prior:  # on the last row of batch 0 and on two rows of batch 1 (one head each)
        prior = torch.full((batch, kv_heads, rows, lo.shape[1]), -torch.inf)
        prior[0, :, -1] = torch.randn(kv_heads, lo.shape[1], generator=gen) - 6.0
        prior[1, 0, 3:5] = torch.randn(2, lo.shape[1], generator=gen) - 6.0
        prior[1, 0, 3, ::2] = -torch.inf
    bounds = (regions.lowest, regions.block_end, regions.candidate_start, regions.candidate_end)
    room = 24
    lengths = hi - lo
    shortest = int(lengths[lengths > 0].min())
    kwargs = dict(scale=0.3, room=room, shortest=shortest, longest=int(lengths.max()))
    kwargs.update(prior=prior, exact_prior=True)
    want = peak_scores(head_q, k, means, lo, hi, *bounds, **kwargs, use_triton=False)
    on = [t.to(DEVICE) for t in (head_q, k, means, lo, hi, *bounds)]
    if prior is not None:
        kwargs["prior"] = prior.to(DEVICE)
    got = peak_scores(*on, **kwargs, use_triton=True).cpu()
    exact = float64_peak_scores(
        head_q, k, means, lo, hi, regions, scale=0.3, room=room, prior=prior, factor=3
    )
    taken = (exact > -1e3) & torch.isfinite(exact)
    assert taken.any() and (torch.isfinite(exact) & ~taken).any()
    assert torch.equal(torch.isfinite(got), torch.isfinite(exact))
    assert torch.equal(got > -1e3, taken)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got.double(), exact, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("budget", "window"), [(96, None), (96, 150), (400, None)])
def test_select_with_the_three_launches_keeps_what_tensor_operations_keep(
    monkeypatch, budget, window
):
    """``dhsa.select`` (probe on the last block included) keeps the same keys whether the peak
    scores come from the Triton form or the tensor operations, also on a sliding-window layer;
    a budget covering every key keeps every causal key."""
    import dhsa
    from dhsa.methods import scoring

    gen = torch.Generator().manual_seed(budget)
    length, dim = 333, 16
    q = torch.randn(1, 4, length, dim, generator=gen)
    k = torch.randn(1, 1, length, dim, generator=gen)
    config = dhsa.DHSAConfig(
        budget=budget, sink=8, local=16, query_block=16, min_chunk=4, max_chunk=32, min_length=0
    )
    want = dhsa.select(q, k, config, sliding_window=window).to_dense_mask()
    if DEVICE.type == "cpu":  # the Triton form on CPU tensors, under the interpreter
        monkeypatch.setattr(scoring, "triton_peak_usable", lambda device, dim: True)
    got = dhsa.select(q.to(DEVICE), k.to(DEVICE), config, sliding_window=window)
    got = got.to_dense_mask().cpu()
    assert torch.equal(got, want)
    if budget >= length:
        assert torch.equal(want, torch.ones_like(want).tril(length - want.shape[-2]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("group", "dim", "probes"), [(1, 16, 5), (4, 32, 16), (4, 16, 23)])
def test_probe_token_scores_in_two_launches_match_float64(rng, dtype, group, dim, probes):
    """Every key's best log mass under the probe's exact causal attention, the lse combined over
    several key ranges (``split``), against the tensor operations in float64."""
    from dhsa.methods import triton_peak
    from dhsa.methods.scoring import probe_token_scores

    batch, kv_heads, length = 2, 2, 333
    q = torch.randn(batch, kv_heads * group, probes, dim, generator=rng).to(dtype)
    k = torch.randn(batch, kv_heads, length, dim, generator=rng).to(dtype)
    want = probe_token_scores(q.double(), k.double(), scale=0.3, use_triton=False)
    got = triton_peak.probe_token_scores(q.to(DEVICE), k.to(DEVICE), scale=0.3, split=128)
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", [16, 24])
def test_chunk_sums_in_one_launch_match_float64(rng, dtype, dim):
    """Chunk means of keys read in place (a sliced cache), chunks longer than one block of keys,
    empty padding chunks, against float64 sums."""
    from dhsa.methods.scoring import chunk_representations

    batch, kv_heads, length = 2, 3, 203
    cache = torch.randn(batch, kv_heads, length + 9, dim, generator=rng).to(dtype)
    k = cache[:, :, :length]
    cuts = torch.sort(torch.randint(0, length + 1, (batch, 15), generator=rng)).values
    bounds = torch.cat([torch.zeros(batch, 1, dtype=torch.int64), cuts], dim=1)
    bounds[:, -1] = length
    bounds[1, 7] = bounds[1, 8] = bounds[1, 6]  # empty chunks
    bounds[0, 2] = bounds[0, 1] + 70  # a chunk of more than one block of keys
    bounds[0] = torch.cummax(bounds[0], dim=0).values.clamp(max=length)
    want = torch.zeros(batch, kv_heads, bounds.shape[1] - 1, dim, dtype=torch.float64)
    for b in range(batch):
        for c in range(bounds.shape[1] - 1):
            lo, hi = int(bounds[b, c]), int(bounds[b, c + 1])
            if hi > lo:
                want[b, :, c] = k[b, :, lo:hi].double().mean(1)
    got = chunk_representations(k.to(DEVICE), bounds.to(DEVICE), "mean", use_triton=True)
    torch.testing.assert_close(got.cpu().double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_triton", [False, True])
def test_the_fill_over_the_rescored_chunks_equals_the_fill_over_every_chunk(
    monkeypatch, use_triton
):
    """``dhsa.select`` fills each block from the chunks stage 2 rescored: the same keys as a
    fill over all of the block's chunks."""
    import dhsa
    from dhsa.methods import chunked, scoring

    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, 8, 333, 16, generator=gen)
    k = torch.randn(1, 2, 333, 16, generator=gen)
    config = dhsa.DHSAConfig(
        budget=96, sink=8, local=16, query_block=16, min_chunk=4, max_chunk=32, min_length=0
    )
    if use_triton and DEVICE.type == "cpu":  # the Triton form on CPU tensors
        monkeypatch.setattr(scoring, "triton_peak_usable", lambda device, dim: True)
    q, k = q.to(DEVICE), k.to(DEVICE)
    listed = dhsa.select(q, k, config).to_dense_mask()
    tiles = chunked.peak_tiles

    def every_chunk(*args, **kwargs):
        made = tiles(*args, **kwargs)
        return lambda: ((q0, q1, scores) for q0, q1, scores, _ in made())

    monkeypatch.setattr(chunked, "peak_tiles", every_chunk)
    assert torch.equal(dhsa.select(q, k, config).to_dense_mask(), listed)


@triton.jit
def _cut_kernel(score_ptr, size_ptr, out_ptr, cover, n, BLOCK: tl.constexpr):
    c = tl.arange(0, BLOCK)
    score = tl.load(score_ptr + c, mask=c < n, other=float("-inf"))
    size = tl.load(size_ptr + c, mask=c < n, other=0)
    tl.store(out_ptr + c, _top_cover(order_key(score), size, cover).to(tl.int32), mask=c < n)


@pytest.mark.parametrize("cover", [0, 1, 17, 60, 1000])
def test_the_candidate_cut_takes_ties_in_position_order(rng, cover):
    """The in-kernel cover (``_top_cover``) on scores with many ties, sizes with zeros: chunks
    by descending score, ties in position order, while those before hold less than ``cover``."""
    n = 45
    score = torch.tensor([-1.0, 0.0, 0.5, 2.0, -0.0])[torch.randint(0, 5, (n,), generator=rng)]
    size = torch.randint(0, 6, (n,), generator=rng, dtype=torch.int32)
    out = torch.zeros(n, dtype=torch.int32, device=DEVICE)
    _cut_kernel[(1,)](score.to(DEVICE), size.to(DEVICE), out, cover, n, BLOCK=64)
    want, before = torch.zeros(n, dtype=torch.int32), 0
    for c in sorted(range(n), key=lambda c: (-float(score[c]), c)):
        if size[c] > 0 and before < cover:
            want[c], before = 1, before + int(size[c])
    assert torch.equal(out.cpu(), want)

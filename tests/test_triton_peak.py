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

from dhsa.methods.regions import block_regions  # noqa: E402
from dhsa.methods.scoring import best_key_scores, head_block_means, peak_scores  # noqa: E402

pytest.importorskip("triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def float64_best_keys(head_q, lse, k, positions, scale):
    """The definition, one slot at a time in float64."""
    batch, kv_heads, group, rows, _ = head_q.shape
    out = torch.empty(positions.shape, dtype=torch.float64)
    for b in range(batch):
        for h in range(kv_heads):
            for t in range(rows):
                for w, p in enumerate(positions[b, h, t].clamp(0, k.shape[2] - 1).tolist()):
                    logits = scale * (head_q[b, h, :, t].double() @ k[b, h, p].double())
                    out[b, h, t, w] = (logits - lse[b, h, :, t].double()).max()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("group", "dim"), [(1, 16), (3, 32), (4, 16)])
def test_best_key_scores_match_the_definition(rng, dtype, group, dim):
    batch, kv_heads, rows, width, length = 2, 2, 3, 70, 57
    head_q = torch.randn(batch, kv_heads, group, rows, dim, generator=rng).to(dtype)
    lse = torch.randn(batch, kv_heads, group, rows, generator=rng)
    k = torch.randn(batch, kv_heads, length, dim, generator=rng).to(dtype)
    # Positions past either end are clamped, as the tensor operations clamp them.
    positions = torch.randint(-3, length + 3, (batch, kv_heads, rows, width), generator=rng)
    want = float64_best_keys(head_q, lse, k, positions, 0.3)
    for use_triton in (False, True):
        got = best_key_scores(
            head_q.to(DEVICE), lse.to(DEVICE), k.to(DEVICE), positions.to(DEVICE), 0.3, use_triton
        )
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got.cpu().double(), want, atol=tol, rtol=tol)


def test_best_key_scores_read_a_sliced_cache(rng):
    """Keys that are a slice of a longer cache (strided batch and head) are read in place."""
    cache = torch.randn(2, 3, 40, 16, generator=rng)
    k = cache[:, :, :29]
    head_q = torch.randn(2, 3, 2, 4, 16, generator=rng)
    lse = torch.randn(2, 3, 2, 4, generator=rng)
    positions = torch.randint(0, 29, (2, 3, 4, 33), generator=rng)
    want = best_key_scores(head_q, lse, k.contiguous(), positions, 0.25, False)
    got = best_key_scores(
        head_q.to(DEVICE), lse.to(DEVICE), k.to(DEVICE), positions.to(DEVICE), 0.25, True
    )
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_peak_scores_with_the_kernel_equal_tensor_operations(seed):
    gen = torch.Generator().manual_seed(seed)
    batch, kv_heads, group, dim, length, block = 2, 2, 2, 16, 203, 16
    q = torch.randn(batch, kv_heads * group, length, dim, generator=gen)
    k = torch.randn(batch, kv_heads, length, dim, generator=gen)
    cuts = torch.sort(torch.randperm(length - 1, generator=gen)[:24] + 1).values
    edges = torch.cat([torch.tensor([0]), cuts, torch.tensor([length])])
    lo, hi = edges[:-1].expand(batch, -1), edges[1:].expand(batch, -1)
    means = torch.stack([k[:, :, a:b].mean(2) for a, b in zip(lo[0], hi[0], strict=True)], dim=2)
    regions = block_regions(length, length, block, 4, 8, None, torch.device("cpu"))
    head_q = head_block_means(q, kv_heads, block)
    args = (lo, hi, regions.lowest, regions.block_end, regions.candidate_start)
    kwargs = dict(scale=0.25, room=40, shortest=int((hi - lo).min()), longest=int((hi - lo).max()))
    want = peak_scores(head_q, k, means, *args, regions.candidate_end, **kwargs, use_triton=False)
    on = [t.to(DEVICE) for t in (head_q, k, means, *args, regions.candidate_end)]
    got = peak_scores(*on, **kwargs, use_triton=True)
    assert torch.isfinite(want).any()
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-5)

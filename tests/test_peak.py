"""The ``peak`` chunk scoring: its probe against loops, and the needle one head looks for."""

from __future__ import annotations

import math

import pytest
import torch

import dhsa
from dhsa.decode import DecodeSession
from dhsa.methods.scoring import probe_token_scores


def test_probe_token_scores_match_loops(rng):
    q = torch.randn(2, 6, 5, 8, generator=rng)
    k = torch.randn(2, 3, 37, 8, generator=rng)
    got = probe_token_scores(q, k, scale=0.4)
    want = torch.full((2, 3, 37), -math.inf, dtype=torch.float64)
    for b in range(2):
        for h in range(6):
            for p in range(5):
                seen = 37 - 5 + p + 1
                logits = 0.4 * (k[b, h // 2, :seen].double() @ q[b, h, p].double())
                mass = logits.log_softmax(-1)
                want[b, h // 2, :seen] = torch.maximum(want[b, h // 2, :seen], mass)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def planted(rng, length=640, at=203, dim=32):
    """Keys with one needle key at ``at`` that only head 3 of the group's last queries seek."""
    q = torch.randn(1, 4, length, dim, generator=rng)
    k = torch.randn(1, 1, length, dim, generator=rng)
    needle = torch.randn(dim, generator=rng)
    needle = 4.0 * needle / needle.norm()
    k[0, 0, at] = needle
    q[0, 3, -16:] = 2.0 * needle + 0.1 * torch.randn(16, dim, generator=rng)
    return q, k


CONFIG = dhsa.DHSAConfig(
    budget=96, sink=8, local=16, query_block=16, min_chunk=4, max_chunk=32, min_length=0
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_last_block_keeps_the_key_one_head_seeks(seed):
    rng = torch.Generator().manual_seed(seed)
    q, k = planted(rng)
    layout = dhsa.select(q, k, CONFIG)
    spans = layout.spans(0, 0, layout.num_q_blocks - 1)
    assert any(s <= 203 < e for s, e in spans), spans


def test_decode_candidates_start_from_the_prompt_end(rng):
    q, k = planted(rng)
    session = DecodeSession()
    session.remember_probe(0, None, q[:, :, -16:])
    step = torch.randn(1, 4, 1, 32, generator=rng)
    session.select_spans(step, k, CONFIG, layer=0, scale=32**-0.5)
    chunks = session._chunks[(0, None)]
    best = int(chunks.prior[0, 0].argmax())
    assert int(chunks.lo[0, best]) <= 203 < int(chunks.hi[0, best])

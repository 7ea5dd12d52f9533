"""The fused decode step against the decode session it replaces: after every step the same chunk
table and tracker state, the same spans, the same attention output; dense at a covering budget;
on CUDA a replay from a CUDA graph and no synchronization.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set here before
triton is imported), on small shapes.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.overrides import TorchFunctionMode

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import dhsa  # noqa: E402
from dhsa.decode import DecodeSession  # noqa: E402
from dhsa.decode_step import DecodeStep  # noqa: E402
from dhsa.kernels import attend_decode  # noqa: E402

pytest.importorskip("triton")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONFIG = dhsa.DHSAConfig(
    budget=32, sink=4, local=8, query_block=8, min_chunk=4, max_chunk=16, chunk_size=8
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def segmented(gen, batch, kv_heads, length, dim, lo=3, hi=20):
    """Keys of constant random directions over segments of ``lo..hi`` tokens plus noise: the
    similarity chunker closes chunks at their edges as well as at the maximum length."""
    keys = torch.empty(batch, kv_heads, length, dim)
    for b in range(batch):
        pos = 0
        while pos < length:
            n = int(torch.randint(lo, hi + 1, (1,), generator=gen))
            keys[b, :, pos : pos + n] = torch.randn(kv_heads, 1, dim, generator=gen)
            pos += n
    return keys + 0.3 * torch.randn(keys.shape, generator=gen)


def inputs(batch, q_heads, kv_heads, dim, length, seed):
    gen = torch.Generator().manual_seed(seed)
    k = segmented(gen, batch, kv_heads, length, dim)
    v = torch.randn(batch, kv_heads, length, dim, generator=gen)
    q = torch.randn(batch, q_heads, length, dim, generator=gen)
    return (x.to(DEVICE) for x in (q, k, v))


def assert_same_state(step: DecodeStep, session: DecodeSession):
    """The fused state equals the session's chunk table and tracker, slot for slot."""
    chunks = session.chunks(0)
    tracker = chunks.tracker
    assert step.lengths.tolist() == [chunks.length] * step.lengths.shape[0]
    assert step.count.tolist() == chunks.count.tolist()
    assert step.tracker_count.tolist() == tracker.count.tolist()
    assert step.last.tolist() == tracker.last.tolist()
    for b, n in enumerate(chunks.count.tolist()):
        assert step.lo[b, :n].tolist() == chunks.lo[b, :n].tolist()
        assert step.hi[b, :n].tolist() == chunks.hi[b, :n].tolist()
        assert step.bounds[b, : n + 1].tolist() == tracker.bounds[b, : n + 1].tolist()
        assert int(step.lo[b, -1]) == int(chunks.lo[b, -1])
        torch.testing.assert_close(step.table[b, :, :n], chunks.table[b, :, :n])
        torch.testing.assert_close(step.table[b, :, -1], chunks.table[b, :, -1])
        assert not step.table[b, :, n:-1].any()
        if chunks.prior is not None:
            assert torch.equal(step.prior[b, :, :n], chunks.prior[b, :, :n])
            assert torch.equal(step.prior[b, :, -1], chunks.prior[b, :, -1])
    if tracker.config.chunker == "similarity":
        scored = tracker.scored
        torch.testing.assert_close(
            step.cut_scores[:, :scored], tracker.scores[:, :scored], rtol=1e-5, atol=1e-6
        )
        assert not step.cut_scores[:, scored:].any()
        assert step.eligible.tolist() == [tracker.eligible] * step.eligible.shape[0]
        torch.testing.assert_close(step.stats[:, 0], tracker.total, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(step.stats[:, 1], tracker.squares, rtol=1e-5, atol=1e-6)


def span_sets(starts, ends):
    """Per row, the non-empty spans as a list of ``(start, end)``."""
    rows = []
    for s_row, e_row in zip(
        starts.flatten(0, -2).tolist(), ends.flatten(0, -2).tolist(), strict=True
    ):
        rows.append([(s, e) for s, e in zip(s_row, e_row, strict=True) if e > s])
    return rows


def run_both(config, *, batch, q_heads, kv_heads, dim, prompt, steps, seed, prior):
    """Step a session and a fused step side by side; check state, spans and outputs each step."""
    q, k, v = inputs(batch, q_heads, kv_heads, dim, prompt + steps + 5, seed)
    session = DecodeSession()
    if prior:
        session.remember_probe(0, None, q[:, :, prompt - 6 : prompt])
    session.select_spans(q[:, :, prompt - 1 : prompt], k[:, :, :prompt], config, layer=0)
    step = session.fused_step(k, v, config, layer=0)
    closed = step.count.clone()
    for n in range(prompt + 1, prompt + steps + 1):
        query, keys, values = q[:, :, n - 1 : n], k[:, :, :n], v[:, :, :n]
        step.starts.fill_(-7)  # poisoned: the step must write every span
        out = step.step(query, k, v)
        starts, ends = session.select_spans(query, keys, config, layer=0)
        assert_same_state(step, session)
        assert span_sets(*step.spans()) == span_sets(starts, ends)
        expected = attend_decode(query, keys, values, starts, ends, backend="torch")
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert bool((step.count > closed).all()), "no chunk closed while stepping"
    return step


@pytest.mark.parametrize(
    "batch,q_heads,kv_heads,dim,prompt,seed",
    [(2, 8, 2, 16, 141, 0), (2, 2, 2, 32, 127, 1)],
)
@pytest.mark.parametrize("scoring", ["peak", "paper"])
def test_fused_steps_equal_the_session(batch, q_heads, kv_heads, dim, prompt, seed, scoring):
    config = CONFIG.replace(scoring=scoring)
    run_both(
        config,
        batch=batch,
        q_heads=q_heads,
        kv_heads=kv_heads,
        dim=dim,
        prompt=prompt,
        steps=23,
        seed=seed,
        prior=False,
    )


@pytest.mark.parametrize("seed", [3])
def test_fused_peak_steps_with_a_prior_equal_the_session(seed):
    step = run_both(
        CONFIG.replace(budget=28),
        batch=2,
        q_heads=8,
        kv_heads=2,
        dim=16,
        prompt=163,
        steps=19,
        seed=seed,
        prior=True,
    )
    assert step.prior is not None


@pytest.mark.parametrize("scoring", ["peak", "paper"])
def test_fused_fixed_chunker_steps_equal_the_session(scoring):
    config = CONFIG.replace(chunker="fixed", scoring=scoring)
    run_both(
        config, batch=2, q_heads=4, kv_heads=2, dim=16, prompt=37, steps=21, seed=5, prior=False
    )


def test_fused_step_at_a_covering_budget_is_dense():
    config = CONFIG.replace(budget=4096)
    q, k, v = inputs(2, 8, 2, 16, 120, seed=6)
    step = DecodeStep.start(k, v, 73, config)
    for n in range(74, 100):
        query = q[:, :, n - 1 : n]
        out = step.step(query, k, v)
        dense = dhsa.dense_attention(query, k[:, :, :n], v[:, :, :n])
        torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


class HostReads(TorchFunctionMode):
    """Counts tensor calls that wait for the device (as in test_decode_sync.py)."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "equal", "nonzero"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("scoring,launches", [("peak", 7), ("paper", 5)])
def test_a_step_launches_the_same_kernels_at_any_length(monkeypatch, scoring, launches):
    import triton.runtime.interpreter
    import triton.runtime.jit

    grids = []
    for cls in (triton.runtime.jit.KernelInterface, triton.runtime.interpreter.InterpretedFunction):
        original = cls.__dict__.get("__getitem__")
        if original is not None:

            def counted(self, grid, original=original):
                grids.append((getattr(self, "__name__", ""), grid))
                return original(self, grid)

            monkeypatch.setattr(cls, "__getitem__", counted)
    q, k, v = inputs(1, 4, 2, 16, 200, seed=8)
    step = DecodeStep.start(k, v, 120, CONFIG.replace(scoring=scoring))
    closed = step.count.clone()
    per_step = []
    for n in range(121, 150):
        grids.clear()
        with HostReads() as reads:
            step.step(q[:, :, n - 1 : n], k, v)
        assert not reads.calls, f"step to {n} keys read {reads.calls} back"
        per_step.append(list(grids))
    assert bool((step.count > closed).all()), "no chunk closed while stepping"
    assert len(per_step[0]) == launches
    assert all(launched == per_step[0] for launched in per_step)


def test_fused_step_checks_its_inputs():
    q, k, v = inputs(1, 4, 2, 16, 80, seed=7)
    with pytest.raises(ValueError, match="chunkers"):
        DecodeStep.start(k, v, 40, CONFIG.replace(chunker="learned", predictor="none.pt"))
    step = DecodeStep.start(k, v, 40, CONFIG)
    with pytest.raises(ValueError, match="static cache"):
        step.step(q[:, :, 40:41], k.clone(), v)
    with pytest.raises(ValueError, match="static cache"):
        DecodeStep.start(k, v, 80, CONFIG)


@needs_cuda
@pytest.mark.parametrize("scoring", ["peak", "paper"])
def test_cuda_graph_replay_equals_eager_steps(scoring):
    """One captured step replayed gives what eager steps give, and never synchronizes."""
    config = dhsa.DHSAConfig(budget=512, scoring=scoring)
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (2, 2, 6000, 64)
    k = torch.randn(shape, device="cuda", generator=gen, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(2, 8, 1, 64, device="cuda", generator=gen, dtype=torch.bfloat16)
    eager = DecodeStep.start(k, v, 4000, config, probe=q if scoring == "peak" else None)
    graphed = DecodeStep.start(k, v, 4000, config, probe=q if scoring == "peak" else None)
    out = torch.empty_like(q)
    graphed.step(q, k, v, out)  # compiles the kernels
    eager.step(q, k, v)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        graphed.step(q, k, v, out)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(300):  # chunks close on the way
            graph.replay()
            expected = eager.step(q, k, v)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
    assert torch.equal(graphed.count, eager.count) and bool((eager.count > 0).all())
    assert torch.equal(graphed.starts, eager.starts)
    assert graphed.lengths.tolist() == [4301, 4301]

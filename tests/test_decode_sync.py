"""A decode step's selection state stays on the device: no reads back to the host, the same
operations at every context length, and the state recomputation gives."""

from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import dhsa
from dhsa.decode import DecodeSession
from dhsa.methods.scoring import chunk_representations

# Tensor calls that wait for the device (or give data-dependent shapes, which do too).
READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "equal", "nonzero"}
CONFIG = dhsa.DHSAConfig(budget=64, sink=4, local=8, query_block=8, min_chunk=4, max_chunk=16)


class DeviceReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


class Operations(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def qk(length, seed=0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, length, 16, generator=gen), torch.randn(
        batch, 2, length, 16, generator=gen
    )


@pytest.mark.parametrize("chunker", ["similarity", "fixed"])
@pytest.mark.parametrize("scoring", ["peak", "paper"])
def test_steps_on_a_static_cache_read_nothing_back(chunker, scoring):
    config = CONFIG.replace(chunker=chunker, chunk_size=8, scoring=scoring)
    q, cache = qk(400)  # one tensor, cut to the written length each step: a static cache
    session = DecodeSession()
    session.select_spans(q[:, :, 199:200], cache[:, :, :200], config, layer=0)
    for n in range(201, 320):
        with DeviceReads() as reads:
            session.select_spans(q[:, :, n - 1 : n], cache[:, :, :n], config, layer=0)
        assert not reads.calls, f"step to {n} keys read {dict(reads.calls)} back"
    chunks = session._chunks[(0, None)]
    assert int(chunks.count.min()) > 200 // config.max_chunk, "no chunk closed while stepping"


def test_a_new_key_tensor_is_checked_with_one_read():
    q, k = qk(300)
    session = DecodeSession()
    session.select_spans(q[:, :, 199:200], k[:, :, :200].clone(), CONFIG, layer=0)
    for n in range(201, 230):
        with DeviceReads() as reads:  # a dynamic cache: a new tensor every step
            session.select_spans(q[:, :, n - 1 : n], k[:, :, :n].clone(), CONFIG, layer=0)
        assert reads.calls == {"equal": 1}


def test_a_step_runs_the_same_operations_at_any_length():
    q, cache = qk(2400, batch=1)
    session = DecodeSession()
    session.select_spans(q[:, :, 199:200], cache[:, :, :200], CONFIG, layer=0)
    counts = {}
    for n in range(201, 2400):
        with Operations() as ops:
            session.select_spans(q[:, :, n - 1 : n], cache[:, :, :n], CONFIG, layer=0)
        counts[n] = ops.count
    short = Counter(counts[n] for n in range(201, 500)).most_common(1)[0]
    long = Counter(counts[n] for n in range(2100, 2400)).most_common(1)[0]
    assert short[0] == long[0]
    # Only the rare steps that grow a buffer (capacity doubles) run more.
    assert sum(c != short[0] for c in counts.values()) < 40


@pytest.mark.parametrize("norm", ["sqrt", "mean"])
def test_stepped_state_equals_a_rebuild_from_its_boundaries(norm):
    q, cache = qk(500)
    session = DecodeSession()
    session.select_spans(q[:, :, 149:150], cache[:, :, :150], CONFIG, layer=0, norm=norm)
    for n in range(151, 480):
        session.select_spans(q[:, :, n - 1 : n], cache[:, :, :n], CONFIG, layer=0, norm=norm)
    chunks, keys = session._chunks[(0, None)], cache[:, :, :479]
    bounds = session.boundaries(0)
    closed = [len(row) - 1 for row in session._trackers[("shared", None)].closed]
    assert chunks.count.tolist() == closed
    reps = chunk_representations(keys, bounds, norm)
    for b, n in enumerate(closed):
        torch.testing.assert_close(chunks.table[b, :, :n], reps[b, :, :n], rtol=1e-5, atol=1e-5)
        assert not chunks.table[b, :, n:-1].any()
        assert chunks.lo[b, :n].tolist() == bounds[b, :n].tolist()
        assert chunks.hi[b, :n].tolist() == bounds[b, 1 : n + 1].tolist()
        tail = keys[b, :, bounds[b, n] :].sum(dim=1)
        torch.testing.assert_close(chunks.table[b, :, -1], tail, rtol=1e-5, atol=1e-5)
        assert int(chunks.lo[b, -1]) == int(bounds[b, n])


def test_torch_decode_attention_within_the_budget_reads_nothing_back():
    q, k = qk(300)
    v = torch.randn_like(k)
    starts, ends = DecodeSession().select_spans(q[:, :, -1:], k, CONFIG, layer=0)
    measured = dhsa.kernels.attend_decode(q[:, :, -1:], k, v, starts, ends, backend="torch")
    with DeviceReads() as reads:
        bounded = dhsa.kernels.attend_decode(
            q[:, :, -1:], k, v, starts, ends, backend="torch", max_keys=CONFIG.budget
        )
    assert not reads.calls
    torch.testing.assert_close(bounded, measured, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (sync debug mode)")
@pytest.mark.parametrize("scoring", ["peak", "paper"])
def test_cuda_steps_on_a_static_cache_never_synchronize(scoring):
    """CUDA's own detector: any synchronization in a step (selection and Triton attention) is an
    error."""
    config = dhsa.DHSAConfig(budget=2048, scoring=scoring)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 8, 1, 64, device="cuda", generator=gen, dtype=torch.bfloat16)
    cache = torch.randn(2, 2, 20000, 64, device="cuda", generator=gen, dtype=torch.bfloat16)
    values = torch.randn_like(cache)
    session = DecodeSession()
    for n in range(16384, 16448):  # warm-up: kernels compile, buffers grow
        session.select_spans(q, cache[:, :, :n], config, layer=0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for n in range(16448, 16600):
            keys, vals = cache[:, :, :n], values[:, :, :n]
            starts, ends = session.select_spans(q, keys, config, layer=0)
            dhsa.kernels.attend_decode(q, keys, vals, starts, ends, backend="triton")
    finally:
        torch.cuda.set_sync_debug_mode(0)

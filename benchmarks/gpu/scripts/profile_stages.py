"""Where dhsa's prefill selection spends its time on the GPU, stage by stage.

Usage (GPU machine, repository root): python3 benchmarks/gpu/scripts/profile_stages.py [LENGTH]
Times each stage of ``dhsa.select`` (boundaries, representations, the greedy fill, the kernel's
key stream) on its own with ``do_bench`` (the fill both as chosen on CUDA, by the Triton kernel,
and by the torch tensor steps), then prints the top CUDA kernels and the host time of the
greedy fill, whose many small steps may leave the GPU idle.
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "src"))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import dhsa  # noqa: E402
from dhsa.chunking import compute_boundaries  # noqa: E402
from dhsa.kernels.triton_common import key_stream  # noqa: E402
from dhsa.methods.greedy import greedy_layout  # noqa: E402
from dhsa.methods.regions import block_regions  # noqa: E402
from dhsa.methods.scoring import chunk_representations, query_block_representations  # noqa: E402

length = int(sys.argv[1]) if len(sys.argv) > 1 else 131072
torch.manual_seed(0)
q = torch.randn(1, 32, length, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16)
config = dhsa.DHSAConfig(budget=2048, min_length=0)
bounds = compute_boundaries(k, config)
regions = block_regions(length, length, config.query_block, config.sink, config.local, None, "cuda")
q_rep = query_block_representations(q, 8, config.query_block, "sqrt")
k_rep = chunk_representations(k, bounds, "sqrt")


def fill(use_triton=None):
    return greedy_layout(
        q_rep,
        k_rep,
        bounds,
        regions,
        budget=config.budget,
        q_len=length,
        k_len=length,
        query_block=config.query_block,
        sliding_window=None,
        use_triton=use_triton,
    )


layout = fill()
stages = {
    "select (all)": lambda: dhsa.select(q, k, config, method="dhsa"),
    "boundaries": lambda: compute_boundaries(k, config),
    "query reps": lambda: query_block_representations(q, 8, config.query_block, "sqrt"),
    "chunk reps": lambda: chunk_representations(k, bounds, "sqrt"),
    "greedy fill": fill,
    "torch fill": lambda: fill(use_triton=False),
    "key stream": lambda: key_stream(layout),
}
print(f"L={length}, budget 2048, {bounds.shape[-1] - 1} chunks, nnz {layout.nnz}")
for name, fn in stages.items():
    print(f"{name:14s} {do_bench(fn, rep=200):8.2f} ms", flush=True)
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(5):
    fill()
host = (time.perf_counter() - start) / 5 * 1e3
torch.cuda.synchronize()
print(f"greedy fill host time {host:.2f} ms per call (returns before the GPU finishes)")
with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
    fill()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))

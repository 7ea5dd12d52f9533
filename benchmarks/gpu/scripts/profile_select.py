"""Where prefill time goes on the GPU, and which Triton tiles are fastest.

Usage (GPU machine, repository root): python3 benchmarks/gpu/scripts/profile_select.py [LENGTH]
Prints the time of select() and attend() per method with the top CUDA kernels of select(), then
times the prefill kernel over one dhsa layout (budget 2048) for several tile shapes.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "src"))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import dhsa  # noqa: E402
from dhsa.kernels.triton_common import key_stream  # noqa: E402
from dhsa.kernels.triton_prefill import PrefillTiles, launch_prefill  # noqa: E402

length = int(sys.argv[1]) if len(sys.argv) > 1 else 131072
torch.manual_seed(0)
q = torch.randn(1, 32, length, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16)
config = dhsa.DHSAConfig(budget=2048, min_length=0)
for method in ("dhsa", "block_sparse", "streaming"):
    layout = dhsa.select(q, k, config, method=method)
    select_ms = do_bench(lambda method=method: dhsa.select(q, k, config, method=method), rep=200)
    attend_ms = do_bench(lambda layout=layout: dhsa.attend(q, k, v, layout), rep=200)
    stream_ms = do_bench(lambda layout=layout: key_stream(layout), rep=100)
    print(
        f"=== {method} L={length}: select {select_ms:.2f} ms, attend {attend_ms:.2f} ms "
        f"(key stream {stream_ms:.2f} ms)",
        flush=True,
    )
    if method != "streaming":
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            dhsa.select(q, k, config, method=method)
            torch.cuda.synchronize()
        print(
            prof.key_averages().table(
                sort_by="cuda_time_total", row_limit=12, max_name_column_width=50
            ),
            flush=True,
        )

layout = dhsa.select(q, k, config, method="dhsa")
scale = 128**-0.5
print("heads qrows block_n warps stages   ms  (dhsa layout, budget 2048)")
for heads, qrows, block_n, warps, stages in [
    (2, 64, 64, 8, 3),
    (2, 64, 128, 8, 3),
    (2, 64, 64, 4, 3),
    (2, 64, 64, 8, 4),
    (2, 64, 128, 8, 2),
    (1, 64, 64, 4, 3),
    (1, 64, 128, 4, 3),
    (4, 64, 64, 8, 2),
]:
    tiles = PrefillTiles(
        heads=heads, qrows=qrows, block_n=block_n, num_warps=warps, num_stages=stages
    )
    try:
        ms = do_bench(
            lambda tiles=tiles: launch_prefill(
                q, k, v, layout, scale=scale, softcap=None, tiles=tiles
            ),
            rep=200,
        )
        print(f"{heads:5d} {qrows:5d} {block_n:7d} {warps:5d} {stages:6d} {ms:6.2f}", flush=True)
    except Exception as error:  # a tile shape the compiler cannot fit: report and go on
        print(f"{heads:5d} {qrows:5d} {block_n:7d} {warps:5d} {stages:6d} failed: {error}"[:160])

"""Named benchmark shapes. Command-line options override any field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchPreset:
    """One benchmark grid: every contender at every length and budget."""

    lengths: tuple[int, ...]
    budgets: tuple[int, ...]
    contenders: tuple[str, ...]
    batch: int = 1
    q_heads: int = 8
    kv_heads: int = 2
    head_dim: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    repeats: int = 3
    warmup: int = 1
    batches: tuple[int, ...] = (1,)  # `dhsa bench --decode`'s batch sizes


PRESETS: dict[str, BenchPreset] = {
    # The README's first command: a minute on a laptop CPU, no download.
    "quick": BenchPreset(
        lengths=(2048, 4096, 8192),
        budgets=(1024,),
        contenders=("dense", "dhsa", "block_sparse", "streaming"),
    ),
    # The CPU scaling record of benchmarks/cpu: 4K..32K, Hq=8, Hkv=2, D=64, budget 2048.
    "cpu": BenchPreset(
        lengths=(4096, 8192, 16384, 32768),
        budgets=(2048,),
        contenders=("dense", "dhsa", "block_sparse", "streaming"),
    ),
    # The GPU grid of the kernel issue: 8K..128K, Hq=32, Hkv=8, D=128, bf16; dense SDPA with each
    # of its CUDA kernels (the fastest is the reference), FlexAttention given dhsa's selection and
    # FlexAttention on a random block mask of the same density (the kernel anchor).
    "gpu": BenchPreset(
        lengths=(8192, 16384, 32768, 65536, 131072),
        budgets=(1024, 2048, 4096),
        contenders=(
            "dense",
            "dense_cudnn",
            "dense_flash",
            "dhsa",
            "flex_dhsa",
            "flex_random",
            "block_sparse",
            "streaming",
        ),
        q_heads=32,
        kv_heads=8,
        head_dim=128,
        dtype="bfloat16",
        device="cuda",
        repeats=10,
        warmup=3,
    ),
    # The decode grid of the decode issue: one layer's step at 32K and 128K keys, batch 1, 8 and 32,
    # against dense SDPA decode (`dhsa bench --decode --preset gpu-decode`).
    "gpu-decode": BenchPreset(
        lengths=(32768, 131072),
        budgets=(2048,),
        contenders=("dense", "dhsa"),
        q_heads=32,
        kv_heads=8,
        head_dim=128,
        dtype="bfloat16",
        device="cuda",
        repeats=20,
        warmup=3,
        batches=(1, 8, 32),
    ),
}


# Whole-model configurations (`dhsa bench --model`) by name: sizes of published models, and a
# tiny one for tests.
MODEL_SIZES = {
    "llama-3.1-8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
    ),
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131072,
    ),
}

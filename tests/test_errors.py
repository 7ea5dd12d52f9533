"""Bad input gets a clear error naming the problem."""

import pytest
import torch

import dhsa
from conftest import make_qkv
from dhsa import DHSAConfig


@pytest.fixture
def qkv(rng):
    return make_qkv(1, 4, 2, 40, 40, 16, rng)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="budget=100 is smaller than the fixed part"):
        DHSAConfig(budget=100, sink=64, local=128)
    with pytest.raises(ValueError, match="chunker='nope'"):
        DHSAConfig(chunker="nope")
    with pytest.raises(TypeError, match="DHSAConfig.sink must be an int"):
        DHSAConfig(sink=1.5)
    with pytest.raises(ValueError, match="min_chunk=200 exceeds max_chunk=128"):
        DHSAConfig(min_chunk=200)
    with pytest.raises(ValueError, match="predictor"):
        DHSAConfig(chunker="learned")
    with pytest.raises(ValueError, match="query_block=0"):
        DHSAConfig(query_block=0)
    with pytest.raises(TypeError, match="DHSAConfig.triton_fill must be a bool"):
        DHSAConfig(triton_fill="yes")
    assert DHSAConfig.preset("budget1024").budget == 1024
    with pytest.raises(ValueError, match="preset"):
        DHSAConfig.preset("huge")
    with pytest.raises(ValueError, match="budget"):
        DHSAConfig().replace(budget=10)


def test_shape_errors(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        dhsa.sparse_attention(q[:, :3], k, v)
    with pytest.raises(ValueError, match="4-D"):
        dhsa.sparse_attention(q[0], k, v)
    with pytest.raises(ValueError, match="head dims differ"):
        dhsa.sparse_attention(q[..., :8], k, v)
    with pytest.raises(ValueError, match="batch sizes differ"):
        dhsa.sparse_attention(torch.cat([q, q]), k, v)
    with pytest.raises(ValueError, match="more queries"):
        dhsa.sparse_attention(q, k[:, :, :10], v[:, :, :10])
    with pytest.raises(ValueError, match="v must match k"):
        dhsa.sparse_attention(q, k, v[:, :, :10])


def test_dtype_errors(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="floating"):
        dhsa.sparse_attention(q.long(), k, v)
    with pytest.raises(TypeError, match="share one dtype"):
        dhsa.sparse_attention(q, k.double(), v)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        dhsa.sparse_attention(q.numpy(), k, v)


def test_option_errors(qkv):
    q, k, v = qkv
    config = DHSAConfig(budget=256, min_length=0)
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        dhsa.sparse_attention(q, k, v, config, method="magic")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        dhsa.sparse_attention(q, k, v, config, backend="fast")
    with pytest.raises(ValueError, match="backend 'triton' needs CUDA"):
        dhsa.sparse_attention(q, k, v, config, backend="triton")
    with pytest.raises(ValueError, match="sliding_window must be >= 1"):
        dhsa.sparse_attention(q, k, v, config, sliding_window=0)
    with pytest.raises(ValueError, match="softcap must be a positive"):
        dhsa.sparse_attention(q, k, v, config, softcap=-1.0)
    with pytest.raises(ValueError, match="scale must be positive"):
        dhsa.sparse_attention(q, k, v, config, scale=0.0)
    with pytest.raises(TypeError, match="config must be a DHSAConfig"):
        dhsa.select(q, k, {"budget": 10})


def test_layout_must_match_tensors(qkv):
    q, k, v = qkv
    layout = dhsa.select(q, k, DHSAConfig(budget=256, min_length=0))
    with pytest.raises(ValueError, match="layout is for"):
        dhsa.attend(q[:, :, :20], k, v, layout)

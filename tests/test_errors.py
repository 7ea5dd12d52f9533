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


@pytest.mark.parametrize(
    "field,shown",
    [
        ("boundary_z", "boundary_z"),
        ("predictor_threshold", "predictor_threshold"),
        ("dash_sparsity", "dash.sparsity"),
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_config_float_fields_refuse_nan_and_inf(field, shown, value):
    with pytest.raises(ValueError, match=f"DHSAConfig.{shown}={value} is not a finite number"):
        DHSAConfig(**{field: value})


SCORED = ["dhsa", "block_sparse", "oracle_topk", "dash", "hip", "vertical_slash"]


@pytest.mark.parametrize("method", sorted(dhsa.SELECTORS))
@pytest.mark.parametrize("where", ["q", "k"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_one_non_finite_policy_for_every_method_and_path(rng, method, where, bad, backend):
    q, k, v = make_qkv(1, 4, 2, 40, 40, 16, rng)
    {"q": q, "k": k}[where][0, 1, 7, 3] = bad
    config = DHSAConfig(budget=24, sink=4, local=8, query_block=8, dash_block=8, hip_block=4)
    with pytest.raises(dhsa.NonFiniteInputError, match="NaN or Inf"):
        dhsa.sparse_attention(q, k, v, config, method=method, backend=backend)
    with pytest.raises(dhsa.NonFiniteInputError, match="NaN or Inf"):
        dhsa.select(q, k, config, method=method)


@pytest.mark.parametrize("method", SCORED)
def test_selectors_called_directly_raise_the_library_error(rng, method):
    q, k, _ = make_qkv(1, 4, 2, 40, 40, 16, rng)
    k[0, 0, 5, 0] = float("nan")
    config = DHSAConfig(budget=24, sink=4, local=8, query_block=8, dash_block=8, hip_block=4)
    selector = dhsa.SELECTORS[method]
    with pytest.raises(dhsa.NonFiniteInputError):
        selector(q, k, config, scale=0.25)


@pytest.mark.parametrize("min_length", [0, None])
def test_v_is_not_checked_and_its_nan_reaches_the_output(rng, min_length):
    q, k, v = make_qkv(1, 4, 2, 40, 40, 16, rng)
    v[0, 0, 39] = float("nan")
    config = DHSAConfig(budget=24, sink=4, local=8, query_block=8, min_length=min_length)
    out = dhsa.sparse_attention(q, k, v, config)
    assert torch.isnan(out[0, :2, 39]).all()


@pytest.mark.parametrize(
    "shape", [(0, 4, 40, 16), (1, 4, 40, 0), (1, 0, 40, 16), (1, 4, 0, 16)], ids=str
)
def test_empty_dimensions_are_named(shape):
    q = torch.randn(shape)
    k = torch.randn(shape[0], 2 if shape[1] else 1, 40, shape[3])
    with pytest.raises(ValueError, match="q has an empty dimension"):
        dhsa.sparse_attention(q, k, k)
    with pytest.raises(ValueError, match="empty dimension"):
        dhsa.select(q, k)


def test_config_as_a_dict_and_layout_none_get_type_errors(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match=r"got a dict: pass dhsa.DHSAConfig\(\*\*that_dict\)"):
        dhsa.sparse_attention(q, k, v, {"budget": 1024})
    with pytest.raises(TypeError, match="got a dict"):
        dhsa.select(q, k, {"budget": 1024})
    with pytest.raises(TypeError, match="layout must be a dhsa.Layout"):
        dhsa.attend(q, k, v, None)


def test_numpy_scales_and_softcaps_are_numbers(qkv):
    np = pytest.importorskip("numpy")
    q, k, v = qkv
    want = dhsa.dense_attention(q, k, v, scale=0.1, softcap=30.0)
    got = dhsa.dense_attention(q, k, v, scale=np.float32(0.1), softcap=np.float64(30.0))
    assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(TypeError, match="scale must be a number"):
        dhsa.dense_attention(q, k, v, scale="0.1")
    with pytest.raises(ValueError, match="scale must be a finite number"):
        dhsa.dense_attention(q, k, v, scale=np.float32("nan"))


@pytest.mark.parametrize("min_length", [0, None])
def test_sparse_attention_checks_its_inputs_once(rng, monkeypatch, min_length):
    """The public call checks; the selection and the backend it runs do not check again."""
    import dhsa.attention
    import dhsa.validation

    seen = []

    def counted(module, name):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a: seen.append(name) or original(*a))

    counted(dhsa.validation, "check_tensor")  # every shape check goes through it
    counted(dhsa.attention, "check_finite")
    q, k, v = make_qkv(1, 4, 2, 40, 40, 16, rng)
    config = DHSAConfig(budget=24, sink=4, local=8, query_block=8, min_length=min_length)
    dhsa.sparse_attention(q, k, v, config)
    assert seen == ["check_tensor"] * 3 + ["check_finite"]

"""DHSAConfig: the peer methods' parameters in records of their own, the flat keywords kept."""

import dataclasses

import pytest

from dhsa import DHSAConfig
from dhsa.config import FLAT_KEYWORDS, DashParams, HipParams, VerticalSlashParams


def test_flat_keywords_fill_the_records_and_read_back():
    config = DHSAConfig(
        dash_block=16, dash_sparsity=2.0, dash_prior=True, hip_block=8, vs_slash_share=0.25
    )
    assert config.dash == DashParams(block=16, sparsity=2.0, prior=True)
    assert config.hip == HipParams(block=8)
    assert config.vertical_slash == VerticalSlashParams(slash_share=0.25)
    assert config == DHSAConfig(
        dash=DashParams(16, 2.0, True), hip=HipParams(8), vertical_slash=VerticalSlashParams(0.25)
    )
    assert hash(config) == hash(config.replace())
    assert (config.dash_block, config.dash_sparsity, config.dash_prior) == (16, 2.0, True)
    assert (config.hip_block, config.vs_slash_share) == (8, 0.25)
    assert not set(FLAT_KEYWORDS) & {f.name for f in dataclasses.fields(DHSAConfig)}
    assert dataclasses.asdict(config)["dash"] == {"block": 16, "sparsity": 2.0, "prior": True}


def test_replace_takes_records_and_flat_keywords():
    config = DHSAConfig(dash_block=16)
    assert config.replace(dash_prior=True).dash == DashParams(block=16, prior=True)
    assert config.replace(dash=DashParams(block=8)).dash == DashParams(block=8)
    assert config.replace(budget=4096).dash == DashParams(block=16)
    assert dataclasses.replace(config, budget=4096).dash == DashParams(block=16)
    assert DHSAConfig.preset("fixed", hip_block=4).hip == HipParams(block=4)


def test_records_validate_and_conflicts_are_refused():
    with pytest.raises(ValueError, match=r"DHSAConfig.hip.block=0 is out of range: allowed in \["):
        DHSAConfig(hip=HipParams(block=0))
    with pytest.raises(ValueError, match=r"hip.block=0 is out .*\(given as hip_block=0\)"):
        DHSAConfig(hip_block=0)
    with pytest.raises(TypeError, match="DHSAConfig.dash.prior must be a bool"):
        DHSAConfig(dash_prior=1)
    with pytest.raises(ValueError, match=r"vertical_slash.slash_share=1.5 is out of range"):
        VerticalSlashParams(slash_share=1.5)
    with pytest.raises(TypeError, match="DHSAConfig.dash must be a DashParams"):
        DHSAConfig(dash={"block": 8})
    with pytest.raises(ValueError, match="got dash_block=16 and dash.block=8: pass one of them"):
        DHSAConfig(dash=DashParams(block=8), dash_block=16)
    assert DHSAConfig(dash=DashParams(block=8), dash_block=8).dash.block == 8

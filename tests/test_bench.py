"""The benchmark command: records JSON, gates speedups on correctness, reports bad input."""

import json

import pytest
import torch

from dhsa import DHSAConfig
from dhsa.bench import Contender, Prepared, register_contender
from dhsa.bench.check import spot_check
from dhsa.bench.contenders import CONTENDERS
from dhsa.cli import main


def test_bench_writes_records_plot_and_ratios(tmp_path, capsys):
    out = tmp_path / "b.json"
    code = main(
        [
            "bench",
            "--lengths",
            "512,1k",
            "--budgets",
            "256",
            "--q-heads",
            "4",
            "--kv-heads",
            "2",
            "--head-dim",
            "32",
            "--repeats",
            "1",
            "--methods",
            "dense,dhsa,streaming",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("dhsa bench")
    assert {r["length"] for r in doc["records"]} == {512, 1024}
    sparse = [r for r in doc["records"] if not r["dense"]]
    assert len(sparse) == 4
    for r in sparse:
        assert r["check_passed"] and r["check_rel_error"] < 1e-4
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["median_ms"])
        assert 0 < r["density"] <= 1 and r["select_ms"] > 0
    assert (tmp_path / "b.png").stat().st_size > 1000
    assert "speedup" in capsys.readouterr().out


def test_bench_refuses_speedup_for_wrong_output(tmp_path):
    from dhsa.bench.contenders import get_contender

    def wrong(q, k, v, config, backend):
        prepared = get_contender("streaming").prepare(q, k, v, config, backend)
        return Prepared(run=lambda: prepared.run() + 0.1, layout=prepared.layout)

    register_contender(Contender(name="wrong", dense=False, prepare=wrong))
    try:
        out = tmp_path / "w.json"
        code = main(
            [
                "bench",
                "--lengths",
                "512",
                "--budgets",
                "256",
                "--methods",
                "dense,wrong",
                "--repeats",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    finally:
        CONTENDERS.pop("wrong")
    assert code == 1
    record = [r for r in json.loads(out.read_text())["records"] if r["contender"] == "wrong"][0]
    assert not record["check_passed"] and record["speedup"] is None


def test_spot_check_detects_single_wrong_query(rng):
    q = torch.randn(1, 2, 64, 8, generator=rng)
    k = torch.randn(1, 1, 64, 8, generator=rng)
    v = torch.randn(1, 1, 64, 8, generator=rng)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert spot_check(q, k, v, out, None) < 1e-5
    out[0, 1, -1] += 1.0
    assert spot_check(q, k, v, out, None) > 0.1


def test_bench_errors_are_clear(tmp_path, capsys):
    assert main(["bench", "--methods", "dense,nope", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown bench contender 'nope'" in capsys.readouterr().err
    assert main(["bench", "--inputs", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["bench", "--q-heads", "5", "--kv-heads", "2"]) == 2
    assert "multiple" in capsys.readouterr().err


def test_bench_on_recorded_inputs(tmp_path, rng):
    path = tmp_path / "qkv.pt"
    torch.save(
        {
            "q": torch.randn(1, 2, 600, 16, generator=rng),
            "k": torch.randn(1, 1, 600, 16, generator=rng),
            "v": torch.randn(1, 1, 600, 16, generator=rng),
        },
        path,
    )
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "bench",
                "--inputs",
                str(path),
                "--lengths",
                "300,600",
                "--budgets",
                "256",
                "--methods",
                "dense,dhsa",
                "--repeats",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["inputs"] == str(path) and len(doc["records"]) == 4


def _bench_args(tmp_path, *extra):
    return [
        "bench",
        "--lengths",
        "256",
        "--budgets",
        "256",
        "--q-heads",
        "2",
        "--kv-heads",
        "1",
        "--head-dim",
        "16",
        "--repeats",
        "1",
        "--methods",
        "dense,streaming",
        "--out",
        str(tmp_path / "b.json"),
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--head-dim", "0", "--head-dim must be >= 1, got 0"),
        ("--repeats", "0", "--repeats must be >= 1, got 0"),
        ("--batch", "0", "--batch must be >= 1, got 0"),
        ("--lengths", "", "bad length '' in ''"),
        ("--lengths", "4k,,8k", "bad length '' in '4k,,8k'"),
        ("--budgets", "0", "bad budget '0'"),
        ("--budgets", "100", "budget=100 is smaller than the fixed part"),
        ("--methods", ",", "--methods must name at least one contender"),
        ("--backend", "cuda", "unknown backend 'cuda'"),
        ("--backend", "triton", "backend 'triton' needs CUDA tensors"),
        (
            "--predictor",
            "p.pt",
            "--predictor is used only with --chunker learned, not 'similarity'",
        ),
    ],
)
def test_bench_refuses_bad_options_with_a_named_message(tmp_path, capsys, option, value, message):
    args = _bench_args(tmp_path)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists(), "nothing runs before the options are checked"


def test_bench_maps_its_options_to_the_config_as_the_eval_commands_do(tmp_path, capsys):
    from dhsa.cli import build_parser
    from dhsa.eval.options import base_config

    missing = tmp_path / "missing.pt"
    assert main(_bench_args(tmp_path, "--chunker", "learned", "--predictor", str(missing))) == 2
    assert f"{str(missing)!r} not found: train one with `dhsa train-predictor" in (
        capsys.readouterr().err
    )
    args = build_parser().parse_args(_bench_args(tmp_path, "--triton-fill", "--chunker", "fixed"))
    config = base_config(args)
    assert (config.chunker, config.backend.triton_fill, config.min_length) == ("fixed", True, None)
    assert base_config(build_parser().parse_args(_bench_args(tmp_path))) == DHSAConfig()


@pytest.mark.parametrize("content", [b"not a pickle at all", b"PK\x03\x04broken"])
def test_bench_refuses_a_corrupt_inputs_file(tmp_path, capsys, content):
    bad = tmp_path / "qkv.pt"
    bad.write_bytes(content)
    assert main(_bench_args(tmp_path, "--inputs", str(bad))) == 2
    assert f"{bad} is not a torch.save file of tensors q, k, v" in capsys.readouterr().err


def test_bench_refuses_inputs_of_the_wrong_shape(tmp_path, capsys):
    path = tmp_path / "qkv.pt"
    torch.save({"q": torch.zeros(2, 256, 16), "k": torch.zeros(1, 1, 256, 16), "v": 1}, path)
    assert main(_bench_args(tmp_path, "--inputs", str(path))) == 2
    assert "q must be a non-empty [B, H, L, D] tensor, got (2, 256, 16)" in capsys.readouterr().err


def test_bench_refuses_inputs_shorter_than_the_longest_length_before_any_run(tmp_path, capsys):
    path = tmp_path / "qkv.pt"
    q, k = torch.zeros(1, 2, 300, 16), torch.zeros(1, 1, 300, 16)
    torch.save({"q": q, "k": k, "v": k}, path)
    args = _bench_args(tmp_path, "--inputs", str(path))
    args[args.index("--lengths") + 1] = "256,512"
    assert main(args) == 2
    assert "holds 300 positions, the benchmark asked for 512" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists(), "nothing runs before the inputs are checked"


def test_bench_json_records_the_budgets_actually_run(tmp_path):
    args = _bench_args(tmp_path)
    args[args.index("--budgets") + 1] = "384"
    assert main(args) == 0
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["config"]["budgets"] == [384] and doc["config"]["budget"] is None
    assert {r["budget"] for r in doc["records"] if not r["dense"]} == {384}


def test_decode_bench_json_records_the_configuration_run(tmp_path):
    args = _bench_args(tmp_path, "--decode", "--decode-tokens", "2", "--chunker", "fixed")
    args[args.index("--budgets") + 1] = "384"
    assert main(args) == 0
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["config"]["budgets"] == [384] and doc["config"]["chunker"] == "fixed"
    assert doc["backend"] == "auto"
    assert {r["budget"] for r in doc["records"] if r["contender"] != "dense"} == {384}

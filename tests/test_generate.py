"""``dhsa generate`` on tiny random models saved to disk with a character-level tokenizer."""

import json
import string

import pytest
import torch

from dhsa.bench.measure import PeakMemory
from dhsa.cli import main
from dhsa.commands.generate import greedy_timed

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"
PROMPT = (
    "The quick brown fox jumps over the lazy dog. A magic number is 4711. "
    "Pack my box with five dozen liquor jugs. What is the magic number? It is"
)
CHAT_TEMPLATE = "{% for m in messages %}<s>user: {{ m['content'] }}\n{% endfor %}assistant:"


def char_tokenizer(chat_template=None):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = tokenizers.decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        chat_template=chat_template,
    )


def save_tiny(folder, arch="llama", chat_template=None):
    common = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "gemma3":
        config = transformers.Gemma3TextConfig(
            **common,
            head_dim=16,
            sliding_window=32,
            sliding_window_pattern=2,
            query_pre_attn_scalar=16,
        )
    else:
        config = transformers.LlamaConfig(**common)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    char_tokenizer(chat_template).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text(PROMPT, encoding="utf-8")
    return path


def run_generate(model, prompt, out, *extra):
    return main(
        [
            "generate",
            "--model",
            model,
            "--prompt-file",
            str(prompt),
            "--json",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def hf_greedy(folder, text, steps, attn="sdpa"):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.eval().generate(ids, max_new_tokens=steps, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_dense_and_covering_budget_match_hf_generate(tiny_llama, prompt_file, tmp_path, capsys):
    out = tmp_path / "gen.json"
    threads = torch.get_num_threads()
    try:
        code = run_generate(
            tiny_llama,
            prompt_file,
            out,
            "--method",
            "dhsa,block_sparse",
            "--budget",
            "1024",
            "--max-new-tokens",
            "12",
            "--threads",
            "1",
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = capsys.readouterr().out
    document = json.loads(out.read_text())
    rows = document["results"]
    assert [r["name"] for r in rows] == ["dense", "dhsa@1024", "block_sparse@1024"]
    expected = hf_greedy(tiny_llama, PROMPT, 12)
    assert expected.strip(), "the reference continuation is empty: the test would prove nothing"
    for row in rows:
        assert row["continuation"] == expected
        assert f"--- {row['name']} ---\n{expected}\n" in printed
        assert row["prompt_tokens"] == len(PROMPT)
        assert row["new_tokens"] == 12 and row["decode_steps"] == 11
        assert row["prefill_ms"] > 0 and row["decode_ms"] > 0
        assert row["decode_tokens_per_s"] == pytest.approx(11 / (row["decode_ms"] / 1e3), rel=0.01)
        assert row["peak_memory_bytes"] >= row["memory_before_bytes"] > 10 * 2**20
    assert rows[0]["attention"] == "sdpa" and rows[0]["matches_dense"] is None
    assert all(r["attention"] == "dhsa" and r["matches_dense"] is True for r in rows[1:])
    assert document["command"].startswith("dhsa generate --model")
    assert document["model"] == tiny_llama and document["load_seconds"] > 0
    assert document["device"].endswith("CPU (1 threads)")
    assert f"| dhsa@1024 | {len(PROMPT)} | 12 |" in printed


def test_small_budget_runs_sparse_and_differs_from_dense(tmp_path):
    folder = str(save_tiny(tmp_path / "gemma", arch="gemma3"))
    prompt = tmp_path / "long.txt"
    prompt.write_text(" ".join([PROMPT] * 6), encoding="utf-8")
    out = tmp_path / "gen.json"
    code = run_generate(folder, prompt, out, "--budget", "256,1024", "--max-new-tokens", "6")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["dense"]["prompt_tokens"] == len(" ".join([PROMPT] * 6)) > 256
    assert rows["dhsa@1024"]["continuation"] == rows["dense"]["continuation"]
    assert rows["dhsa@1024"]["matches_dense"] is True
    # 256 keys of ~900: the selection drops keys, so the logits move; greedy text may or may not.
    assert rows["dhsa@256"]["new_tokens"] == 6


def test_greedy_timed_stops_at_end_of_sequence(tiny_llama):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids = torch.randint(3, 98, (1, 40), generator=torch.Generator().manual_seed(0))
    free = greedy_timed(model, ids, 8, stop_ids=set())
    stop = free.tokens[3]
    stopped = greedy_timed(model, ids, 8, stop_ids={stop})
    assert stopped.tokens == free.tokens[: free.tokens.index(stop) + 1]
    assert stopped.decode_steps == len(stopped.tokens) - 1


def test_peak_memory_sees_a_large_allocation():
    import mmap

    with PeakMemory("cpu") as small:
        torch.ones(1024)
    with PeakMemory("cpu") as large:
        # Fresh pages of a new mapping: a tensor could reuse heap memory freed earlier in this
        # process, already resident, and never raise the resident size.
        size = 64 * 2**20
        block = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        block.close()
    assert large.peak_bytes - large.baseline_bytes >= 60 * 2**20
    assert small.peak_bytes - small.baseline_bytes < 60 * 2**20


def test_chat_template_wraps_the_prompt(tmp_path, prompt_file):
    folder = str(save_tiny(tmp_path / "chat", chat_template=CHAT_TEMPLATE))
    out = tmp_path / "gen.json"
    assert (
        run_generate(
            folder,
            prompt_file,
            out,
            "--chat",
            "--no-dense",
            "--budget",
            "512",
            "--max-new-tokens",
            "3",
        )
        == 0
    )
    row = json.loads(out.read_text())["results"][0]
    wrapped = f"<s>user: {PROMPT}\nassistant:"
    assert row["prompt_tokens"] == len(wrapped) - len("<s>") + 1


def test_errors_name_the_problem(tiny_llama, tmp_path, prompt_file, capsys):
    missing = tmp_path / "nope.txt"
    assert run_generate(tiny_llama, missing, tmp_path / "x.json") == 2
    err = capsys.readouterr().err
    assert "prompt file not found" in err and str(missing) in err
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    assert run_generate(tiny_llama, empty, tmp_path / "x.json") == 2
    assert "is empty" in capsys.readouterr().err
    assert run_generate(tiny_llama, prompt_file, tmp_path / "x.json", "--chat") == 2
    assert "no chat template" in capsys.readouterr().err
    assert run_generate(tiny_llama, prompt_file, tmp_path / "x.json", "--budget", "100") == 2
    assert "budget=100" in capsys.readouterr().err
    assert run_generate(tiny_llama, prompt_file, tmp_path / "x.json", "--threads", "0") == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("boundaries, shared", [("shared", True), ("per-layer", False)])
def test_boundaries_option_reaches_the_config(
    tiny_llama, prompt_file, tmp_path, monkeypatch, boundaries, shared
):
    import dhsa.hf

    configured = []
    original = dhsa.hf.configure

    def spy(model, config=None, **kwargs):
        configured.append(config)
        return original(model, config, **kwargs)

    monkeypatch.setattr(dhsa.hf, "configure", spy)
    out = tmp_path / "gen.json"
    code = run_generate(
        tiny_llama,
        prompt_file,
        out,
        "--no-dense",
        "--budget",
        "1024",
        "--max-new-tokens",
        "2",
        "--boundaries",
        boundaries,
    )
    assert code == 0
    assert [c.share_boundaries for c in configured] == [shared]
    assert json.loads(out.read_text())["boundaries"] == boundaries


def test_warmup_is_untimed_and_repeats_give_median_and_range(
    tiny_llama, prompt_file, tmp_path, monkeypatch, capsys
):
    import dhsa.commands.generate as generate

    prefill_times = iter([900.0, 30.0, 10.0, 20.0, 800.0, 5.0, 15.0, 25.0])
    real = generate.greedy_timed

    def scripted(*args, **kwargs):
        result = real(*args, **kwargs)
        result.prefill_ms = next(prefill_times)
        return result

    monkeypatch.setattr(generate, "greedy_timed", scripted)
    out = tmp_path / "gen.json"
    extra = ["--method", "dhsa", "--max-new-tokens", "3", "--warmup", "1", "--repeats", "3"]
    assert run_generate(tiny_llama, prompt_file, out, *extra) == 0
    document = json.loads(out.read_text())
    assert document["warmup"] == 1 and document["repeats"] == 3
    dense, sparse = document["results"]
    assert dense["prefill_ms_runs"] == [30.0, 10.0, 20.0]
    assert dense["prefill_ms"] == 20.0 and dense["prefill_ms_range"] == [10.0, 30.0]
    assert sparse["prefill_ms"] == 15.0 and sparse["prefill_ms_range"] == [5.0, 25.0]
    assert dense["repeats"] == 3 and dense["same_tokens_every_run"] is True
    assert "10.0-30.0" in capsys.readouterr().out
    assert run_generate(tiny_llama, prompt_file, out, "--repeats", "0") == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err


def test_no_progress_hides_every_bar_and_the_load_shows_its_steps(tiny_llama, prompt_file):
    import subprocess
    import sys

    command = [sys.executable, "-m", "dhsa.cli", "generate", "--model", tiny_llama]
    command += ["--prompt-file", str(prompt_file), "--max-new-tokens", "2"]
    command += ["--repeats", "1", "--warmup", "0", "--no-dense"]
    shown = subprocess.run(command, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"load {tiny_llama}" in shown.stderr and "3/3" in shown.stderr
    hidden = subprocess.run(command + ["--no-progress"], capture_output=True, text=True)
    assert hidden.returncode == 0, hidden.stderr[-2000:]
    assert "%|" not in hidden.stderr and "it/s" not in hidden.stderr, hidden.stderr[-2000:]


def test_prompt_and_new_tokens_past_the_context_are_refused(tiny_llama, prompt_file, capsys):
    # The tiny model declares 1024 positions; the prompt has len(PROMPT) tokens.
    extra = ["--max-new-tokens", str(1025 - len(PROMPT)), "--no-dense", "--repeats", "1"]
    assert main(["generate", "--model", tiny_llama, "--prompt-file", str(prompt_file), *extra]) == 2
    err = capsys.readouterr().err
    assert f"length 1025 exceeds the context of {tiny_llama} (1024 tokens)" in err
    assert "keep the prompt's tokens plus --max-new-tokens within 1024" in err

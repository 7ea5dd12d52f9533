"""The one configuration object of dhsa: frozen, typed, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import InitVar, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CHUNKERS = ("similarity", "fixed", "learned")
SCORINGS = ("peak", "paper")

# Key lengths from which selection plus sparse attention beats dense attention (budget 2048),
# measured side by side: on 2 CPU cores dense was faster at 4K and even at 8K (benchmarks/cpu);
# on the H200 with the default peak scoring dense is faster up to 32K (16.6 against 14.8 ms) and
# sparse faster at 64K (30.1 against 58.3 ms; benchmarks/gpu/selection_cost_steps.jsonl).
# Shorter sequences run dense so that they never get slower.
AUTO_MIN_LENGTH = {"cpu": 16384, "cuda": 65536}


def _require_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """``name`` is the field as users write it: ``budget`` (of DHSAConfig) or ``dash.block``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"DHSAConfig.{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"DHSAConfig.{name}={value} is out of range: allowed {allowed}")


def _require_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"DHSAConfig.{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"DHSAConfig.{name}={value} is not a finite number")


def _require_float_in(name: str, value: Any, low: float, high: float, low_open: bool) -> None:
    _require_float(name, value)
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(
            f"DHSAConfig.{name}={value} is out of range: allowed {bracket}{low}, {high}]"
        )


def _require_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"DHSAConfig.{name} must be a bool")


@dataclass(frozen=True)
class DashParams:
    """``dash``: key blocks of ``block`` tokens; block scores are multiplied by ``sparsity``
    before the 1.5-entmax (larger: fewer blocks kept); ``prior`` adds the log of each kept
    block's entmax probability to its keys' logits."""

    block: int = 64
    sparsity: float = 1.0
    prior: bool = False

    def __post_init__(self) -> None:
        _require_int("dash.block", self.block, 1, 4096)
        _require_float_in("dash.sparsity", self.sparsity, 0.0, float("inf"), low_open=True)
        _require_bool("dash.prior", self.prior)


@dataclass(frozen=True)
class HipParams:
    """``hip``: the hierarchical search ends on key blocks of ``block`` tokens."""

    block: int = 32

    def __post_init__(self) -> None:
        _require_int("hip.block", self.block, 1, 4096)


@dataclass(frozen=True)
class VerticalSlashParams:
    """``vertical_slash``: ``slash_share`` of the budget left after sink and local window goes to
    diagonals (whole query blocks wide), the rest to single key columns."""

    slash_share: float = 0.5

    def __post_init__(self) -> None:
        _require_float_in("vertical_slash.slash_share", self.slash_share, 0.0, 1.0, low_open=False)


@dataclass(frozen=True)
class BackendOptions:
    """How the work runs, never what it computes: the same keys are selected and the attention
    output is the same (up to float rounding) whatever these are; only memory and speed change.

    Each tile bounds one stage's largest temporary tensor, in elements of its own unit:

    - ``attention_tile``: float32 logits per tile of the torch attention backend (its peak extra
      memory; the flat keyword ``tile_elements``).
    - ``peak_tile``: elements per tile of the ``peak`` rescoring (per row, every head's chunk
      logits and the candidates' gathered keys), times ``PEAK_TILE_FACTOR`` of the device
      (:mod:`dhsa.methods.chunked`).
    - ``hip_tile``: query-key dot products per tile of query blocks of the ``hip`` search.

    ``triton_fill``: on CUDA, run the prefill's budgeted greedy fill (``dhsa``, ``block_sparse``)
    as one Triton launch per tile of query blocks instead of tensor operations (same keys kept).
    Off by default: it shortens the selection at 32K-128K keys (``benchmarks/gpu/README.md``),
    but each new size class compiles the kernel on first use, and its whole-model effect is not
    measured yet.
    """

    attention_tile: int = 1 << 20
    peak_tile: int = 1 << 20
    hip_tile: int = 1 << 20
    triton_fill: bool = False

    def __post_init__(self) -> None:
        for tile in ("attention_tile", "peak_tile", "hip_tile"):
            _require_int(f"backend.{tile}", getattr(self, tile), 1 << 12)
        _require_bool("backend.triton_fill", self.triton_fill)


# The DHSAConfig fields that hold a peer method's own parameters, and their types.
METHOD_RECORDS = {"dash": DashParams, "hip": HipParams, "vertical_slash": VerticalSlashParams}

# Every DHSAConfig field that holds a record, and its type.
RECORDS = {**METHOD_RECORDS, "backend": BackendOptions}

# DHSAConfig's flat keywords from before the records, still accepted (and readable) as
# keyword -> (record field, parameter).
FLAT_KEYWORDS = {
    "dash_block": ("dash", "block"),
    "dash_sparsity": ("dash", "sparsity"),
    "dash_prior": ("dash", "prior"),
    "hip_block": ("hip", "block"),
    "vs_slash_share": ("vertical_slash", "slash_share"),
    "tile_elements": ("backend", "attention_tile"),
    "triton_fill": ("backend", "triton_fill"),
}


@dataclass(frozen=True)
class DHSAConfig:
    """How sparse attention selects keys.

    Every query keeps at most ``budget`` key tokens: the first ``sink`` tokens, the local window
    (its own query block of ``query_block`` tokens plus the ``local`` tokens before it) and, with
    what is left, whole key chunks in descending score. Sequences shorter than ``min_length`` keys
    run dense attention (sparse selection cannot pay for itself there); ``None`` (the default)
    takes the length measured for the device, :data:`AUTO_MIN_LENGTH`.

    Chunking (``chunker``):
      - ``"similarity"``: boundaries where the mean key of the ``boundary_window`` tokens before a
        position differs from the mean of the ones after it (cosine shift) by more than
        ``boundary_z`` standard deviations above the sequence's mean shift; chunks are between
        ``min_chunk`` and ``max_chunk`` tokens, at most ``max_chunks`` of them.
      - ``"fixed"``: every ``chunk_size`` tokens.
      - ``"learned"``: the boundary predictor stored at ``predictor``, read when the keys are
        first chunked (:func:`dhsa.chunking.load_predictor`: FileNotFoundError naming the path
        and ``dhsa train-predictor`` when it is missing); constructing the config reads no file.

    ``backend`` (:class:`BackendOptions`): tile sizes and kernel choices that change memory and
    speed, never the result.

    ``share_boundaries``: in a model, compute boundaries once (first sparse layer) and reuse them in
    every layer, instead of once per layer.

    ``predictor_threshold``: the learned chunker cuts where the predictor's logit exceeds it.

    ``sparse_decode``: decode steps (one new query token) select too (METHOD.md section 2). False
    keeps prefill sparse and lets each decode step attend every visible key, as the method's
    original release does; ``benchmarks/accuracy/README.md`` measures what each costs in answers.

    ``scoring``: how ``dhsa`` ranks chunks. ``"peak"`` (default): each query head scores the
    chunks by their mean keys (a per-token attention mass, normalized over the visible keys), the
    best candidates are rescored by their best single key, and a chunk counts with the largest
    score any head of its group gives it (:func:`dhsa.methods.scoring.peak_scores`).
    ``"paper"``: the published rule, one ``sqrt(n) * mean`` vector per chunk against one per
    query block with the group's heads averaged. ``docs/selection.md`` compares them.

    Peer methods read their own records: ``dash`` (:class:`DashParams`), ``hip``
    (:class:`HipParams`) and ``vertical_slash`` (:class:`VerticalSlashParams`). The flat keywords
    of :data:`FLAT_KEYWORDS` (``dash_block=16``, ``hip_block=8``, ``tile_elements=1 << 22``,
    ``triton_fill=True``, ...) are still accepted by the constructor and :meth:`replace`, and read
    back as attributes.
    """

    budget: int = 2048
    sink: int = 64
    local: int = 128
    query_block: int = 64
    chunker: str = "similarity"
    chunk_size: int = 64
    min_chunk: int = 8
    max_chunk: int = 128
    max_chunks: int | None = None
    boundary_window: int = 4
    boundary_z: float = 1.0
    share_boundaries: bool = True
    min_length: int | None = None
    predictor: str | None = None
    predictor_threshold: float = 0.0
    sparse_decode: bool = True
    scoring: str = "peak"
    dash: DashParams = DashParams()
    hip: HipParams = HipParams()
    vertical_slash: VerticalSlashParams = VerticalSlashParams()
    backend: BackendOptions = BackendOptions()
    dash_block: InitVar[int | None] = None
    dash_sparsity: InitVar[float | None] = None
    dash_prior: InitVar[bool | None] = None
    hip_block: InitVar[int | None] = None
    vs_slash_share: InitVar[float | None] = None
    tile_elements: InitVar[int | None] = None
    triton_fill: InitVar[bool | None] = None

    def __post_init__(self, *flat: Any) -> None:
        # The flat keywords arrive in the order they are declared, the order of FLAT_KEYWORDS.
        self._fold_flat_keywords(dict(zip(FLAT_KEYWORDS, flat, strict=True)))
        _require_int("budget", self.budget, 1)
        _require_int("sink", self.sink, 0)
        _require_int("local", self.local, 0)
        _require_int("query_block", self.query_block, 1, 4096)
        _require_int("chunk_size", self.chunk_size, 1)
        _require_int("min_chunk", self.min_chunk, 1)
        _require_int("max_chunk", self.max_chunk, 1)
        _require_int("boundary_window", self.boundary_window, 1, 1024)
        if self.min_length is not None:
            _require_int("min_length", self.min_length, 0)
        _require_float("boundary_z", self.boundary_z)
        if self.max_chunks is not None:
            _require_int("max_chunks", self.max_chunks, 1)
        _require_float("predictor_threshold", self.predictor_threshold)
        for flag in ("share_boundaries", "sparse_decode"):
            _require_bool(flag, getattr(self, flag))
        for name, kind in RECORDS.items():
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"DHSAConfig.{name} must be a {kind.__name__}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"DHSAConfig.scoring={self.scoring!r} is unknown: allowed {SCORINGS}")
        if self.chunker not in CHUNKERS:
            raise ValueError(f"DHSAConfig.chunker={self.chunker!r} is unknown: allowed {CHUNKERS}")
        if self.min_chunk > self.max_chunk:
            raise ValueError(
                f"DHSAConfig.min_chunk={self.min_chunk} exceeds max_chunk={self.max_chunk}"
            )
        fixed = self.sink + self.local + self.query_block
        if self.budget < fixed:
            raise ValueError(
                f"DHSAConfig.budget={self.budget} is smaller than the fixed part every query "
                f"keeps: "
                f"sink ({self.sink}) + local ({self.local}) + query_block ({self.query_block}) "
                f"= {fixed}; raise the budget or shrink sink/local"
            )
        if self.chunker == "learned" and not self.predictor:
            raise ValueError(
                "DHSAConfig.chunker='learned' needs predictor=PATH to a trained boundary predictor"
            )

    def _fold_flat_keywords(self, flat: dict[str, Any]) -> None:
        """Put the flat keywords given (not None) into their records; ValueError where a record
        passed alongside holds another value for the same parameter."""
        for keyword, value in flat.items():
            if value is None:
                continue
            name, parameter = FLAT_KEYWORDS[keyword]
            record = getattr(self, name)
            held = getattr(record, parameter)
            if held != value and held != getattr(type(record)(), parameter):
                raise ValueError(
                    f"DHSAConfig got {keyword}={value!r} and {name}.{parameter}={held!r}: pass "
                    f"one of them (or use DHSAConfig.replace)"
                )
            try:
                record = dataclasses.replace(record, **{parameter: value})
            except (TypeError, ValueError) as error:
                raise type(error)(f"{error} (given as {keyword}={value!r})") from None
            object.__setattr__(self, name, record)

    def dense_below(self, device: torch.device | str) -> int:
        """Key length under which attention on ``device`` runs dense (see ``min_length``)."""
        import torch  # here, so that reading presets (the command line) does not load torch

        if self.min_length is not None:
            return self.min_length
        return AUTO_MIN_LENGTH.get(torch.device(device).type, AUTO_MIN_LENGTH["cpu"])

    def replace(self, **changes: Any) -> DHSAConfig:
        """A copy with some fields (or flat keywords, :data:`FLAT_KEYWORDS`) changed, validated
        again."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for keyword in changes.keys() & FLAT_KEYWORDS.keys():
            name, parameter = FLAT_KEYWORDS[keyword]
            if name not in changes:
                # The keyword overrides this config's own value: reset it, so that the
                # constructor takes the keyword instead of refusing a conflict.
                record = fields[name]
                default = getattr(type(record)(), parameter)
                fields[name] = dataclasses.replace(record, **{parameter: default})
        return DHSAConfig(**{**fields, **changes})

    @classmethod
    def preset(cls, name: str, **changes: Any) -> DHSAConfig:
        """A named starting point: ``default``, ``budget1024``, ``budget4096``, ``fixed``."""
        if name not in PRESETS:
            raise ValueError(f"unknown DHSAConfig preset {name!r}: allowed {sorted(PRESETS)}")
        return PRESETS[name].replace(**changes)


def _flat_reader(name: str, parameter: str) -> property:
    return property(
        lambda config: getattr(getattr(config, name), parameter),
        doc=f"``{name}.{parameter}`` under its flat keyword",
    )


# The dataclass took the flat keywords' defaults for its constructor; as attributes they read
# the records.
for _keyword, _place in FLAT_KEYWORDS.items():
    setattr(DHSAConfig, _keyword, _flat_reader(*_place))
del _keyword, _place


PRESETS: dict[str, DHSAConfig] = {
    "default": DHSAConfig(),
    "budget1024": DHSAConfig(budget=1024),
    "budget4096": DHSAConfig(budget=4096),
    "fixed": DHSAConfig(chunker="fixed"),
}

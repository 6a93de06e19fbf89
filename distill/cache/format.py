"""The teacher cache format: names, dtypes, version, schemas. The only module that says what is on disk.

A cache is a directory:

    index.json                 written last, replaced atomically; the cache is "complete" only
                               when its index says so
    shard-00000.safetensors    many records each; written to a temp name, fsynced, renamed
    views/<name>.json          record selections written by the filter (never edits shards)
    tokenizer/                 the teacher's tokenizer files (save_pretrained), written at finish

A shard is a safetensors file with three tensors and a string header:

    blob     uint8 (num_bytes,)          every record's fields, each packed by `codec`
    spans    int64 (records, FIELDS, 2)  (offset, length) of each field of each record in blob;
                                         length -1 means "field absent"
    lengths  int64 (records, 2)          (prompt tokens, completion tokens) per record
    header   distill_format, the spec's fields (top_k, vocab_size, ...), meta (JSON list, one dict per record)

Records are packed one by one so that `cache[i]` decodes one record without touching the rest,
and a batch is decoded by a loop over records, never over tokens. `shard_metadata` makes the
string header, `read_shard_header` is the one place that decodes it.

index.json is a `CacheIndex`, read only by `read_index` and written only by `write_index`:

    format_version, key, complete, spec (`CacheSpec`), provenance (free-form: teacher, tokenizer
    fingerprint, prompt source, sampling, engine, key parts, ...), created, shards (one `ShardEntry`
    each: name, bytes, sha256, records, tokens), records / tokens / bytes (sums over the shards),
    finished (once complete)

views/<name>.json is a `View`: format_version, cache_key, name, records (in the cache), whatever its
writer keeps with the selection (the filter: verifiers, keep, report, verdicts), kept (indices).

Versions:
- 3 (written now): the 'compact' grid is `grid.GRID_V3` (the knee where the two steps meet, 192 levels per
  unit of √p: a perfect student's KL ≤ 1e-3 nats at every position up to k = 64, wherever the values lie;
  version 2's grid reached 5.3e-3 at k = 64); the top-k's level steps are stored in bands of ranks; the
  trace token's logprob is stored beside the decoded top-k value in steps of `codec.TRACE_STEP`, so it
  decodes within 5e-4 nats of the engine's at every p (version 2 read the grid: up to 0.13 nats off,
  and any p ≥ 0.995 read 0.995).
- 2: every position also stores the teacher's tail mass outside its top-k, log r, as the engine saw it
  (exact from full logits where the engine has them, else 1 − Σ top-k in float64), so a near-certain
  position keeps its true tail whatever the quantiser does to the top-1; extra sampled tokens carry their
  teacher logprobs (`extra_logprobs`) for unbiased sampled KD. Still read, with its grid (`grid.GRID_V2`);
  a position whose top-k holds less than 2.6e-4 of the mass (a flat teacher over a large vocabulary)
  decodes correctly since version 3's reader (before, its top-k read as probability 0).
- 1: no tail field; readers derive the tail from the (quantised) top-k, which invents up to 5e-3 of
  tail mass at near-certain positions. Still read; `V1_TAIL_NOTE` says so.

A distill continues (resumes, extends) and merges caches of the version it writes only.
"""

from __future__ import annotations

import json
import reprlib
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import write_json_atomic
from distill.errors import DistillError

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
V1_TAIL_NOTE = (
    "cache {path} is format version 1: its tail masses are derived from quantised top-k logprobs, inexact at "
    "near-certain positions (up to 5e-3 of invented tail mass); regenerate it with this distill for exact tails"
)
INDEX_NAME = "index.json"
VIEWS_DIR = "views"
TOKENIZER_DIR = "tokenizer"  # the teacher's tokenizer, so a cache is usable without the teacher
SHARD_PATTERN = "shard-{:05d}.safetensors"
SHARD_GLOB = "shard-*.safetensors"

# Field order inside `spans`; appending a field needs a format version bump (version 1 has the first six).
FIELDS = (
    "prompt_ids",
    "completion_ids",
    "topk_ids",
    "topk_logprobs",
    "sampled_logprobs",
    "extra_ids",
    "tail_logprobs",
    "extra_logprobs",
)
FIELD_INDEX = {name: i for i, name in enumerate(FIELDS)}

# "compact" stores logprobs quantised (see codec); "fp32" stores them bit-exact.
PRECISIONS = ("compact", "fp32")

# Metadata keys every record must carry; the rest (gold answer, finish reason, ...) is free-form.
REQUIRED_META = ("prompt_id", "sample_index")


@dataclass
class CacheSpec:
    """What every record of one cache has in common; fixed when the cache is created."""

    top_k: int
    """Teacher logprobs stored per completion position (0: none, e.g. `generate --top-k 0`)."""
    vocab_size: int
    """Size of the teacher's vocabulary; every stored id is below it."""
    extra_k: int = 0
    """Extra tokens sampled from the teacher distribution per position, for unbiased sparse KD."""
    extra_temperature: float = 1.0
    """Temperature of the teacher distribution the extra tokens were drawn from (and their logprobs are under)."""
    precision: str = "compact"
    """How logprobs are stored: 'compact' (quantised, ≤1e-3 nats KL per position) or 'fp32'."""

    def problems(self) -> list[str]:
        """Every way this spec is invalid, as sentences (empty when valid)."""
        out = []
        if self.top_k < 0:
            out.append(f"top_k must be ≥ 0, got {self.top_k}")
        if self.vocab_size <= 0:
            out.append(f"vocab_size must be positive, got {self.vocab_size}")
        if self.top_k > self.vocab_size > 0:
            out.append(f"top_k {self.top_k} is larger than the vocabulary ({self.vocab_size} tokens)")
        if self.extra_k < 0:
            out.append(f"extra_k must be ≥ 0, got {self.extra_k}")
        if not self.extra_temperature > 0:
            out.append(f"extra_temperature must be > 0, got {self.extra_temperature}")
        if self.precision not in PRECISIONS:
            out.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "vocab_size": self.vocab_size,
            "extra_k": self.extra_k,
            "extra_temperature": self.extra_temperature,
            "precision": self.precision,
        }

    @classmethod
    def from_json(cls, doc: Any) -> CacheSpec:
        """The spec as an index stores it (version 1 has no extra_temperature); ValueError naming a bad field."""
        doc = _object(doc, "spec")
        kinds = {"top_k": int, "vocab_size": int, "extra_k": int, "extra_temperature": (int, float), "precision": str}
        unknown = sorted(set(doc) - set(kinds))
        if unknown:
            raise ValueError(f"field 'spec' has an unknown key {unknown[0]!r}")
        required = ("top_k", "vocab_size")
        spec = cls(**{name: _field(doc, name, kind) for name, kind in kinds.items() if name in doc or name in required})
        if spec.problems():
            raise ValueError("field 'spec' is invalid: " + "; ".join(spec.problems()))
        return spec


@dataclass
class Record:
    """One sample of one prompt, with the teacher's view of every completion position.

    `topk_ids` / `topk_logprobs` are sorted by logprob, highest first; logprobs are raw
    (before temperature or top-p), natural log.
    """

    prompt_ids: np.ndarray
    """(prompt_len,) int32"""
    completion_ids: np.ndarray
    """(completion_len,) int32"""
    topk_ids: np.ndarray
    """(completion_len, top_k) int32"""
    topk_logprobs: np.ndarray
    """(completion_len, top_k) float32"""
    sampled_logprobs: np.ndarray
    """(completion_len,) float32: the teacher's logprob of the trace token (NaN when unknown)"""
    meta: dict[str, Any] = field(default_factory=dict)
    """prompt_id, sample_index, and optionally finish_reason, answer, ..."""
    extra_ids: np.ndarray | None = None
    """(completion_len, extra_k) int32 tokens drawn from the teacher distribution, or None"""
    tail_logprobs: np.ndarray | None = None
    """(completion_len,) float32 log of the teacher's mass outside its top-k (−inf: none); None = derive it
    from the top-k with `topk_tail_logprobs` (what version-1 caches and engines without full logits give)"""
    extra_logprobs: np.ndarray | None = None
    """(completion_len, extra_k) float32 teacher logprobs of `extra_ids` at the temperature they were drawn at"""

    @property
    def key(self) -> tuple[str, int]:
        """(prompt id, sample index): what makes a record unique within a cache."""
        return str(self.meta["prompt_id"]), int(self.meta["sample_index"])

    @property
    def num_tokens(self) -> int:
        return int(self.completion_ids.shape[0])


def topk_tail_logprobs(topk_logprobs: np.ndarray) -> np.ndarray:
    """log(1 − Σ_k p) per position from top-k logprobs, in float64: (T, k) → (T,) float32, −inf where empty.

    This is the tail an engine without full logits gives (vLLM returns only the top-k). Computed
    in float64 so that a near-certain top-1 (ℓ = −1e-7) keeps its tail of 1e-7 instead of
    rounding it away; a top-k that sums to 1 or more has no tail.
    """
    lp = np.asarray(topk_logprobs, np.float64)
    if lp.shape[-1] == 0:
        return np.zeros(lp.shape[:-1], np.float32)  # nothing stored: all the mass is "tail"
    top = lp.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    log_mass = np.log(np.exp(lp - top).sum(axis=-1)) + top[..., 0]  # (T,) log Σ_k p
    with np.errstate(divide="ignore", invalid="ignore"):
        # log(1 − e^x): expm1 near 0 (the near-certain case), log1p far from it
        tail = np.where(log_mass > -0.693, np.log(-np.expm1(log_mass)), np.log1p(-np.exp(log_mass)))
    return np.where(log_mass < 0, tail, -np.inf).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# shard headers

MAX_HEADER_BYTES = 512 * 2**20  # a larger length prefix means a damaged file, not a header


@dataclass
class ShardHeader:
    """A shard's safetensors header, decoded: what `shard_metadata` wrote, plus the tensor table."""

    format_version: int
    """The format the shard was written in (one of `READABLE_VERSIONS`)."""
    metas: list[dict[str, Any]]
    """Every record's metadata, in row order."""
    tensors: dict[str, dict[str, Any]]
    """Tensor name → safetensors entry {dtype, shape, data_offsets}, offsets counted from `data_start`."""
    data_start: int
    """Byte offset in the file where tensor data begins."""


def shard_metadata(spec: CacheSpec, metas: list[dict[str, Any]]) -> dict[str, str]:
    """The string metadata of a new shard's header (safetensors stores strings only)."""
    header = {"distill_format": str(FORMAT_VERSION), **{k: str(v) for k, v in spec.to_json().items()}}
    header["meta"] = json.dumps(metas, ensure_ascii=False)
    return header


def read_shard_header(path: Path) -> ShardHeader:
    """Decode a shard's header without reading its data.

    Raises DistillError naming the shard when it is unreadable or of a version this distill does not read.
    """
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_HEADER_BYTES:
                raise ValueError("header too large")
            tensors = json.loads(f.read(size))
        meta = tensors.pop("__metadata__")
        version = meta.get("distill_format")
        if version not in {str(v) for v in READABLE_VERSIONS}:
            raise DistillError(
                f"Shard {path} has format {version!r}, which this distill does not read "
                f"(it reads {', '.join(map(str, READABLE_VERSIONS))}); upgrade distill or regenerate the cache."
            )
        metas = json.loads(meta["meta"])
        if not isinstance(metas, list):
            raise ValueError("record metadata is not a list")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as e:
        raise DistillError(f"Shard {path} is unreadable ({e}); run `distill cache verify` and regenerate it.") from e
    return ShardHeader(int(version), metas, tensors, 8 + size)


# ---------------------------------------------------------------------------------------------
# index.json

_MISSING: Any = object()
_KIND_NAMES = {int: "an integer", str: "a string", bool: "true or false", dict: "an object", list: "a list"}


def _field(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """`doc[name]` checked to be a `kind` (a bool is not an int here); ValueError naming the field otherwise."""
    if name not in doc:
        if default is _MISSING:
            raise ValueError(f"field {name!r} is missing")
        return default
    value, kinds = doc[name], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise ValueError(f"field {name!r} is {reprlib.repr(value)}, expected {expected}")
    return value


def _object(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ValueError(f"{what} is {reprlib.repr(doc)}, expected an object")
    return doc


@dataclass
class ShardEntry:
    """One finished shard, as the index lists it (attribute names are the JSON keys)."""

    name: str
    """File name inside the cache directory (`SHARD_PATTERN`)."""
    bytes: int
    """File size; a shard of another size is truncated or foreign."""
    sha256: str
    """Hex SHA-256 of the whole file, checked when a reader first opens the shard."""
    records: int
    """Records in the shard."""
    tokens: int
    """Completion tokens over its records."""

    @classmethod
    def from_json(cls, doc: Any) -> ShardEntry:
        """A shard entry of index.json; ValueError naming a bad field."""
        doc = _object(doc, "the entry")
        entry = cls(
            name=_field(doc, "name", str),
            bytes=_field(doc, "bytes", int),
            sha256=_field(doc, "sha256", str),
            records=_field(doc, "records", int),
            tokens=_field(doc, "tokens", int),
        )
        if Path(entry.name).name != entry.name or entry.name in ("", ".", ".."):
            raise ValueError(f"field 'name' is {entry.name!r}, expected a file name inside the cache")  # never ../..
        return entry


@dataclass
class CacheIndex:
    """index.json: what a cache is (key, spec, provenance) and which shards it has finished.

    `records`, `tokens` and `bytes` are stored too, for people reading the file, but always
    recomputed from the shards.
    """

    key: str
    """The content address: a hash of teacher, tokenizer, prompts, sampling, top-k, ... (`fingerprint.cache_key`)."""
    spec: CacheSpec
    """What every record has in common."""
    provenance: dict[str, Any]
    """Where the records came from, free-form: teacher, tokenizer_fingerprint, prompt_source, engine, key_parts, ..."""
    created: str
    """When the writer started (ISO 8601 with offset)."""
    shards: list[ShardEntry] = field(default_factory=list)
    """Finished shards, in record order."""
    complete: bool = False
    """True once the writer finished; readers refuse incomplete caches unless asked."""
    finished: str | None = None
    """When the writer finished (ISO 8601 with offset); None while incomplete."""
    format_version: int = FORMAT_VERSION
    """The format of the cache (the index and its shards)."""

    @property
    def records(self) -> int:
        return sum(e.records for e in self.shards)

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.shards)

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.shards)

    def to_json(self) -> dict[str, Any]:
        """The JSON document, keys in the order every distill has written them."""
        doc = {
            "format_version": self.format_version,
            "key": self.key,
            "complete": self.complete,
            "spec": self.spec.to_json(),
            "provenance": self.provenance,
            "created": self.created,
            "shards": [asdict(e) for e in self.shards],
            "records": self.records,
            "tokens": self.tokens,
            "bytes": self.bytes,
        }
        if self.finished is not None:
            doc["finished"] = self.finished
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CacheIndex:
        """The index of a readable version; ValueError naming the first bad field."""
        shards = []
        for i, entry in enumerate(_field(doc, "shards", list)):
            try:
                shards.append(ShardEntry.from_json(entry))
            except ValueError as e:
                raise ValueError(f"shard {i}: {e}") from None
        return cls(
            key=_field(doc, "key", str),
            spec=CacheSpec.from_json(_field(doc, "spec", dict)),
            provenance=_field(doc, "provenance", dict),
            created=_field(doc, "created", str),
            shards=shards,
            complete=_field(doc, "complete", bool),
            finished=_field(doc, "finished", str, None),
            format_version=_field(doc, "format_version", int),
        )


def read_index(cache_dir: Path) -> CacheIndex:
    """The index of the cache in `cache_dir`; DistillError when there is none, it is damaged, or its
    version is unknown to this distill."""
    path = Path(cache_dir) / INDEX_NAME
    if not path.is_file():
        raise DistillError(
            f"{cache_dir} is not a teacher cache (no {INDEX_NAME}); point at a directory made by `distill generate`."
        )
    try:
        doc = _object(json.loads(path.read_text()), "the document")
    except (OSError, ValueError) as e:
        raise DistillError(f"{path} is unreadable ({e}); the cache is damaged, regenerate it.") from e
    version = doc.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise DistillError(
            f"Cache {cache_dir} has format version {version!r}, which this distill does not know (it reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}); upgrade distill or regenerate the cache."
        )
    try:
        return CacheIndex.from_json(doc)
    except ValueError as e:
        raise DistillError(f"{path} is damaged ({e}); regenerate the cache.") from e


def write_index(cache_dir: Path, index: CacheIndex) -> None:
    """Replace the index of the cache in `cache_dir` atomically (temp file, fsync, rename)."""
    if index.format_version != FORMAT_VERSION:
        raise ValueError(f"this distill writes format version {FORMAT_VERSION} only, not {index.format_version}")
    write_json_atomic(Path(cache_dir) / INDEX_NAME, index.to_json())


# ---------------------------------------------------------------------------------------------
# views/<name>.json


@dataclass
class View:
    """A named selection of one cache's records (`views.write_view` writes it, `views.load_view` reads it)."""

    cache_key: str
    """Key of the cache the view was made from; the view applies to that cache only."""
    name: str
    """The view's name, its file name without `.json`."""
    records: int
    """Records the cache had when the view was made."""
    kept: list[int]
    """Indices of the kept records, ascending."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What the writer keeps with the selection (the filter: verifiers, keep, report, verdicts)."""
    format_version: int = FORMAT_VERSION
    """The cache format version of the distill that wrote the view."""

    def __post_init__(self) -> None:
        clash = sorted(set(self.extra) & _VIEW_KEYS)
        if clash:
            raise ValueError(f"a view's extra fields must not be named {', '.join(clash)}")

    def to_json(self) -> dict[str, Any]:
        """The JSON document: the schema's fields, the extra fields, then `kept` (long) last."""
        head = {"format_version": self.format_version, "cache_key": self.cache_key, "name": self.name}
        return {**head, "records": self.records, **self.extra, "kept": self.kept}

    @classmethod
    def from_json(cls, doc: Any) -> View:
        """A view document of a readable version; ValueError naming the first bad field."""
        doc = _object(doc, "the document")
        kept = _field(doc, "kept", list)
        if not all(type(i) is int for i in kept):
            raise ValueError("field 'kept' must hold record indices (integers)")
        return cls(
            cache_key=_field(doc, "cache_key", str),
            name=_field(doc, "name", str),
            records=_field(doc, "records", int),
            kept=kept,
            extra={k: v for k, v in doc.items() if k not in _VIEW_KEYS},
            format_version=_field(doc, "format_version", int),
        )


_VIEW_KEYS = frozenset({"format_version", "cache_key", "name", "records", "kept"})

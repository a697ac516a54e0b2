"""Typed cache values as bytes: a small JSON header, then the tensors' raw bytes.

Layout: MAGIC (4 bytes) | header length (4 bytes, little endian) | SHA-256 of header + payload
(32 bytes) | header JSON | payload. The header carries the format version, the value kind (`kv`,
`concepts`, ...), who made it (`owner`: model fingerprint), free metadata (e.g. rope parameters), and each
tensor's name, dtype and shape. The checksum covers the header too, and any failure to decode (a header
that is a list, an unknown dtype, a missing key, a shape of the wrong type) is `CorruptEntry`: a
truncated, corrupt or foreign entry is never used, and the cache deletes it and recomputes.
The encoding is deterministic (sorted keys, raw tensor bytes): the same value is always the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch

MAGIC = b"RCX2"
FORMAT_VERSION = 2

_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "int32": torch.int32,
    "int64": torch.int64,
}


class CorruptEntry(ValueError):
    """The bytes are not a usable value of the expected kind (bad checksum, shape, owner, version)."""


@dataclass
class CachedValue:
    kind: str
    owner: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def _dtype_name(dtype: torch.dtype) -> str:
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"cannot cache tensors of dtype {dtype}")


def encode(value: CachedValue) -> bytes:
    blobs: list[bytes] = []
    specs = []
    for name, t in value.tensors.items():
        t = t.detach().contiguous().cpu()
        # Through uint8 so bf16 (which numpy lacks) serialises like any other dtype.
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        specs.append({"name": name, "dtype": _dtype_name(t.dtype), "shape": list(t.shape), "bytes": len(raw)})
        blobs.append(raw)
    payload = b"".join(blobs)
    header = json.dumps(
        {"version": FORMAT_VERSION, "kind": value.kind, "owner": value.owner, "meta": value.meta, "tensors": specs},
        sort_keys=True,
    ).encode()
    digest = hashlib.sha256(header + payload).digest()
    return MAGIC + struct.pack("<I", len(header)) + digest + header + payload


def decode(blob: bytes, kind: str, owner: str) -> CachedValue:
    """Parse and verify `blob`; raise CorruptEntry unless it is an intact `kind` value made by `owner`."""
    try:
        return _decode(blob, kind, owner)
    except CorruptEntry:
        raise
    except Exception as err:  # a well-checksummed but malformed entry (written by a bug or another version)
        raise CorruptEntry(f"malformed entry: {type(err).__name__}: {err}") from err


def _decode(blob: bytes, kind: str, owner: str) -> CachedValue:
    if len(blob) < 40 or blob[:4] != MAGIC:
        raise CorruptEntry("not a ragctx cache entry (or one of another format version)")
    (hlen,) = struct.unpack("<I", blob[4:8])
    digest, rest = blob[8:40], blob[40:]
    if hashlib.sha256(rest).digest() != digest:
        raise CorruptEntry("checksum mismatch (truncated or corrupt)")
    try:
        header = json.loads(rest[:hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptEntry(f"unreadable header: {err}") from err
    if not isinstance(header, dict):
        raise CorruptEntry(f"header is a {type(header).__name__}, not an object")
    if header.get("version") != FORMAT_VERSION:
        raise CorruptEntry(f"format version {header.get('version')}, expected {FORMAT_VERSION}")
    if header.get("kind") != kind or header.get("owner") != owner:
        raise CorruptEntry(f"entry of {header.get('kind')}/{header.get('owner')}, expected {kind}/{owner}")
    payload = rest[hlen:]
    tensors: dict[str, torch.Tensor] = {}
    at = 0
    specs = header.get("tensors")
    if not isinstance(specs, list):
        raise CorruptEntry("header has no tensor list")
    for spec in specs:
        if spec.get("dtype") not in _DTYPES:
            raise CorruptEntry(f"tensor {spec.get('name')!r}: unknown dtype {spec.get('dtype')!r}")
        dtype = _DTYPES[spec["dtype"]]
        n = spec["bytes"]
        shape = spec["shape"]
        if (
            not isinstance(shape, list)
            or not all(isinstance(x, int) and x >= 0 for x in shape)
            or not isinstance(n, int)
        ):
            raise CorruptEntry(f"tensor {spec.get('name')!r}: shape {shape!r} / size {n!r} are not counts")
        if n != torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size():
            raise CorruptEntry(f"tensor {spec['name']}: {n} bytes do not fit shape {shape}")
        raw = bytearray(payload[at : at + n])  # writable copy: frombuffer shares memory
        at += n
        flat = torch.frombuffer(raw, dtype=torch.uint8) if n else torch.empty(0, dtype=torch.uint8)
        tensors[str(spec["name"])] = flat.view(dtype).reshape(shape)
    if at != len(payload):
        raise CorruptEntry("payload longer or shorter than its tensors")
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise CorruptEntry("header meta is not an object")
    return CachedValue(kind, owner, tensors, meta)

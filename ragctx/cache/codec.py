"""Typed cache values as bytes: a small JSON header, then the tensors' raw bytes.

Layout: MAGIC (4 bytes) | header length (4 bytes, little endian) | header JSON | payload. The header
carries the format version, the value kind (`kv`, `concepts`, ...), who made it (`owner`: model
fingerprint), free metadata (e.g. rope parameters), each tensor's name, dtype and shape, and a
SHA-256 of the payload. `decode` refuses anything that does not match what the reader expects, so a
truncated, corrupt or foreign entry is never used.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch

MAGIC = b"RCX1"
FORMAT_VERSION = 1

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
        {
            "version": FORMAT_VERSION,
            "kind": value.kind,
            "owner": value.owner,
            "meta": value.meta,
            "tensors": specs,
            "sha256": hashlib.sha256(payload).hexdigest(),
        },
        sort_keys=True,
    ).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def decode(blob: bytes, kind: str, owner: str) -> CachedValue:
    """Parse and verify `blob`; raise CorruptEntry unless it is an intact `kind` value made by `owner`."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise CorruptEntry("not a ragctx cache entry")
    (hlen,) = struct.unpack("<I", blob[4:8])
    try:
        header = json.loads(blob[8 : 8 + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptEntry(f"unreadable header: {err}") from err
    if header.get("version") != FORMAT_VERSION:
        raise CorruptEntry(f"format version {header.get('version')}, expected {FORMAT_VERSION}")
    if header.get("kind") != kind or header.get("owner") != owner:
        raise CorruptEntry(f"entry of {header.get('kind')}/{header.get('owner')}, expected {kind}/{owner}")
    payload = blob[8 + hlen :]
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CorruptEntry("checksum mismatch (truncated or corrupt)")
    tensors: dict[str, torch.Tensor] = {}
    at = 0
    for spec in header["tensors"]:
        dtype = _DTYPES[spec["dtype"]]
        n = spec["bytes"]
        shape = spec["shape"]
        if n != torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size():
            raise CorruptEntry(f"tensor {spec['name']}: {n} bytes do not fit shape {shape}")
        raw = bytearray(payload[at : at + n])  # writable copy: frombuffer shares memory
        at += n
        flat = torch.frombuffer(raw, dtype=torch.uint8) if n else torch.empty(0, dtype=torch.uint8)
        tensors[spec["name"]] = flat.view(dtype).reshape(shape)
    if at != len(payload):
        raise CorruptEntry("payload longer than its tensors")
    return CachedValue(kind, owner, tensors, header.get("meta", {}))

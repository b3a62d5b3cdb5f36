"""Weights are what they claim: a model folder's safetensors files, checked before any
command reads or exports them.

Every `*.safetensors` file's header (an 8-byte length, then a JSON table of tensors with
their byte ranges) must describe exactly the bytes the file holds: a truncated copy or
overwritten bytes fail here, one sentence naming the file, instead of deep inside
transformers or, for `rmu.export`, not at all. Where rmu wrote the folder, its marker holds
each file's SHA-256 from when it was written (rmu/run/checkpoint.py), and the file must
still match it: that catches damage the header cannot show. Reading the header costs
nothing; the checksum reads the file once (the load that follows then finds it cached).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from rmu.errors import ConfigError
from rmu.run.checkpoint import MARKER, file_sha256, read_marker

# Bytes per element of the safetensors dtypes (packed sub-byte types are not size-checked).
ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
              "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with one safetensors file's layout, or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"is truncated ({size} bytes: not even a safetensors header)"
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            return (f"is truncated or not a safetensors file (its first 8 bytes announce a {n:,}-byte header; "
                    f"the file has {size:,} bytes)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            return "is damaged (its header is not the JSON table of tensors a safetensors file starts with)"
    if not isinstance(header, dict):
        return "is damaged (its header is not a table of tensors)"
    data, end = size - 8 - n, 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in t["data_offsets"])
            count = math.prod(int(d) for d in t["shape"])
            dtype = t["dtype"]
        except (KeyError, TypeError, ValueError):
            return f"is damaged (its header's entry for tensor {name!r} lacks dtype, shape or data_offsets)"
        if dtype in ITEM_BYTES and stop - begin != count * ITEM_BYTES[dtype]:
            return f"is damaged (tensor {name!r}: {stop - begin} bytes for {count} {dtype} values)"
        end = max(end, stop)
    if end > data:
        return f"is truncated (its header describes {end + 8 + n:,} bytes; the file has {size:,})"
    if end < data:
        return f"is damaged ({data - end:,} bytes after the last tensor its header describes)"
    return None


def check_weights(folder: str | Path, key: str) -> None:
    """Every safetensors file of the model folder `folder` (`key`: the option that named it)
    is whole, the shards an index names exist, and where rmu's marker recorded a checksum
    the file still matches it; a ConfigError naming the file otherwise."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return
    marker = read_marker(folder)
    sums = marker.get("sha256") if isinstance(marker.get("sha256"), dict) else {}

    def fail(path: Path, what: str, remedy: str = "copy the folder again from where it came from, or write it again"):
        raise ConfigError(f"{key}={str(folder)!r}: {path} {what}, so rmu does not use it: {remedy}")

    for listed in marker.get("files") or []:
        if str(listed).endswith(".safetensors") and not (folder / listed).exists():
            fail(folder / listed, "is missing (rmu wrote it there)")
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            fail(index, "is damaged (not the JSON index of shards with a weight_map)")
        for shard in sorted(shards):
            if not (folder / shard).is_file():
                fail(folder / shard, f"is missing ({index.name} names it)")
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            fail(path, problem)
        recorded = sums.get(path.name)
        if recorded and file_sha256(path) != recorded:
            fail(path, "does not match the SHA-256 rmu recorded when it wrote it (damaged or changed since)",
                 f"copy the folder again, or if you changed the file on purpose, delete {folder / MARKER}")

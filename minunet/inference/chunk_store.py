"""What a store of chunked prediction (inference/chunked.py) knows: the content of its input, and
for each complete chunk the checksums of its files.

    OUT.zarr/done/<lead...>.<iy>.<ix>.json    one done-marker per complete chunk:
        {"prob": {"key": "c/0/1", "bytes": 81234, "crc32": 2914820113}, "mask": {...}}

A chunk's prob (and mask) files are written first; then the task reads them back as stored
(compressed: nothing is decoded) and writes the marker with each file's size and CRC-32,
atomically (minunet/files.py). A rerun reads every marker and the files it names: a chunk
counts as complete only when the sizes and checksums agree, so a chunk file overwritten,
truncated or deleted on disk is computed again (its stale marker removed first). The check
reads the output once; CRC-32 runs at several GB/s, far beyond the network's MP/s.

The input's fingerprint is a BLAKE2b digest of its bytes as stored (a TIFF file; a zarr
array's files, metadata and chunks, with their relative paths), read once when a run starts
and kept in the store's attributes; a rerun from other content under the same name is refused
(chunked.py says how to go on).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from minunet.files import atomic_write_text

BLOCK = 16 * 2**20  # bytes read at a time when hashing
MARKERS = "done"  # the folder of done-markers inside OUT.zarr


def path_digest(path) -> str:
    """BLAKE2b (hex, 32 bytes) of a file's bytes, or of a folder's files (relative path, size
    and bytes of each, in sorted order: a renamed or moved chunk changes it too)."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=32)
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    for f in files:
        if f != path:
            rel = f.relative_to(path).as_posix().encode()
            h.update(len(rel).to_bytes(8, "little") + rel + f.stat().st_size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            while block := fh.read(BLOCK):
                h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> dict | None:
    """{"bytes": size, "crc32": CRC-32 of the bytes} of a file; None if it is not there."""
    crc, n = 0, 0
    try:
        with open(path, "rb") as fh:
            while block := fh.read(BLOCK):
                crc, n = zlib.crc32(block, crc), n + len(block)
    except FileNotFoundError:
        return None
    return {"bytes": n, "crc32": crc}


def marker_path(out, job: tuple) -> Path:
    """OUT/done/<job joined by dots>.json: job = (*leading, iy, ix)."""
    return Path(out) / MARKERS / (".".join(str(int(i)) for i in job) + ".json")


def write_marker(out, job: tuple, keys: dict) -> None:
    """Mark a chunk complete: keys = {array name: chunk key inside it} (e.g. {"prob": "c/0/1"});
    records each file's size and CRC-32 as it lies on disk now. OSError if a file is missing
    (zarr wrote nothing: it must have been told to write empty chunks)."""
    rec = {}
    for name, key in keys.items():
        r = file_record(Path(out) / name / key)
        if r is None:
            raise FileNotFoundError(f"chunk file {Path(out) / name / key} was not written")
        rec[name] = {"key": key, **r}
    atomic_write_text(marker_path(out, job), json.dumps(rec, sort_keys=True))


def complete_chunks(out, grid: tuple, keys_of: Callable[[tuple], dict]) -> np.ndarray:
    """(*grid) bool: chunks whose marker is readable and whose files match it (keys_of(job)
    gives the chunk keys the marker must name). Markers that fail the check are removed, so
    that the store never claims a chunk it does not hold."""
    done = np.zeros(grid, bool)
    folder = Path(out) / MARKERS
    if not folder.is_dir():
        return done
    for f in folder.glob(".*.tmp"):  # a marker write killed mid-way
        f.unlink(missing_ok=True)
    for f in folder.glob("*.json"):
        try:
            job = tuple(int(s) for s in f.name[:-len(".json")].split("."))
            ok = len(job) == len(grid) and all(0 <= i < n for i, n in zip(job, grid, strict=True))
            ok = ok and _matches(out, json.loads(f.read_text()), keys_of(job))
        except (ValueError, OSError, TypeError, KeyError):  # a torn or foreign marker
            ok = False
        if ok:
            done[job] = True
        else:
            f.unlink(missing_ok=True)
    return done


def _matches(out, marker: dict, keys: dict) -> bool:
    if set(marker) != set(keys):
        return False
    for name, key in keys.items():
        rec = marker[name]
        if rec.get("key") != key:
            return False
        if file_record(Path(out) / name / key) != {"bytes": rec["bytes"], "crc32": rec["crc32"]}:
            return False
    return True


def count_markers(out) -> int:
    """Complete chunks as the markers say (no check): for messages after a failed run."""
    folder = Path(out) / MARKERS
    return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0

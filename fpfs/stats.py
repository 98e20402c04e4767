"""Per-file, per-format and per-element-type size accounting, read from chunk tables
(plus the few chunks that hold a format's metadata, to name the format)."""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional

from .bases import find_base
from .codecs import CODEC_DELTA, CODEC_NAMES, dtype_name
from .container import Container
from .errors import FpfsError


def _dtype_entry() -> dict:
    return {"original_bytes": 0, "stored_bytes": 0, "codecs": defaultdict(int)}


def _format_of(path: str) -> str:
    from .deltas import container_layout
    try:
        return container_layout(path)[0].format
    except (FpfsError, OSError):        # e.g. a delta whose base is missing
        return "unknown"


def _base_info(path: str, c: Container) -> Optional[dict]:
    if c.base is None:
        return None
    try:
        where: Optional[str] = find_base(path, c.base.sha256)
    except FpfsError:
        where = None
    return {"sha256": c.base.sha256.hex(), "size": c.base.size, "path": where}


def container_stats(path: str) -> dict:
    with Container(path) as c:
        dtypes: Dict[str, dict] = defaultdict(_dtype_entry)
        delta_original = delta_stored = 0
        for e in c.table:
            d = dtypes[dtype_name(int(e["dtype"]))]
            d["original_bytes"] += int(e["orig_length"])
            d["stored_bytes"] += int(e["comp_length"])
            d["codecs"][CODEC_NAMES.get(int(e["codec"]), "?")] += 1
            if int(e["codec"]) == CODEC_DELTA:
                delta_original += int(e["orig_length"])
                delta_stored += int(e["comp_length"])
        header = dtypes["header"]
        header["original_bytes"] = header["stored_bytes"] = len(c.prefix)
        header["codecs"]["verbatim"] = 1
        result = {"path": path, "format": _format_of(path),
                  "original_bytes": c.original_size, "stored_bytes": c.stored_size,
                  "chunks": len(c), "chunk_size": c.chunk_size, "version": c.version,
                  "base": _base_info(path, c),
                  "delta": {"original_bytes": delta_original, "stored_bytes": delta_stored},
                  "dtypes": {}}
    for name, d in dtypes.items():
        d["codecs"] = dict(d["codecs"])
        d["ratio"] = d["stored_bytes"] / d["original_bytes"] if d["original_bytes"] else 1.0
        result["dtypes"][name] = d
    result["ratio"] = result["stored_bytes"] / max(result["original_bytes"], 1)
    return result


def _add(into: dict, name: str, d: dict) -> None:
    t = into.setdefault(name, {"original_bytes": 0, "stored_bytes": 0, "codecs": {}})
    t["original_bytes"] += d["original_bytes"]
    t["stored_bytes"] += d["stored_bytes"]
    for k, v in d.get("codecs", {}).items():
        t["codecs"][k] = t["codecs"].get(k, 0) + v


def _ratios(group: dict) -> None:
    for d in group.values():
        d["ratio"] = d["stored_bytes"] / d["original_bytes"] if d["original_bytes"] else 1.0


def merge_stats(items: List[dict]) -> dict:
    total = {"path": "total", "original_bytes": 0, "stored_bytes": 0, "chunks": 0,
             "dtypes": {}, "formats": {}, "deltas": 0}
    for s in items:
        for key in ("original_bytes", "stored_bytes", "chunks"):
            total[key] += s[key]
        for name, d in s["dtypes"].items():
            _add(total["dtypes"], name, d)
        _add(total["formats"], s.get("format", "unknown"),
             {"original_bytes": s["original_bytes"], "stored_bytes": s["stored_bytes"]})
        total["deltas"] += 1 if s.get("base") else 0
    _ratios(total["dtypes"])
    _ratios(total["formats"])
    total["ratio"] = total["stored_bytes"] / max(total["original_bytes"], 1)
    return total

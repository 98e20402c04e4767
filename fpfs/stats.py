"""Per-file and per-dtype size accounting read from chunk tables (no decoding)."""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List

from .codecs import CODEC_NAMES, dtype_name
from .container import Container


def _dtype_entry() -> dict:
    return {"original_bytes": 0, "stored_bytes": 0, "codecs": defaultdict(int)}


def container_stats(path: str) -> dict:
    with Container(path) as c:
        dtypes: Dict[str, dict] = defaultdict(_dtype_entry)
        for e in c.table:
            d = dtypes[dtype_name(int(e["dtype"]))]
            d["original_bytes"] += int(e["orig_length"])
            d["stored_bytes"] += int(e["comp_length"])
            d["codecs"][CODEC_NAMES.get(int(e["codec"]), "?")] += 1
        header = dtypes["header"]
        header["original_bytes"] = header["stored_bytes"] = len(c.prefix)
        header["codecs"]["verbatim"] = 1
        result = {"path": path, "original_bytes": c.original_size,
                  "stored_bytes": c.stored_size, "chunks": len(c), "chunk_size": c.chunk_size,
                  "dtypes": {}}
    for name, d in dtypes.items():
        d["codecs"] = dict(d["codecs"])
        d["ratio"] = d["stored_bytes"] / d["original_bytes"] if d["original_bytes"] else 1.0
        result["dtypes"][name] = d
    result["ratio"] = result["stored_bytes"] / max(result["original_bytes"], 1)
    return result


def merge_stats(items: List[dict]) -> dict:
    total = {"path": "total", "original_bytes": 0, "stored_bytes": 0, "chunks": 0,
             "dtypes": {}}
    for s in items:
        for key in ("original_bytes", "stored_bytes", "chunks"):
            total[key] += s[key]
        for name, d in s["dtypes"].items():
            t = total["dtypes"].setdefault(name, {"original_bytes": 0, "stored_bytes": 0,
                                                  "codecs": {}})
            t["original_bytes"] += d["original_bytes"]
            t["stored_bytes"] += d["stored_bytes"]
            for k, v in d["codecs"].items():
                t["codecs"][k] = t["codecs"].get(k, 0) + v
    for d in total["dtypes"].values():
        d["ratio"] = d["stored_bytes"] / d["original_bytes"] if d["original_bytes"] else 1.0
    total["ratio"] = total["stored_bytes"] / max(total["original_bytes"], 1)
    return total

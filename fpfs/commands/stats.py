"""`fpfs stats`: sizes, ratios and codec mix per file, format and dtype."""
from __future__ import annotations

import json
import sys

from ..options import UserError
from ..progress import human_bytes
from ..stats import container_stats, merge_stats
from . import EXIT_OK, containers


def cmd_stats(args) -> int:
    files = containers(args.path)
    if not files:
        raise UserError(f"{args.path}: no .fpz files found")
    per_file = [container_stats(p) for p in files]
    total = merge_stats(per_file)
    if args.json:
        json.dump({"files": per_file, "total": total}, sys.stdout, indent=2)
        print()
        return EXIT_OK
    for s in per_file + ([total] if len(per_file) > 1 else []):
        what = f"{s['format']}, " if "format" in s else ""
        print(f"{s['path']}: {what}{human_bytes(s['original_bytes'])} -> "
              f"{human_bytes(s['stored_bytes'])} ({100 * s['ratio']:.2f} %)")
        base = s.get("base")
        if base:
            where = base["path"] or "MISSING (fpfs verify fails on this file)"
            delta = s["delta"]
            print(f"  delta of {where} (SHA-256 {base['sha256'][:16]}...): "
                  f"{human_bytes(delta['original_bytes'])} coded as differences -> "
                  f"{human_bytes(delta['stored_bytes'])}")
        for fmt, d in sorted(s.get("formats", {}).items()):
            print(f"  {fmt:<12} {human_bytes(d['original_bytes']):>11} -> "
                  f"{human_bytes(d['stored_bytes']):>11}  {100 * d['ratio']:6.2f} %")
        for dtype, d in sorted(s["dtypes"].items()):
            mix = ", ".join(f"{k} {v}" for k, v in sorted(d["codecs"].items()))
            print(f"  {dtype:<12} {human_bytes(d['original_bytes']):>11} -> "
                  f"{human_bytes(d['stored_bytes']):>11}  {100 * d['ratio']:6.2f} %  "
                  f"chunks: {mix}")
    return EXIT_OK

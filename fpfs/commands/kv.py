"""`fpfs kv ls|stats|gc ROOT`: the blocks of a K/V prefix store (fpfs.kv.PrefixStore)."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import List

from ..kv.prefix_store import NotAStore, PrefixStore
from ..options import UserError
from ..progress import human_bytes
from ..store import is_url
from . import EXIT_OK


def _open(root: str) -> PrefixStore:
    if not is_url(root) and not os.path.isdir(root):
        raise UserError(f"{root}: no such directory")
    try:
        return PrefixStore(root, create=False)
    except NotAStore as exc:
        raise UserError(str(exc)) from None


def _rows(store: PrefixStore) -> List[dict]:
    """One dict per block, most recently used first; original sizes from the headers."""
    rows = []
    for e in sorted(store.entries(), key=lambda e: (-e.last_used_ns, e.name)):
        h = store.header(e)
        rows.append({"name": e.name, "tokens": e.tokens, "stored_bytes": e.size,
                     "original_bytes": h.original_bytes if h else None,
                     "layers": h.layers if h else None, "last_used_ns": e.last_used_ns})
    return rows


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def _percent(stored: int, original) -> str:
    return f"{100 * stored / original:6.2f} %" if original else "       ?"


def cmd_kv_ls(args) -> int:
    rows = _rows(_open(args.root))
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return EXIT_OK
    print(f"{'last used':<19}  {'tokens':>7}  {'stored':>11}  {'of orig.':>8}  block")
    for r in rows:
        print(f"{_when(r['last_used_ns'])}  {r['tokens']:>7}  "
              f"{human_bytes(r['stored_bytes']):>11}  "
              f"{_percent(r['stored_bytes'], r['original_bytes'])}  {r['name']}")
    return EXIT_OK


def cmd_kv_stats(args) -> int:
    store = _open(args.root)
    rows = _rows(store)
    stored = sum(r["stored_bytes"] for r in rows)
    known = [r for r in rows if r["original_bytes"]]
    summary = {
        "root": args.root, "block_size": store.block_size, "blocks": len(rows),
        "prefixes": sum(1 for r in rows if r["tokens"] == store.block_size),
        "longest_prefix_tokens": max((r["tokens"] for r in rows), default=0),
        "stored_bytes": stored,
        "original_bytes": sum(r["original_bytes"] for r in known),
        "ratio": (sum(r["stored_bytes"] for r in known) /
                  sum(r["original_bytes"] for r in known)) if known else None,
        "least_recent_use_ns": min((r["last_used_ns"] for r in rows), default=None),
        "most_recent_use_ns": max((r["last_used_ns"] for r in rows), default=None)}
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
        return EXIT_OK
    s = summary
    print(f"{args.root}: {s['blocks']} blocks of {s['block_size']} tokens "
          f"({s['prefixes']} first blocks, longest prefix {s['longest_prefix_tokens']} tokens)")
    ratio = f" ({100 * s['ratio']:.2f} %)" if s["ratio"] is not None else ""
    print(f"  K/V {human_bytes(s['original_bytes'])} stored in "
          f"{human_bytes(stored)}{ratio}")
    if rows:
        print(f"  used from {_when(s['least_recent_use_ns'])} to "
              f"{_when(s['most_recent_use_ns'])}")
    return EXIT_OK


def cmd_kv_gc(args) -> int:
    if is_url(args.root):
        raise UserError("gc works on local stores only (use the bucket's lifecycle rules)")
    removed, freed = _open(args.root).gc(args.max_size)
    print(f"{args.root}: {removed} block(s) removed, {human_bytes(freed)} freed "
          f"(at most {human_bytes(args.max_size)} kept)")
    return EXIT_OK


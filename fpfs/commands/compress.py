"""`fpfs compress`: a file, a tree, a tree in place, or into an object store; later files
coded as deltas of earlier ones where that is smaller."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

from ..bases import MAX_CHAIN
from ..codecs import DEFAULT_MIN_SAVING_PPM
from ..compress import CompressResult, compress_file, compress_if_smaller, worth_compressing
from ..container import SUFFIX, is_container, validate_chunk_size
from ..deltas import choose_base
from ..formats import Layout, detect
from ..options import UserError
from ..progress import ProgressBar, human_bytes
from ..store import is_url, split_url
from ..tempfiles import copy_file_atomic, remove_stale
from ..tree import copy_link, copy_metadata, regular_files, walk
from . import EXIT_OK


def _natural_key(path: str):
    """checkpoint-40 before checkpoint-120: a series is compressed in training order, so
    each checkpoint can be coded against the one before it."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


class _Compressor:
    """Compresses files one by one, remembering what it wrote so that later files can be
    coded as deltas of earlier ones (fine-tunes, checkpoint series)."""

    def __init__(self, args, store_root: str, bar: ProgressBar):
        self.args = args
        self.store_root = store_root
        self.bar = bar
        self.candidates: List[Tuple[str, Layout]] = []     # containers that may be bases
        self.depth: Dict[str, int] = {}
        self.forced_base = os.path.abspath(args.base) if args.base else None

    def store(self, src: str, target: str, layout: Layout) -> Optional[CompressResult]:
        """Write target.fpz from src if compressing pays (None otherwise: nothing written).
        Later files may use it as their base."""
        if not worth_compressing(layout):
            return None
        return self.write(src, target + SUFFIX, layout, only_if_smaller=True)

    def write(self, src: str, dst: str, layout: Layout,
              only_if_smaller: bool = False) -> Optional[CompressResult]:
        base = self._base_for(layout)
        compress = compress_if_smaller if only_if_smaller else compress_file
        result = compress(
            src, dst, chunk_size=self.args.chunk_size, threads=self.args.threads,
            progress=self.bar.file_progress,
            min_saving_ppm=0 if self.args.smallest else DEFAULT_MIN_SAVING_PPM,
            base=base, store_root=self.store_root, layout=layout)
        if result is None:
            return None
        copy_metadata(src, dst)
        if layout.tensors():
            self.candidates.append((dst, layout))
            self.depth[dst] = self.depth.get(base, 0) + 1 if result.base else 0
        self._say(src, dst, layout.file_size, result.stored_size, layout.format, result.base)
        return result

    def one(self, src: str, target: str) -> int:
        """Store src as target.fpz, or as a copy at target when compressing does not pay;
        returns the bytes stored."""
        layout = detect(src)
        result = self.store(src, target, layout)
        self.bar.file_done(layout.file_size)
        if result is not None:
            return result.stored_size
        copy_file_atomic(src, target)
        self._say(src, target, layout.file_size, layout.file_size, layout.format, None)
        return layout.file_size

    def _base_for(self, layout: Layout) -> Optional[str]:
        if self.args.no_delta or not layout.tensors():
            return None
        if self.forced_base:
            return self.forced_base
        usable = [(p, l) for p, l in self.candidates
                  if self.depth.get(p, 0) < self.args.max_depth]
        return choose_base(layout, usable)

    def _say(self, src, dst, size, stored, fmt, base) -> None:
        if self.args.verbose:
            how = f", delta of {base}" if base else ""
            print(f"{src} -> {dst}: {fmt}{how}: {human_bytes(size)} -> "
                  f"{human_bytes(stored)} ({100 * stored / max(size, 1):.2f} %)")


def cmd_compress(args) -> int:
    src = args.src
    if not os.path.lexists(src):
        raise UserError(f"{src}: no such file or directory")
    if args.base and not os.path.isfile(args.base):
        raise UserError(f"--base {args.base}: no such file")
    if not 1 <= args.max_depth <= MAX_CHAIN:
        raise UserError(f"--max-depth {args.max_depth}: must be 1..{MAX_CHAIN}")
    if args.base and args.no_delta:
        raise UserError("--base and --no-delta contradict each other")
    try:
        validate_chunk_size(args.chunk_size)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.in_place:
        if args.dst:
            raise UserError("--in-place takes no DST")
        return _compress_in_place(src, args)
    if not args.dst:
        raise UserError("DST is required (or use --in-place)")
    if is_url(args.dst):
        return _compress_to_store(src, args.dst, args)
    if os.path.isdir(src):
        return _compress_tree(src, args.dst, args)
    return _compress_one(src, args.dst, args)


def _compress_one(src: str, dst: str, args) -> int:
    if is_container(src):
        raise UserError(f"{src}: already an fpfs container")
    if os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(src) + SUFFIX)
    bar = ProgressBar(os.path.getsize(src), "compress")
    compressor = _Compressor(args, os.path.dirname(os.path.abspath(dst)), bar)
    try:
        # A file named on the command line is always written as asked, as a container.
        result = compressor.write(src, dst, detect(src))
    finally:
        bar.close()
    print(f"{dst}: {human_bytes(result.original_size)} -> {human_bytes(result.stored_size)} "
          f"({100 * result.ratio:.2f} % of original)"
          + (f", a delta of {result.base}" if result.base else ""))
    return EXIT_OK


def _compress_tree(src: str, dst: str, args) -> int:
    if os.path.abspath(dst).startswith(os.path.abspath(src) + os.sep):
        raise UserError("DST must not be inside SRC")
    entries = list(walk(src))
    total = sum(os.path.getsize(p) for k, p, _ in entries if k == "file")
    os.makedirs(dst, exist_ok=True)
    remove_stale(dst)                    # what an earlier, killed run left behind
    bar = ProgressBar(total, "compress")
    compressor = _Compressor(args, dst, bar)
    orig = stored = 0
    try:
        for kind, path, rel in entries:
            out = os.path.join(dst, rel)
            if kind == "dir":
                os.makedirs(out, exist_ok=True)
            elif kind == "link":
                copy_link(path, out)
            elif kind == "other":
                print(f"fpfs: skipping {path}: not a regular file, directory or symlink",
                      file=sys.stderr)
        files = sorted(((p, rel) for k, p, rel in entries if k == "file"),
                       key=lambda item: _natural_key(item[1]))
        for path, rel in files:
            orig += os.path.getsize(path)
            stored += compressor.one(path, os.path.join(dst, rel))
    finally:
        bar.close()
    print(f"{dst}: {human_bytes(orig)} -> {human_bytes(stored)} "
          f"({100 * stored / max(orig, 1):.2f} % of original)")
    return EXIT_OK


def _compress_to_store(src: str, url: str, args) -> int:
    """Compress into a local temporary tree (TMPDIR), then publish it (store/publish.py).
    A file goes to URL itself, or to URL/NAME.fpz when URL ends with a slash."""
    from ..store.publish import publish
    from ..store.s3 import default_store
    split_url(url)
    with tempfile.TemporaryDirectory(prefix="fpfs-publish-") as tmp:
        if os.path.isdir(src):
            root_url = url
            _compress_tree(src, tmp, args)
        else:
            root_url, name = (url, os.path.basename(src) + SUFFIX) if url.endswith("/") \
                else url.rsplit("/", 1)
            _compress_one(src, os.path.join(tmp, name), args)
        say = print if args.verbose else None
        total = publish(tmp, root_url, default_store(), say)
    print(f"{url}: published {human_bytes(total)}, verified")
    return EXIT_OK


def _compress_in_place(src: str, args) -> int:
    root = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    if os.path.isdir(src):
        remove_stale(src)                # what an earlier, killed run left behind
    layouts = {p: detect(p) for p in regular_files(src)
               if not p.endswith(SUFFIX) and not is_container(p)}
    files = sorted((p for p, layout in layouts.items() if worth_compressing(layout)),
                   key=_natural_key)
    if not files:
        raise UserError(f"{src}: no files to compress")
    bar = ProgressBar(sum(os.path.getsize(p) for p in files), "compress")
    compressor = _Compressor(args, root, bar)
    orig = stored = 0
    count = 0
    try:
        for path in files:
            size = os.path.getsize(path)
            # compress_file verifies the new container before renaming it into place;
            # only then is the original removed, so a crash at any point loses nothing.
            result = compressor.store(path, path, layouts[path])
            bar.file_done(size)
            if result is None:
                continue
            os.unlink(path)
            orig += size
            stored += result.stored_size
            count += 1
    finally:
        bar.close()
    print(f"{src}: {count} file(s) compressed, {human_bytes(orig)} -> {human_bytes(stored)} "
          f"({100 * stored / max(orig, 1):.2f} % of original)")
    return EXIT_OK

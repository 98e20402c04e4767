"""Choosing what a file is coded against: bases for fine-tunes and checkpoint series.

A region of a new file is coded against a region of a base when both hold the same tensor:
same name, same element type, same shape (a base with the same names but other shapes is
never used) and the same byte length. Names match exactly, or after dropping the new
name's first component ("model.encoder.x" in a training checkpoint matches "encoder.x" in
a safetensors file), so deltas work across formats. The codecs then keep, per chunk,
whichever of delta and standalone is smaller (fpfs.codecs.encode_chunk).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple


from .container import SUFFIX, is_container
from .formats import Layout, Region, detect, recognise
from .fpz_file import FpzFile
from .packed_file import PackedFile

# A base is worth naming only if it matches at least this share of the file's tensor bytes
# (a training checkpoint at step 0 holds the model but no optimizer state yet: 1/3).
MIN_MATCHED_SHARE = 0.25


def _key(r: Region) -> Tuple[str, Optional[Tuple[int, ...]], int]:
    return (r.dtype, r.shape, r.length)


def match_regions(layout: Layout, base: Layout) -> Dict[int, int]:
    """{offset of a tensor region in layout: offset of the same tensor in base}."""
    by_name: Dict[str, Region] = {r.tensor: r for r in base.tensors()}
    matches: Dict[int, int] = {}
    for r in layout.tensors():
        names = [r.tensor]
        if "." in r.tensor:
            names.append(r.tensor.split(".", 1)[1])
        for name in names:
            b = by_name.get(name)
            if b is not None and _key(b) == _key(r):
                matches[r.offset] = b.offset
                break
    return matches


def matched_bytes(layout: Layout, base: Layout) -> int:
    m = match_regions(layout, base)
    return sum(r.length for r in layout.tensors() if r.offset in m)


def tensor_bytes(layout: Layout) -> int:
    return sum(r.length for r in layout.tensors())


@dataclass
class BaseSource:
    """A base as the writer sees it: its layout, its original bytes and where its container
    is (or None: an original file that still has to be compressed into the store)."""
    path: str                   # the file given: a .fpz or an original
    layout: Layout
    sha256: bytes
    size: int
    container_path: Optional[str]
    depth: int                  # 0 for a standalone container or an original
    _packed: Optional[PackedFile] = None
    _fd: int = -1

    @classmethod
    def open(cls, path: str, root: Optional[str] = None) -> "BaseSource":
        if is_container(path):
            packed = PackedFile(path, root=root)
            with FpzFile(path, root=root) as f:
                layout, _ = recognise(f, packed.size)
            return cls(path, layout, packed.container.sha256, packed.size, path,
                       packed.depth, packed)
        import hashlib
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return cls(path, detect(path), h.digest(), os.fstat(fd).st_size, None, 0, None, fd)

    def read(self, offset: int, size: int) -> memoryview:
        if self._packed is not None:
            return memoryview(self._packed.read_cached(offset, size))
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self.path}: base changed while being read")
        return memoryview(data)

    def close(self) -> None:
        if self._packed is not None:
            self._packed.close()
            self._packed = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def choose_base(layout: Layout, candidates: Sequence[Tuple[str, Layout]]) -> Optional[str]:
    """The candidate (name, layout) sharing the most tensor bytes with layout - the latest
    of equals, so a checkpoint series chains to its previous checkpoint - if it shares at
    least MIN_MATCHED_SHARE of them."""
    total = tensor_bytes(layout)
    if not total:
        return None
    best, best_bytes = None, 0
    for name, base_layout in candidates:
        m = matched_bytes(layout, base_layout)
        if m >= best_bytes and m > 0:
            best, best_bytes = name, m
    if best is None or best_bytes < MIN_MATCHED_SHARE * total:
        return None
    return best


def container_layout(path: str, root: Optional[str] = None) -> Tuple[Layout, int]:
    """(layout of the original, chain depth) of a container: reads the few chunks that
    hold its format's metadata."""
    with FpzFile(path, root=root) as f:
        layout, _ = recognise(f, f.size)
        return layout, f.depth


# How many files beside a newly written one are looked at as its possible base.
MAX_NEIGHBOURS = 32


def neighbour_candidates(target: str, root: str) -> List[Tuple[str, Layout]]:
    """(container path, layout) of the containers beside target (without its .fpz
    suffix): in its directory and in its directory's siblings (checkpoint-40/ beside
    checkpoint-80/), newest first, that can still be a base (chain depth < MAX_CHAIN)."""
    from .bases import BASES_DIR, MAX_CHAIN
    directory = os.path.dirname(os.path.abspath(target))
    dirs = [directory]
    parent = os.path.dirname(directory)
    if os.path.abspath(directory) != os.path.abspath(root):
        try:
            dirs += [os.path.join(parent, n) for n in sorted(os.listdir(parent))
                     if n != BASES_DIR and os.path.join(parent, n) != directory]
        except OSError:
            pass
    found = []
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            p = os.path.join(d, n)
            if n.endswith(SUFFIX) and p != target + SUFFIX and os.path.isfile(p) \
                    and is_container(p):
                found.append((os.stat(p).st_mtime_ns, p))
    found.sort(reverse=True)
    out = []
    for _, p in found[:MAX_NEIGHBOURS]:
        try:
            layout, depth = container_layout(p, root)
        except Exception:           # an unreadable neighbour is simply not a candidate
            continue
        if depth < MAX_CHAIN and layout.tensors():
            out.append((p, layout))
    out.reverse()                   # oldest first: choose_base prefers the latest of equals
    return out

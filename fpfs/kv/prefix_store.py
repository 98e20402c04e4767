"""PrefixStore: the K/V caches of token sequences, found again by their longest stored
prefix - what vLLM's prefix caching and LMCache keep - compressed, on local disk (with a
size budget, least recently used entries evicted) or under an s3:// prefix.

A sequence is cut into blocks of N tokens. Block j's key is a hash chain, as vLLM and
LMCache key theirs: key(j) = SHA-256(key(j - 1) || the token ids of block j), key(-1) a
hash of N and the store's label (the model), so a key names the whole prefix up to its
block. Each block is one FPKC file (cache_file.py) holding that block's keys and values,
named by its key; the file also holds every token id of the prefix and the label, which a
lookup compares, so a forged or accidental key collision is a miss, never another
sequence's cache. put() writes the blocks not yet stored (or stored for other token ids:
a collision is written over); longest_prefix() reads blocks 0, 1, ... until one is
missing, damaged or foreign, and joins what it found.

Several processes may share a store: every file is written to a temporary name and
renamed (readers see no file or a whole one; two writers of one block both write whole
files, and either wins), and a reader that finds a damaged file removes it. Last use is the
file's modification time (set on put and on every hit); eviction removes the least recently
used files first, a prefix's deeper blocks before its first ones."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .. import tempfiles
from ..errors import CorruptContainer, FpfsError, StoreError
from ..store import is_url, join_url
from .cache_file import (SEQ_DIM, CacheFile, Header, encode, identity, parse,
                         read_header)
from .caches import (CacheMismatch, UnsupportedCache, as_spec, build_cache, cache_layers,
                     write_parts)

log = logging.getLogger("fpfs")

CONFIG_NAME = "fpfs-kv-store.json"
BLOCKS_DIR = "blocks"
SUFFIX = ".fpkc"
DEFAULT_BLOCK_SIZE = 256
MAX_BLOCK_SIZE = 1 << 20
LOW_WATER = 0.9         # eviction goes down to this share of the budget: fewer rescans
HEAD_SIZE = 48          # cache_file's fixed header: what ls reads of each entry
MAX_HEAD = 64 << 20     # a block whose header, label and token ids claim more is not read


def chain_keys(token_ids: np.ndarray, block_size: int, label: str) -> Iterator[str]:
    """The key of every whole block of token_ids (uint32), first block first."""
    key = hashlib.sha256(b"fpfs-kv-prefix-1\0" + struct.pack("<I", block_size) +
                         label.encode("utf-8")).digest()
    raw = token_ids.astype("<u4").tobytes()
    step = 4 * block_size
    for j in range(len(token_ids) // block_size):
        key = hashlib.sha256(key + raw[j * step:(j + 1) * step]).digest()
        yield key.hex()


def entry_name(key: str, depth: int) -> str:
    """Block depth (0: the first) of the prefix with this key, relative to the root."""
    return f"{BLOCKS_DIR}/{key[:2]}/{key}-{depth}{SUFFIX}"


def entry_depth(name: str) -> Optional[int]:
    base = name.rsplit("/", 1)[-1]
    if not base.endswith(SUFFIX) or "-" not in base:
        return None
    digits = base[:-len(SUFFIX)].rsplit("-", 1)[1]
    return int(digits) if digits.isdigit() else None


def token_array(token_ids) -> np.ndarray:
    """Token ids (a list, numpy array or torch tensor of shape [n] or [1, n]) as uint32."""
    if hasattr(token_ids, "detach"):
        token_ids = token_ids.detach().cpu().numpy()
    ids = np.asarray(token_ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"token ids must be one sequence of integers, not shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 32):
        raise ValueError("token ids must lie in [0, 2**32)")
    return ids.astype(np.uint32)


class NotAStore(FpfsError):
    """The root holds no (or a foreign) K/V prefix store configuration."""


@dataclass(frozen=True)
class StoreEntry:
    name: str               # relative to the store's root
    tokens: int             # the prefix it ends: (depth + 1) * block size
    size: int
    last_used_ns: int


# -- where the files are -------------------------------------------------------------------
class _LocalTree:
    """Entries as files under a local directory."""

    def __init__(self, root: str):
        self.root = root
        self.config = b""               # rewritten if the store is deleted under us

    def path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    def read(self, name: str, size: Optional[int] = None) -> Optional[bytes]:
        try:
            with open(self.path(name), "rb") as f:
                return f.read() if size is None else f.read(size)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, name: str, parts: List[bytes]) -> None:
        path = self.path(name)
        try:
            tempfiles.write_atomic(path, parts, durable=False)
        except FileNotFoundError:           # its directory is new, or was deleted under us
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if self.config and not os.path.exists(self.path(CONFIG_NAME)):
                self.write_config(self.config)
            tempfiles.write_atomic(path, parts, durable=False)

    def touch(self, names: Sequence[str], ns: int) -> None:
        for name in names:
            try:
                os.utime(self.path(name), ns=(ns, ns))
            except FileNotFoundError:       # evicted meanwhile
                pass

    def remove(self, name: str) -> bool:
        try:
            os.unlink(self.path(name))
            return True
        except FileNotFoundError:
            return False

    def entries(self) -> Iterator[Tuple[str, int, int]]:
        """(name, size, mtime_ns) of every file under the blocks directory."""
        top = os.path.join(self.root, BLOCKS_DIR)
        try:
            subdirs = sorted(os.scandir(top), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for sub in subdirs:
            try:
                files = list(os.scandir(sub.path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for f in files:
                if f.name.endswith(SUFFIX) and not f.name.startswith(tempfiles.TMP_PREFIX):
                    try:
                        st = f.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield f"{BLOCKS_DIR}/{sub.name}/{f.name}", st.st_size, st.st_mtime_ns

    def write_config(self, data: bytes) -> None:
        self.config = data
        os.makedirs(self.root, exist_ok=True)
        tempfiles.write_atomic(self.path(CONFIG_NAME), [data], durable=True)

    def remove_stale(self) -> int:
        return tempfiles.remove_stale(self.root) if os.path.isdir(self.root) else 0


class _Bucket:
    """Entries as objects under an s3:// prefix (no last-use times: no eviction)."""

    def __init__(self, root: str):
        from ..store.s3 import default_store
        self.root = root.rstrip("/")
        self.store = default_store()
        self.config = b""

    def read(self, name: str, size: Optional[int] = None) -> Optional[bytes]:
        from ..errors import ObjectChanged
        try:
            return self.store.get(join_url(self.root, name), 0 if size else None, size).data
        except ObjectChanged:               # none (a 404)
            return None

    def write(self, name: str, parts: List[bytes]) -> None:
        write_parts(join_url(self.root, name), parts, durable=False)

    def touch(self, names: Sequence[str], ns: int) -> None:
        pass

    def remove(self, name: str) -> bool:
        return False                        # a damaged object stays a miss

    def entries(self) -> Iterator[Tuple[str, int, int]]:
        prefix = join_url(self.root, BLOCKS_DIR) + "/"
        for info in self.store.list(prefix):
            if info.url.endswith(SUFFIX):
                yield info.url[len(self.root) + 1:], info.size, info.mtime_ns

    def write_config(self, data: bytes) -> None:
        self.config = data
        self.store.put_bytes(join_url(self.root, CONFIG_NAME), data)

    def remove_stale(self) -> int:
        return 0


# -- the store -----------------------------------------------------------------------------
class PrefixStore:
    """K/V caches of token sequences by block prefix (see the module's docstring).

    root: a directory (made if missing) or s3://BUCKET/PREFIX. block_size: tokens per
    block (default: the store's, else 256). label: names the model the caches come from
    (its repository and revision, say): caches of other weights must be stored under
    another label, since nothing in a cache tells two models of one shape apart. max_size:
    bytes kept on local disk, least recently used blocks evicted past it (None: no limit;
    `fpfs kv gc` applies one from outside)."""

    def __init__(self, root: str, block_size: Optional[int] = None, label: str = "",
                 max_size: Optional[int] = None, create: bool = True):
        self.root = root
        self.label = label
        self.max_size = max_size
        self._files = _Bucket(root) if is_url(root) else _LocalTree(root)
        self.block_size = self._open(block_size, create)
        self._used: Optional[int] = None        # bytes on disk, as of the last scan + puts
        self.counts = {"hits": 0, "misses": 0, "hit_tokens": 0, "damaged": 0,
                       "mismatched": 0, "read_errors": 0, "blocks_written": 0,
                       "bytes_written": 0, "evicted": 0}

    def _open(self, block_size: Optional[int], create: bool) -> int:
        if block_size is not None and not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be 1..{MAX_BLOCK_SIZE}")
        raw = self._files.read(CONFIG_NAME)
        if raw is None:
            if not create:
                raise NotAStore(f"{self.root}: not a K/V prefix store (no {CONFIG_NAME})")
            block_size = block_size or DEFAULT_BLOCK_SIZE
            self._files.write_config(_config_bytes(block_size))
            return block_size
        stored = _parse_config(raw, self.root)
        if block_size is not None and block_size != stored:
            raise FpfsError(f"{self.root}: the store's blocks are of {stored} tokens, "
                            f"not {block_size}")
        self._files.config = raw
        return stored

    # -- writing -------------------------------------------------------------------------
    def put(self, token_ids, cache) -> int:
        """Store the cache of token_ids (a DynamicCache whose first tokens are these) for
        every whole block of them it covers; blocks already stored are kept. Returns the
        tokens now stored for this sequence."""
        ids = token_array(token_ids)
        pairs = cache_layers(cache)
        if any(k.shape[0] != 1 for k, _ in pairs):
            raise UnsupportedCache("a prefix store keeps caches of one sequence (batch 1)")
        n = self.block_size
        blocks = min(len(ids), pairs[0][0].shape[SEQ_DIM]) // n
        names = []
        for depth, key in enumerate(chain_keys(ids[:blocks * n], n, self.label)):
            name = entry_name(key, depth)
            names.append(name)
            if self._holds(name, ids[:(depth + 1) * n]):
                continue
            a, b = depth * n, (depth + 1) * n
            parts = encode([(k[:, :, a:b], v[:, :, a:b]) for k, v in pairs], ids[:b],
                           self.label, first=a)
            self._files.write(name, parts)
            size = sum(len(p) for p in parts)
            self.counts["blocks_written"] += 1
            self.counts["bytes_written"] += size
            if self._used is not None:
                self._used += size
        self._files.touch(names, time.time_ns())
        if self.max_size is not None and names and not is_url(self.root):
            if self._used is None or self._used > self.max_size:
                self._evict(self.max_size, int(self.max_size * LOW_WATER))
        return blocks * n

    def _holds(self, name: str, ids: np.ndarray) -> bool:
        """Whether name is a block of these token ids (its head says so; damage past the
        head is found, and the block removed, by the next lookup). A block of other ids
        under this name - a key collision, or a forged block - is written over."""
        head = self._files.read(name, HEAD_SIZE)
        if head is None:
            return False
        try:
            h = read_header(head, name)
            if h.table_end > MAX_HEAD:
                return False
            label, tokens = identity(self._files.read(name, h.table_end) or b"", h, name)
        except CorruptContainer:
            return False
        return label == self.label and tokens is not None and np.array_equal(tokens, ids)

    # -- reading -------------------------------------------------------------------------
    def longest_prefix(self, token_ids, expect=None, device=None):
        """(n, cache): the cache of the first n tokens of token_ids, for the largest n
        (a multiple of the block size) stored; (0, None) when not even the first block is.
        expect: a model, its config or a CacheSpec; blocks of another shape or dtype are
        a miss. Damaged blocks are a miss (and removed); errors reading the store are a
        miss (logged)."""
        ids = token_array(token_ids)
        spec = as_spec(expect)
        found: List[Tuple[str, CacheFile]] = []
        for depth, key in enumerate(chain_keys(ids, self.block_size, self.label)):
            name = entry_name(key, depth)
            saved = self._read_entry(name, ids, depth, found, spec)
            if saved is None:
                break
            found.append((name, saved))
        pairs = self._decode(found)
        if not pairs:
            self.counts["misses"] += 1
            return 0, None
        self._files.touch([name for name, _ in found], time.time_ns())
        tokens = found[0][1].seq_length * len(found)
        self.counts["hits"] += 1
        self.counts["hit_tokens"] += tokens
        return tokens, build_cache(pairs, device)

    def _read_entry(self, name: str, ids: np.ndarray, depth: int, found, spec):
        """The checked block at name, or None (a miss, counted)."""
        try:
            data = self._files.read(name)
        except (OSError, StoreError) as exc:
            log.warning("K/V store %s: reading %s failed: %s", self.root, name, exc)
            self.counts["read_errors"] += 1
            return None
        if data is None:
            return None
        try:
            saved = parse(data, name)
            self._check_entry(saved, name, ids, depth, found[0][1] if found else None)
            if spec is not None:
                spec.check(saved, name)
        except CorruptContainer as exc:
            self._damaged(name, exc)
            return None
        except CacheMismatch as exc:
            log.info("K/V store %s: %s", self.root, exc)
            self.counts["mismatched"] += 1
            return None
        return saved

    def _check_entry(self, saved: CacheFile, name: str, ids: np.ndarray, depth: int,
                     first: Optional[CacheFile]) -> None:
        n = self.block_size
        if saved.label != self.label or saved.first != depth * n or saved.seq_length != n:
            raise CacheMismatch(f"{name}: a block of another store, label or position")
        end = (depth + 1) * n
        if saved.token_ids is None or not np.array_equal(saved.token_ids, ids[:end]):
            raise CacheMismatch(f"{name}: a block of other token ids (a key collision)")
        if any(k.shape[0] != 1 for k, _ in saved.heads):
            raise CacheMismatch(f"{name}: a batch of sequences")
        if first is not None and _layout(saved) != _layout(first):
            raise CacheMismatch(f"{name}: layers unlike the blocks before it")

    def _decode(self, found: List[Tuple[str, CacheFile]]) -> list:
        """Every layer's (keys, values) over the found blocks, cut at the first block
        whose data turns out damaged."""
        import torch
        blocks = []
        for name, saved in found:
            try:
                blocks.append(saved.tensors())
            except CorruptContainer as exc:
                self._damaged(name, exc)
                del found[len(blocks):]
                break
        if len(blocks) == 1:
            return blocks[0]
        return [(torch.cat([b[i][0] for b in blocks], dim=SEQ_DIM),
                 torch.cat([b[i][1] for b in blocks], dim=SEQ_DIM))
                for i in range(len(blocks[0]))] if blocks else []

    def _damaged(self, name: str, exc: Exception) -> None:
        log.warning("K/V store %s: removing a damaged block: %s", self.root, exc)
        self.counts["damaged"] += 1
        self._files.remove(name)

    # -- listing and eviction ------------------------------------------------------------
    def entries(self) -> List[StoreEntry]:
        out = []
        for name, size, mtime in self._files.entries():
            depth = entry_depth(name)
            if depth is not None:
                out.append(StoreEntry(name, (depth + 1) * self.block_size, size, mtime))
        return out

    def header(self, entry: StoreEntry) -> Optional[Header]:
        """The entry's fixed header (unchecked beyond magic and version), or None if it
        is gone or not an FPKC file."""
        data = self._files.read(entry.name, HEAD_SIZE)
        try:
            return read_header(data, entry.name) if data is not None else None
        except CorruptContainer:
            return None

    def gc(self, max_size: int) -> Tuple[int, int]:
        """Evict least recently used blocks (deeper ones first among equals) until the
        store holds at most max_size bytes; temporary files of dead writers go too.
        Returns (blocks removed, bytes freed)."""
        if is_url(self.root):
            raise FpfsError("eviction works on local stores only (use the bucket's "
                            "lifecycle rules)")
        self._files.remove_stale()
        return self._evict(max_size, max_size)

    def _evict(self, limit: int, target: int) -> Tuple[int, int]:
        """Over limit bytes: evict down to target bytes."""
        entries = self.entries()
        used = sum(e.size for e in entries)
        removed = freed = 0
        if used > limit:
            for e in sorted(entries, key=lambda e: (e.last_used_ns, -e.tokens)):
                if used - freed <= target:
                    break
                if self._files.remove(e.name):
                    removed += 1
                    freed += e.size
        self._used = used - freed
        self.counts["evicted"] += removed
        return removed, freed


def _layout(saved: CacheFile):
    """What every block of one cache shares: per layer, dtype and shape but the length."""
    return [tuple((h.dtype, h.shape[:SEQ_DIM] + h.shape[SEQ_DIM + 1:]) for h in pair)
            for pair in saved.heads]


def _config_bytes(block_size: int) -> bytes:
    return json.dumps({"fpfs_kv_store": 1, "block_size": block_size}).encode() + b"\n"


def _parse_config(raw: bytes, root: str) -> int:
    try:
        config = json.loads(raw)
        size = config["block_size"]
        ok = config.get("fpfs_kv_store") == 1 and type(size) is int and \
            1 <= size <= MAX_BLOCK_SIZE
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise NotAStore(f"{root}/{CONFIG_NAME}: not a K/V prefix store configuration "
                        f"(version 1, block_size 1..{MAX_BLOCK_SIZE})")
    return size


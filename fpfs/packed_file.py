"""Random access to the original bytes of a container: PackedFile.pread(offset, size)
bisects the chunk table, takes decoded chunks from the cache (or decodes them, once) and
slices. This is the whole read path; the FUSE layer only translates paths and errors."""
from __future__ import annotations

import bisect
import threading
from typing import Optional, Union

import numpy as np

from .bases import MAX_CHAIN, find_base
from .cache import ChunkCache, DecodeTimer
from .container import Container
from .errors import CorruptContainer, MissingBase
from .readahead import GROUP_BYTES, ReadAhead, Streams
from .store import Store, StoreObject, store_for

class PackedFile:
    def __init__(self, source: Union[str, StoreObject, Container],
                 cache: Optional[ChunkCache] = None,
                 readahead: Optional[ReadAhead] = None,
                 root: Optional[str] = None, _depth: int = 0, store: Optional[Store] = None):
        """source: a .fpz path or s3:// URL, an opened StoreObject, or an already open
        Container (then shared, not closed separately). root: the top of the tree to look
        for a delta's base in (bases.py); store: where to look (default: the store the
        source came from). A delta's base is opened here too, sharing the cache (so N
        fine-tunes of one base decode each base chunk once); MissingBase if it cannot be
        found or is not the file the delta was coded against. readahead: decode ahead of
        sequential readers of read_into on its pool (fpfs/readahead.py); None: never."""
        if isinstance(source, str):
            source = (store or store_for(source)).open(source)
        self.container = source if isinstance(source, Container) else Container(source)
        self.store = store or self.container.source.store
        self.path = self.container.path
        self.size = self.container.original_size
        # Without a shared cache, keep the last few chunks so small sequential reads
        # (io.BufferedReader, json parsers) do not decode a chunk per call.
        self.cache = cache if cache is not None else ChunkCache(4 * self.container.chunk_size)
        self.base: Optional[PackedFile] = None
        try:
            if self.container.base is not None:
                self.base = self._open_base(root, _depth)
                self.container.base_reader = self.base.read_cached
        except BaseException:
            if not isinstance(source, Container):
                self.container.close()
            raise
        self._readahead = readahead if readahead is not None and readahead.window else None
        self._streams = Streams()
        self._prefix = np.frombuffer(self.container.prefix, dtype=np.uint8)
        # Behind the mount (readahead given) every byte read lands in the kernel's page
        # cache, which serves it again: a chunk whose bytes have all been read is dropped
        # from the chunk cache and not decoded ahead again (_served), and of chunks partly
        # read, how many bytes have been (_taken; the kernel asks for each page once).
        # Arrays, not dicts: 5 bytes a chunk however many chunks random readers touch.
        mounted = readahead is not None
        self._served = bytearray(len(self.container)) if mounted else bytearray()
        self._taken = np.zeros(len(self.container) if mounted else 0, dtype=np.uint32)
        self._taken_lock = threading.Lock()
        # Where tensors start: chunks are cut at multiples of the chunk size, so a chunk
        # that starts elsewhere starts a region.
        offsets = self.container.table["orig_offset"]
        self._region_starts = offsets[offsets % self.container.chunk_size != 0].tolist() \
            if self._readahead else []

    def _open_base(self, root: Optional[str], depth: int) -> "PackedFile":
        ref = self.container.base
        if depth >= MAX_CHAIN:
            raise MissingBase(f"{self.path}: chain of bases deeper than {MAX_CHAIN}")
        path = find_base(self.path, ref.sha256, root, self.store.exists)
        base = PackedFile(path, self.cache, root=root, _depth=depth + 1, store=self.store)
        if base.container.sha256 != ref.sha256 or base.size != ref.size:
            base.close()
            raise MissingBase(f"{self.path}: {path} is not its base (SHA-256 differs)")
        return base

    @property
    def depth(self) -> int:
        """How many bases deep this file's chain goes (0: not a delta)."""
        return 0 if self.base is None else 1 + self.base.depth

    def read_cached(self, offset: int, size: int) -> np.ndarray:
        """size original bytes at offset, every chunk through the cache (the read path of a
        base: the fine-tunes that share it then share its decoded chunks too). Read-only:
        a range inside one chunk is a view of the cached chunk, not a copy."""
        pos, end = offset, offset + size
        if end > self.size or offset < 0:
            raise CorruptContainer(f"{self.path}: a delta reads past the end of its base")
        plen = len(self._prefix)
        if pos >= plen and size:
            index = self.container.chunk_index(pos)
            start, length = self.container.chunk_span(index)
            if end <= start + length:       # the usual case: same layout, aligned chunks
                return self.chunk(index)[pos - start:end - start]
        out = np.empty(size, dtype=np.uint8)
        if pos < min(end, plen):
            stop = min(end, plen)
            out[:stop - pos] = self._prefix[pos:stop]
            pos = stop
        while pos < end:
            index = self.container.chunk_index(pos)
            start, length = self.container.chunk_span(index)
            stop = min(end, start + length)
            out[pos - offset:stop - offset] = self.chunk(index)[pos - start:stop - start]
            pos = stop
        return out

    @property
    def identity(self):
        return self.container.identity

    def chunk(self, index: int) -> np.ndarray:
        """Decoded chunk `index` (through the cache; shared, do not modify). Raises CorruptChunk."""
        return self.cache.get((self.container.identity, index),
                              lambda: self.container.decode(index))

    def read_into(self, offset: int, out) -> int:
        """Copy the original bytes at offset into the writable buffer out (fewer bytes only
        at end of file); returns the count. Whole chunks that nobody has decoded or is
        decoding are decoded straight into out - no allocation, no page faults, no second
        copy - and only the partly read chunks at the edges go through the cache, where the
        neighbouring request will find them. A read that continues a sequential stream
        first has the chunks after it decoded ahead (readahead); behind the mount, a chunk
        leaves the cache once all its bytes have been read. Raises CorruptChunk (nothing
        returned is ever wrong)."""
        dst = np.frombuffer(out, dtype=np.uint8)
        if offset < 0:
            raise ValueError("negative offset")
        end = min(offset + len(dst), self.size)
        pos = offset
        plen = len(self._prefix)
        if pos < min(end, plen):
            stop = min(end, plen)
            dst[:stop - pos] = self._prefix[pos:stop]
            pos = stop
        if pos < end:
            if self._readahead is not None:
                ahead = self._streams.note(offset, end, self._readahead.window,
                                           self._region_start)
                if ahead is not None:
                    self._decode_ahead(*ahead)
            self.prepare(pos, end)
        cache, identity = self.cache, self.container.identity
        while pos < end:
            index = self.container.chunk_index(pos)
            start, length = self.container.chunk_span(index)
            stop = min(end, start + length)
            key = (identity, index)
            cached = cache.lookup(key)
            if cached is None and pos == start and stop == start + length and cache.claim(key):
                # A run of whole chunks nobody has decoded or is decoding: claimed (so the
                # pool does not decode them too) and decoded together into out.
                claimed = [key]
                while stop < end and index + len(claimed) < len(self.container):
                    nstart, nlength = self.container.chunk_span(index + len(claimed))
                    if nstart + nlength > end or \
                            not cache.claim((identity, index + len(claimed))):
                        break
                    claimed.append((identity, index + len(claimed)))
                    stop = nstart + nlength
                timer = DecodeTimer()
                try:
                    with timer:
                        self.container.decode_run_into(
                            index, index + len(claimed) - 1,
                            memoryview(dst[pos - offset:stop - offset]))
                finally:
                    for k in claimed:
                        cache.abandon(k)
                cache.record_direct(stop - pos, timer.seconds)
                if self._served:
                    self._served[index:index + len(claimed)] = b"\1" * len(claimed)
            else:
                chunk = cached if cached is not None else self.chunk(index)
                dst[pos - offset:stop - offset] = chunk[pos - start:stop - start]
                if self._served:
                    self._took(index, stop - pos, length)
            pos = stop
        return max(0, end - offset)

    def _took(self, index: int, nbytes: int, length: int) -> None:
        """A reader behind the page cache took nbytes more of chunk index: once it has
        taken them all, the chunk leaves the cache (a chunk read twice, as after the
        kernel dropped its pages, only leaves early and is decoded again if read again)."""
        with self._taken_lock:
            taken = int(self._taken[index]) + nbytes
            if taken < length:
                self._taken[index] = taken
                return
            self._taken[index] = 0
            self._served[index] = 1
        self.cache.discard((self.container.identity, index))

    def _region_start(self, pos: int) -> int:
        """Where the first region (tensor) at or after pos starts (the file size if none)."""
        i = bisect.bisect_left(self._region_starts, pos)
        return self._region_starts[i] if i < len(self._region_starts) else self.size

    def _decode_ahead(self, start: int, end: int) -> None:
        """Have the pool decode the chunks of [start, end) that nobody has, in groups of
        about GROUP_BYTES, as far as the ahead budget allows."""
        c = self.container
        target, end = end, min(end, self.size)
        start = max(start, len(self._prefix))
        if start >= end:
            return
        identity, cache = c.identity, self.cache
        group: list = []
        group_bytes = 0
        index, last = c.chunk_index(start), c.chunk_index(end - 1)
        while index <= last:
            cstart, length = c.chunk_span(index)
            key = (identity, index)
            flight = None if self._served[index] else cache.claim(key, length)
            if flight is None and not self._served[index] and not cache.contains(key):
                # no room, even after dropping what stopped readers left: go on later
                self._streams.scheduled_to(target, cstart)
                break
            if flight is not None:
                group.append((index, flight))
                group_bytes += length
            if group and (flight is None or group_bytes >= GROUP_BYTES):
                self._readahead.pool.submit(self._decode_group, group)
                group, group_bytes = [], 0
            index += 1
        if group:
            self._readahead.pool.submit(self._decode_group, group)

    def _decode_group(self, group: list) -> None:
        """Pool task: decode the claimed chunks of group ([(index, flight)], consecutive)
        into the cache, but those a reader took over meanwhile. On any error they are
        given up, and the readers that want them decode them themselves (and see the
        error, or the right bytes)."""
        mine = self.cache.begin([flight for _, flight in group])
        run: list = []
        for (index, _), ours in zip(group + [(-1, None)], mine + [False]):
            if ours:
                run.append(index)
            elif run:
                self._decode_run_ahead(run[0], run[-1])
                run = []

    def _decode_run_ahead(self, first: int, last: int) -> None:
        c = self.container
        keys = [(c.identity, i) for i in range(first, last + 1)]
        start = c.chunk_span(first)[0]
        end = sum(c.chunk_span(last))
        timer = DecodeTimer()
        try:
            buf = np.empty(end - start, dtype=np.uint8)
            with timer:
                c.decode_run_into(first, last, memoryview(buf))
        except BaseException:
            for k in keys:
                self.cache.abandon(k)
            return
        share = timer.seconds / (end - start)
        for k, i in zip(keys, range(first, last + 1)):
            cstart, length = c.chunk_span(i)
            self.cache.fulfil(k, buf[cstart - start:cstart - start + length], share * length)

    def prepare(self, pos: int, end: int) -> None:
        """Tell the store which chunks of [pos, end) are about to be decoded (not those the
        cache holds), so a remote one fetches them together (in requests of its own size,
        however the range is then cut among decode threads)."""
        first, last = self.container.chunk_index(pos), self.container.chunk_index(end - 1)
        identity = self.container.identity
        missing = [i for i in range(first, last + 1)
                   if not self.cache.contains((identity, i))]
        if missing:
            self.container.prepare(missing[0], missing[-1])

    def pread(self, offset: int, size: int) -> bytes:
        """Up to size original bytes at offset (fewer only at end of file)."""
        if size < 0:
            raise ValueError("negative size")
        buf = bytearray(max(0, min(size, self.size - offset)))
        n = self.read_into(offset, buf)
        return bytes(buf[:n]) if n < len(buf) else bytes(buf)

    def close(self) -> None:
        self.container.close()
        if self.base is not None:
            self.base.close()

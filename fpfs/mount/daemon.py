"""Run the FUSE loop: options, readiness (a pipe for `fpfs mount`, sd_notify for systemd),
and the kernel readahead that lets buffered reads arrive as 1 MiB requests."""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import socket
import threading
import time
from typing import Optional

from ..readahead import DEFAULT_WINDOW
from .ops import fuse
from ..store.remote_tree import RemoteConfig
from .remote_ops import RemoteOperations
from .write_ops import FpfsOperations

log = logging.getLogger("fpfs.mount")
READAHEAD_KB = 1024
MAX_BACKGROUND = 64
# libfuse's own default of worker threads, said out loud: libfuse 3.14 takes "no limit on
# idle threads" (its default, UINT_MAX) for an invalid value and logs "Ignoring invalid max
# threads value 4294967295" at every mount unless max_idle_threads is given. With as many
# idle threads allowed as there can be threads, none is ever ended (each keeps its Python
# thread state, _keep_thread_state), as before.
FUSE_THREADS = 10


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


def raise_readahead(mountpoint: str) -> None:
    """Buffered reads reach a FUSE fs as 128 KiB requests until the bdi readahead is raised
    (needs root; measured +45-100 % sequential throughput)."""
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READAHEAD_KB))
    except OSError as exc:
        log.info("could not raise readahead (%s): %s", path, exc)


def tune_malloc() -> None:
    """Serve decoded-chunk buffers from the heap, not fresh mmaps: with glibc's default
    128 KiB threshold every 256 KiB chunk costs page faults and kernel zeroing (a quarter
    of the daemon's time in a profile of cold sequential reads)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)       # M_MMAP_THRESHOLD: 32 MiB (glibc's maximum)
        libc.mallopt(-1, 64 << 20)       # M_TRIM_THRESHOLD: keep some freed memory for reuse
        libc.mallopt(-8, 2)              # M_ARENA_MAX: FUSE's many threads share 2 arenas,
                                         # so freed chunks are reused, not stranded per thread
    except (OSError, AttributeError):
        pass


_pinned = threading.local()


def _keep_thread_state() -> None:
    """Keep this libfuse thread's Python thread state from one callback to the next.
    ctypes creates one for a thread Python did not start on every callback and deletes it
    on return (a new frame stack mapped and unmapped per FUSE request); one
    PyGILState_Ensure never released keeps it (threading.local lives in it, so this runs
    once per thread)."""
    if not getattr(_pinned, "kept", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _pinned.kept = True


class _FUSE(fuse.FUSE):
    """mfusepy's FUSE with a read and a write that hand our operations libfuse's buffer,
    so decoded bytes are copied once, straight into it (mfusepy would memmove a returned
    object), and written bytes go to the staging file without a copy in between."""

    def _wrapper(self, func, *args, **kwargs):
        _keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def read(self, path, buf, size, offset, fip):
        return self.operations.read_into(path, ctypes.cast(buf, ctypes.c_void_p).value,
                                         size, offset, fip.contents)

    def write(self, path, buf, size, offset, fip):
        """libfuse's buffer as a memoryview, valid for the call (mfusepy would copy it
        into a bytes object first: a third copy of every byte saved)."""
        data = memoryview((ctypes.c_char * size).from_address(
            ctypes.cast(buf, ctypes.c_void_p).value or 0)) if size else b""
        return self.operations.write(self._decode(path), data, offset, fip.contents)

    # mfusepy drops the open file of these (libfuse3 passes it for ftruncate and, with
    # a NULL path, for an open file it has no name for) and turns UTIME_NOW/UTIME_OMIT
    # into times: pass both through.
    def chmod_fuse_3(self, path, mode, fip):
        return self.operations.chmod(self._decode(path), mode, _fi(fip))

    def chown_fuse_3(self, path, uid, gid, fip):
        uid = -1 if ctypes.c_uint32(uid + 1).value == 0 else uid
        gid = -1 if ctypes.c_uint32(gid + 1).value == 0 else gid
        return self.operations.chown(self._decode(path), uid, gid, _fi(fip))

    def truncate_fuse_3(self, path, length, fip):
        return self.operations.truncate(self._decode(path), length, _fi(fip))

    def utimens_fuse_3(self, path, buf, fip):
        times = None
        if buf:
            pair = (buf.contents.actime, buf.contents.modtime)
            times = tuple((ts.tv_sec, ts.tv_nsec) for ts in pair)
        return self.operations.utimens(self._decode(path), times, _fi(fip))

    def _decode(self, path):
        return None if path is None else path.decode(self.encoding, self.errors)


def _fi(fip):
    """The fuse_file_info behind a possibly NULL pointer."""
    return fip.contents if fip else None


class _Announcing:
    """Readiness for any fpfs operations class: tells `fpfs mount` (a pipe) and systemd
    once the mount answers, and raises the mount's readahead."""

    attr_timeout = 1.0

    def __init__(self, *args, mountpoint: str, ready_fd: Optional[int], **kwargs):
        super().__init__(*args, **kwargs)
        self._mountpoint = mountpoint
        self._ready_fd = ready_fd

    def init_with_config(self, conn, config):
        if conn is not None and hasattr(conn, "max_readahead"):
            conn.max_readahead = READAHEAD_KB * 1024
        if conn is not None and hasattr(conn, "max_background"):
            conn.max_background = MAX_BACKGROUND
            conn.congestion_threshold = MAX_BACKGROUND * 3 // 4
        if config is not None:
            # Files are immutable while their backing file stays the same: FpfsOperations.open
            # keeps the page cache across opens and drops it when a backing file was replaced
            # (auto_cache would re-check only after attr_timeout and serve stale pages).
            config.auto_cache = 0
            config.entry_timeout = 1.0
            config.attr_timeout = self.attr_timeout
        threading.Thread(target=self._announce, name="fpfs-ready", daemon=True).start()

    def _announce(self) -> None:
        deadline = time.monotonic() + 30
        while not os.path.ismount(self._mountpoint):
            if time.monotonic() > deadline:
                log.error("mount did not appear at %s", self._mountpoint)
                return
            time.sleep(0.01)
        raise_readahead(self._mountpoint)
        log.info("mounted %s at %s (cache %d MiB)", self.root, self._mountpoint,
                 self.cache.budget >> 20)
        if self._ready_fd is not None:
            try:
                os.write(self._ready_fd, b"ready\n")
                os.close(self._ready_fd)
            except OSError:
                pass
        sd_notify("READY=1\nSTATUS=serving " + self.root)


class _LocalOperations(_Announcing, FpfsOperations):
    pass


class _RemoteOperations(_Announcing, RemoteOperations):
    pass


def run(backing: str, mountpoint: str, cache_bytes: int, threads: int,
        allow_other: bool = False, debug: bool = False, ready_fd: Optional[int] = None,
        writable: bool = False, decode_ahead: int = DEFAULT_WINDOW,
        remote: Optional[RemoteConfig] = None, metrics: Optional[str] = None) -> None:
    """Serve backing (a local tree, or with remote an s3:// URL) at mountpoint until
    unmounted; with metrics (HOST:PORT), Prometheus metrics there too."""
    tune_malloc()
    if remote is not None:
        ops = _RemoteOperations(backing, remote, cache_bytes, threads, decode_ahead,
                                mountpoint=mountpoint, ready_fd=ready_fd)
    else:
        ops = _LocalOperations(backing, cache_bytes, threads, writable, decode_ahead,
                               mountpoint=mountpoint, ready_fd=ready_fd)
    if metrics:
        from ..metrics import serve
        serve(metrics, ops)
    # Not hard_remove: libfuse then keeps an unlinked open file reachable under a hidden
    # name (FpfsOperations moves it out of the user's directory), so fstat, fchmod and
    # futimens of it work as on a local filesystem.
    options = dict(foreground=True, nothreads=False, ro=not writable, default_permissions=True,
                   fsname="fpfs:" + ops.root, subtype="fpfs", debug=debug,
                   max_threads=FUSE_THREADS, max_idle_threads=FUSE_THREADS)
    if writable:
        # Hard links show one inode number (the backing one); and libfuse gives every
        # name its own node, so a change through one name (chmod, link, unlink) must not
        # leave the other names' attributes cached.
        options["use_ino"] = True
        ops.attr_timeout = 0.0
    if allow_other:
        options["allow_other"] = True
    # Everything allocated so far lives as long as the daemon: out of the cyclic GC's
    # full collections, which otherwise walk it all every few thousand requests.
    gc.freeze()
    try:
        _FUSE(ops, mountpoint, raw_fi=True, **options)
    except RuntimeError as exc:
        # fuse_main returns 8 when its loop ends with a non-zero status, which is what
        # libfuse's own SIGTERM/SIGINT/SIGHUP handlers leave (they exit the loop and
        # unmount): a requested stop, not a crash (systemd stops us with SIGTERM).
        if exc.args != (8,):
            raise
        log.info("stopped by a signal (libfuse loop status 8)")
    finally:
        sd_notify("STOPPING=1")
        log.info("unmounted %s", mountpoint)

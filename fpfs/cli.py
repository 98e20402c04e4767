"""The `fpfs` command line: compress, decompress, verify, stats, mount, umount, status.

User errors print one line (`fpfs: error: ...`) and exit non-zero; never a traceback."""
from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

from . import __version__
from .codecs import DEFAULT_MIN_SAVING_PPM
from .bases import BASES_DIR, MAX_CHAIN
from .compress import (CompressResult, compress_file, compress_if_smaller, decompress_file,
                       verify_file, worth_compressing)
from .container import DEFAULT_CHUNK_SIZE, SUFFIX, is_container, validate_chunk_size
from .deltas import choose_base
from .errors import CorruptContainer, FpfsError, NotSafetensors
from .formats import Layout, detect
from .readahead import DEFAULT_WINDOW
from .progress import ProgressBar, human_bytes
from .stats import container_stats, merge_stats
from .store import is_url, split_url
from .store.s3 import S3Settings
from .store.s3 import configure as configure_s3
from .tempfiles import copy_file_atomic, remove_stale
from .tree import copy_link, copy_metadata, regular_files, walk

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def parse_size(text: str) -> int:
    """'1G', '512MiB', '4096' -> bytes (binary units)."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    num, unit = (s[:-1], s[-1]) if s and s[-1] in "kmgt" else (s, "")
    try:
        value = int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512M or 2G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("size must not be negative")
    return value


class UserError(Exception):
    pass


# -- compress ------------------------------------------------------------------------------
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
        usable = [(p, l) for p, l in self.candidates if self.depth.get(p, 0) < MAX_CHAIN]
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
    from .store.publish import publish
    from .store.s3 import default_store
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


# -- decompress / verify / stats -----------------------------------------------------------
def cmd_decompress(args) -> int:
    src, dst = args.src, args.dst
    if is_url(src):
        return _decompress_from_store(src, dst)
    if not os.path.lexists(src):
        raise UserError(f"{src}: no such file or directory")
    if os.path.isfile(src):
        if not is_container(src):
            raise UserError(f"{src}: not an fpfs container")
        if os.path.isdir(dst):
            name = os.path.basename(src)
            dst = os.path.join(dst, name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name)
        decompress_file(src, dst)
        copy_metadata(src, dst)
        return EXIT_OK
    os.makedirs(dst, exist_ok=True)
    for kind, path, rel in walk(src):
        out = os.path.join(dst, rel)
        if kind == "dir":
            os.makedirs(out, exist_ok=True)
        elif kind == "link":
            copy_link(path, out)
        elif kind == "file" and path.endswith(SUFFIX) and is_container(path):
            decompress_file(path, out[:-len(SUFFIX)])
            copy_metadata(path, out[:-len(SUFFIX)])
        elif kind == "file":
            copy_file_atomic(path, out)
    return EXIT_OK


def _decompress_from_store(url: str, dst: str) -> int:
    from .store.download import download_tree
    targets, tree = _remote_containers(url)
    if tree is None:
        if os.path.isdir(dst):
            name = url.rsplit("/", 1)[1]
            dst = os.path.join(dst, name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name)
        decompress_file(url, dst)
        return EXIT_OK
    download_tree(tree, dst)
    return EXIT_OK


def _remote_containers(url: str):
    """([container URLs], the tree they are in, or None for a single object URL)."""
    from .store.remote_tree import RemoteTree
    from .store.s3 import default_store
    split_url(url)
    store = default_store()
    if url.endswith(SUFFIX) and store.exists(url):
        return [url], None
    tree = RemoteTree(store, url)
    return tree.containers(), tree


def _containers(path: str) -> List[str]:
    if is_url(path):
        return _remote_containers(path)[0]
    if not os.path.lexists(path):
        raise UserError(f"{path}: no such file or directory")
    if os.path.isfile(path):
        return [path]
    return [p for p in regular_files(path) if p.endswith(SUFFIX)]


def cmd_verify(args) -> int:
    # A published tree answers base lookups from its manifest (no request per lookup).
    files, tree = _remote_containers(args.path) if is_url(args.path) \
        else (_containers(args.path), None)
    if not files:
        raise UserError(f"{args.path}: no .fpz files found")
    root = tree.url if tree is not None else None
    failed = 0
    for path in files:
        try:
            verify_file(path, root=root, store=tree)
        except FpfsError as exc:
            failed += 1
            print(f"FAIL {path}: {exc}")
        else:
            print(f"OK   {path}")
    if failed:
        print(f"{failed} of {len(files)} file(s) failed verification", file=sys.stderr)
    return EXIT_FAIL if failed else EXIT_OK


def _needed_bases(root: str) -> set:
    """SHA-256 of every stored base that a container under root needs, directly or
    through a chain of bases."""
    from .bases import find_base
    from .container import Container
    needed, todo = set(), list(_containers(root))
    while todo:
        path = todo.pop()
        try:
            with Container(path) as c:
                ref = c.base
        except FpfsError:
            continue                    # a damaged file keeps nothing alive, nor loses it
        if ref is None or ref.sha256 in needed:
            continue
        needed.add(ref.sha256)
        try:
            todo.append(find_base(path, ref.sha256, root))
        except FpfsError:
            pass
    return needed


def cmd_gc(args) -> int:
    from .bases import gc
    if is_url(args.path):
        raise UserError("gc works on local trees only")
    if not os.path.isdir(args.path):
        raise UserError(f"{args.path}: not a directory")
    removed = []
    while True:                          # a removed base may have been the last user of its own
        gone = gc(args.path, _needed_bases(args.path))
        if not gone:
            break
        removed += gone
    for path in removed:
        print(f"removed {path}")
    print(f"{args.path}: {len(removed)} stored base(s) removed (no delta needs them and "
          f"their files are gone)")
    return EXIT_OK


def cmd_stats(args) -> int:
    files = _containers(args.path)
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


# -- mount ---------------------------------------------------------------------------------
def cmd_mount(args) -> int:
    from .mount import launcher
    return launcher.mount(args)


def cmd_warmup(args) -> int:
    from .warmup import check_paths, is_remote, warm_paths, warm_store
    problem = check_paths(args.paths)
    if problem:
        raise UserError(problem)
    say = print if args.verbose else None
    if not is_remote(args.paths):
        total = warm_paths(args.paths, say=say)
        print(f"read {human_bytes(total)}")
        return EXIT_OK
    if not args.cache_dir:
        raise UserError("warming s3:// needs --cache-dir (the one the mounts will use)")
    from .store.remote_tree import RemoteConfig
    config = RemoteConfig(store_settings(args), args.cache_dir, args.disk_cache_size)
    total = sum(warm_store(url, config, say) for url in args.paths)
    print(f"{args.cache_dir}: holds the chunks of {human_bytes(total)} of containers")
    return EXIT_OK


def cmd_umount(args) -> int:
    from .mount import launcher
    return launcher.umount(args.mountpoint, lazy=args.lazy)


def cmd_status(args) -> int:
    from .mount import launcher
    return launcher.status(args.mountpoint, as_json=args.json)


# -- object-store options ------------------------------------------------------------------
def add_store_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("object store (s3://BUCKET/PREFIX paths)")
    g.add_argument("--endpoint-url", default=None, metavar="URL",
                   help="S3 endpoint (default: AWS_ENDPOINT_URL, ~/.aws/config, else AWS); "
                        "credentials and region as for any AWS tool")
    g.add_argument("--region", default=None, help="default: AWS_REGION, ~/.aws/config")
    g.add_argument("--concurrency", type=int, default=S3Settings.concurrency, metavar="N",
                   help=f"parallel GETs (default {S3Settings.concurrency})")
    g.add_argument("--request-size", type=parse_size, default=S3Settings.request_size,
                   metavar="SIZE", help="most bytes one GET fetches; neighbouring chunks are "
                   f"fetched together (default {human_bytes(S3Settings.request_size)})")
    g.add_argument("--readahead", type=parse_size, default=S3Settings.readahead,
                   metavar="SIZE", help="bytes fetched ahead of a sequential reader "
                   f"(default {human_bytes(S3Settings.readahead)}; 0: off)")
    g.add_argument("--timeout", type=float, default=S3Settings.read_timeout,
                   metavar="SECONDS", help="how long a request may stall before it is "
                   f"retried (default {S3Settings.read_timeout:g})")
    g.add_argument("--retries", type=int, default=S3Settings.max_attempts - 1, metavar="N",
                   help="retries of a failed request, with exponential backoff, before the "
                        f"read fails (EIO through a mount; default {S3Settings.max_attempts - 1})")
    g.add_argument("--deadline", type=float, default=S3Settings.deadline, metavar="SECONDS",
                   help="most a read waits for the store, retries included, before it fails "
                        "(EIO through a mount); a store that stopped answering then fails "
                        "reads at once until it answers again (default "
                        f"{S3Settings.deadline:g})")


def add_disk_cache_options(p: argparse.ArgumentParser):
    g = p.add_argument_group("disk cache of an s3:// backing")
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="keep fetched compressed chunks here (shared safely by several "
                        "mounts; default: no disk cache)")
    g.add_argument("--disk-cache-size", type=parse_size, default=parse_size("10G"),
                   metavar="SIZE", help="most bytes kept in --cache-dir (default 10G; least "
                                        "recently used chunks go first)")
    return g


DEFAULT_CACHE = "256M"
STORE_OPTIONS = ("endpoint_url", "region", "concurrency", "request_size", "readahead",
                 "timeout", "retries", "deadline")


def store_settings(args) -> S3Settings:
    if args.concurrency < 1 or args.retries < 0 or args.timeout <= 0 or \
            args.request_size < 1 or args.deadline <= 0:
        raise UserError("--concurrency and --request-size must be positive, --retries "
                        "at least 0, --timeout and --deadline above 0")
    return S3Settings(endpoint_url=args.endpoint_url, region=args.region,
                      connect_timeout=min(S3Settings.connect_timeout, args.timeout),
                      read_timeout=args.timeout, max_attempts=args.retries + 1,
                      concurrency=args.concurrency, request_size=args.request_size,
                      readahead=args.readahead, deadline=args.deadline)


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpfs",
        description="Keep neural-network weights compressed on disk, losslessly, and mount "
                    "them as the original safetensors files.",
        epilog="Typical use: fpfs compress ./model ./model.fpfs && "
               "fpfs mount ./model.fpfs ./mnt  (then load ./mnt as usual)")
    p.add_argument("--version", action="version", version=f"fpfs {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("compress", help="compress a weights file or a directory tree",
                       description="Compress SRC (a file or a directory tree) into DST. "
                       "Weight files (safetensors, PyTorch torch.save zips, GGUF, NumPy "
                       ".npy/.npz, ONNX; recognised by content, not name) become NAME.fpz "
                       "with each tensor coded by its element type and every other byte "
                       "kept; other files of 64 KiB or more (tokenizer.json, vocab.txt) "
                       "are zstd-coded when that pays, smaller ones copied; symlinks are "
                       "kept as they are. A file that shares tensors with one compressed "
                       "before it (checkpoint-80 after checkpoint-40, a fine-tune after its "
                       "base) is stored as its difference where that is smaller. Every "
                       "output is written atomically and verified before it is reported. "
                       "DST may be s3://BUCKET/PREFIX: the tree is compressed into a "
                       "temporary directory (TMPDIR), uploaded, read back and verified, and "
                       "only then is its manifest written (mount it with fpfs mount).")
    c.add_argument("src", metavar="SRC")
    c.add_argument("dst", metavar="DST", nargs="?")
    c.add_argument("--in-place", action="store_true",
                   help="replace each file under SRC that compresses by NAME.fpz, removing "
                        "the original only after the new file is verified")
    c.add_argument("--base", metavar="FILE", default=None,
                   help="code SRC as a delta of FILE (an original or a .fpz: the model it "
                        "was fine-tuned from, or the previous checkpoint); default: found "
                        "automatically among the files compressed before it")
    c.add_argument("--no-delta", action="store_true",
                   help="store every file on its own, never as a delta")
    c.add_argument("--chunk-size", type=parse_size, default=DEFAULT_CHUNK_SIZE,
                   help="original bytes per independently decodable chunk (default 256K)")
    c.add_argument("--threads", type=int, default=None,
                   help="encoder threads (default: all cores)")
    c.add_argument("--smallest", action="store_true",
                   help="also entropy-code byte planes that save under 1 %% (about 0.1 "
                        "point smaller on BF16, but reads decode about half as fast)")
    c.add_argument("-v", "--verbose", action="store_true", help="one line per file")
    add_store_options(c)
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="restore original files from .fpz containers",
                       description="Write the original bytes of SRC (a .fpz file or a tree) "
                       "to DST; the whole-file hash is checked before each output appears.")
    d.add_argument("src", metavar="SRC")
    d.add_argument("dst", metavar="DST")
    add_store_options(d)
    d.set_defaults(func=cmd_decompress)

    v = sub.add_parser("verify", help="check every chunk checksum and whole-file hash",
                       description="Decode every chunk of every .fpz under PATH and check its "
                       "checksum and the SHA-256 of the whole original file. Exit code 0: all "
                       "good; 1: at least one file failed.")
    v.add_argument("path", metavar="PATH")
    add_store_options(v)
    v.set_defaults(func=cmd_verify)

    g = sub.add_parser("gc", help="free bases that no delta needs any more",
                       description="A delta keeps its base's data alive in "
                       f"PATH/{BASES_DIR}/ (a hard link) even after the base file is deleted "
                       "or replaced. gc removes stored bases that no file under PATH needs "
                       "and whose own file is gone. Safe to run at any time.")
    g.add_argument("path", metavar="PATH")
    g.set_defaults(func=cmd_gc)

    s = sub.add_parser("stats", help="sizes, ratios and codec mix per file and dtype")
    s.add_argument("path", metavar="PATH")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    add_store_options(s)
    s.set_defaults(func=cmd_stats)

    m = sub.add_parser("mount", help="show a compressed tree as the original files",
                       description="Mount BACKING (a tree written by `fpfs compress`, or "
                       "s3://BUCKET/PREFIX it was published to) at MOUNTPOINT: X.fpz "
                       "appears as X with its original size and bytes; everything else "
                       "passes through. Returns once the mount is ready.")
    m.add_argument("backing", metavar="BACKING")
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    m.add_argument("--foreground", "-f", action="store_true",
                   help="stay attached and log to stderr (Ctrl-C unmounts)")
    m.add_argument("--cache-size", type=parse_size, default=parse_size(DEFAULT_CACHE),
                   help="memory for decoded chunks: those decoded ahead of sequential "
                        "readers (up to half of it, dropped once read: the kernel's page "
                        "cache keeps what was read) and those random readers touched "
                        f"(default {DEFAULT_CACHE})")
    m.add_argument("--threads", type=int, default=None,
                   help="threads that decode ahead (default: number of cores)")
    m.add_argument("--decode-ahead", type=parse_size, default=DEFAULT_WINDOW, metavar="SIZE",
                   help="most bytes decoded ahead of one sequential reader, on all cores "
                        f"(default {human_bytes(DEFAULT_WINDOW)}; 0: off)")
    m.add_argument("--writable", action="store_true",
                   help="allow writes: files written through the mount are stored "
                        "compressed (weight formats and files of 64 KiB or more, by "
                        "content; as a delta when a file beside them holds the same "
                        "tensors) or as they are, on close")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users access the mount (file modes are enforced)")
    m.add_argument("--log-file", default=None,
                   help="where a background mount logs (default ~/.cache/fpfs/<mount>.log)")
    m.add_argument("--debug", action="store_true", help="log every request")
    m.add_argument("--metrics", default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (bytes served "
                        "and fetched, cache hits per tier, store request latencies, errors, "
                        "retries), e.g. 127.0.0.1:9110")
    m.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    add_store_options(m)
    g = add_disk_cache_options(m)
    g.add_argument("--metadata-ttl", type=float, default=60.0, metavar="SECONDS",
                   help="how long the tree's listing is trusted before it is read again "
                        "(default 60)")
    m.set_defaults(func=cmd_mount)

    w = sub.add_parser("warmup", help="pull files in before a server starts",
                       description="s3://BUCKET/PREFIX: fetch the compressed chunks of every "
                       "container of the published tree into --cache-dir, where mounts of "
                       "it with the same --cache-dir find them (no mount needed). Paths in "
                       "a mount: read every file under them once, filling the mount's "
                       "caches.")
    w.add_argument("paths", metavar="PATH", nargs="+")
    w.add_argument("-v", "--verbose", action="store_true", help="one line per file")
    add_store_options(w)
    add_disk_cache_options(w)
    w.set_defaults(func=cmd_warmup)

    u = sub.add_parser("umount", help="unmount an fpfs mount")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("--lazy", "-z", action="store_true",
                   help="detach now even if files are open; the daemon serves them until "
                        "they are closed, then exits")
    u.set_defaults(func=cmd_umount)

    st = sub.add_parser("status", help="bytes served, cache hit rate, decode speed of a mount")
    st.add_argument("mountpoint", metavar="MOUNTPOINT")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    return p


def _commands(parser: argparse.ArgumentParser) -> List[str]:
    return [name for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for name in a.choices]


def main(argv: Optional[List[str]] = None) -> int:
    from .mount.fstab import FstabError, is_fstab_form, mount_argv
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if is_fstab_form(argv, _commands(parser)):
        # mount.fuse3 (mount -t fuse.fpfs, /etc/fstab) runs `fpfs BACKING MOUNTPOINT -o ...`
        try:
            argv = mount_argv(argv)
        except FstabError as exc:
            print(f"fpfs: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        if hasattr(args, "endpoint_url"):
            configure_s3(store_settings(args))
        return args.func(args)
    except UserError as exc:
        print(f"fpfs: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotSafetensors as exc:
        print(f"fpfs: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CorruptContainer as exc:
        print(f"fpfs: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except FpfsError as exc:
        print(f"fpfs: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("fpfs: interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    except OSError as exc:
        hint = " (disk full: nothing was replaced; the partial output was removed)" \
            if exc.errno == errno.ENOSPC else ""
        name = f"{exc.filename}: " if exc.filename else ""
        print(f"fpfs: error: {name}{exc.strerror or exc}{hint}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())

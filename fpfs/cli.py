"""The `fpfs` command line: compress, decompress, verify, stats, mount, umount, status.

User errors print one line (`fpfs: error: ...`) and exit non-zero; never a traceback."""
from __future__ import annotations

import argparse
import errno
import sys
from typing import List, Optional

from . import __version__
from .bases import BASES_DIR, MAX_CHAIN
from .commands import EXIT_FAIL, EXIT_USAGE
from .commands.compress import cmd_compress
from .commands.decompress import cmd_decompress
from .commands.gc import cmd_gc
from .commands.kv import cmd_kv_gc, cmd_kv_ls, cmd_kv_stats
from .commands.mount import cmd_mount, cmd_status, cmd_umount, cmd_warmup
from .commands.stats import cmd_stats
from .commands.verify import cmd_verify
from .container import DEFAULT_CHUNK_SIZE
from .errors import FpfsError, NotSafetensors
from .options import (UserError, add_disk_cache_options, add_store_options, parse_size,
                      store_settings)
from .progress import human_bytes
from .readahead import DEFAULT_WINDOW
from .store.s3 import configure as configure_s3

DEFAULT_CACHE = "256M"


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
    c.add_argument("--max-depth", type=int, default=MAX_CHAIN, metavar="N",
                   help="longest chain of deltas: a file is coded only against a base at "
                        f"most N-1 deep (1..{MAX_CHAIN}, default {MAX_CHAIN}). Each level "
                        "is one more decode per chunk read: the newest of four checkpoints "
                        "read twice as fast at 1 as at 4, the series stored about 6 %% "
                        "larger (docs/BENCHMARKS.md, At real size)")
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
    add_kv_parser(sub)
    return p


def add_kv_parser(sub) -> None:
    k = sub.add_parser("kv", help="list, measure and trim a K/V prefix store",
                       description="A K/V prefix store (fpfs.kv.PrefixStore) keeps the "
                       "compressed K/V caches of token sequences in blocks of N tokens, so "
                       "a model skips the prefill of a prefix it has seen. ROOT: its "
                       "directory, or s3://BUCKET/PREFIX.")
    kinds = k.add_subparsers(dest="kv_command", metavar="KV_COMMAND")
    ls = kinds.add_parser("ls", help="every block: last use, tokens, size",
                          description="List every block of the store, most recently used "
                          "first: when, the prefix length it ends (tokens), its size and "
                          "its size as a share of the K/V it holds.")
    st = kinds.add_parser("stats", help="blocks, prefixes, bytes and ratio of a store")
    for c, func in ((ls, cmd_kv_ls), (st, cmd_kv_stats)):
        c.add_argument("root", metavar="ROOT")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        add_store_options(c)
        c.set_defaults(func=func)
    gc = kinds.add_parser("gc", help="evict least recently used blocks down to a size",
                          description="Remove the least recently used blocks of a local "
                          "store (a prefix's later blocks before its first) until it holds "
                          "at most --max-size bytes, and temporary files that dead writers "
                          "left. Safe while other processes use the store.")
    gc.add_argument("root", metavar="ROOT")
    gc.add_argument("--max-size", type=parse_size, required=True, metavar="SIZE",
                    help="bytes to keep at most (e.g. 20G)")
    gc.set_defaults(func=cmd_kv_gc)
    k.set_defaults(func=lambda args: _kv_usage(k))


def _kv_usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


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
    except (UserError, NotSafetensors) as exc:      # what was asked cannot be done
        print(f"fpfs: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FpfsError as exc:                        # a damaged container among them
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

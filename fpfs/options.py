"""Command-line options that more than one part of fpfs reads: sizes (512M, 2G), the
object-store and disk-cache options of every command that takes s3:// paths (the mount
launcher passes them on to the daemon it starts), and UserError for a wrong one."""
from __future__ import annotations

import argparse

from .progress import human_bytes
from .store.s3 import S3Settings


class UserError(Exception):
    pass


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

"""Object-store names: `s3://BUCKET/KEY` URLs, split, joined and walked up like paths."""
from __future__ import annotations

import posixpath
from typing import Iterator, Optional, Tuple

from ..errors import FpfsError

S3_SCHEME = "s3://"


def is_url(name: str) -> bool:
    return isinstance(name, str) and name.startswith(S3_SCHEME)


def split_url(url: str) -> Tuple[str, str]:
    """s3://BUCKET/KEY -> (BUCKET, KEY); KEY may be empty (the whole bucket)."""
    if not is_url(url):
        raise FpfsError(f"{url}: not an s3:// URL")
    bucket, _, key = url[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise FpfsError(f"{url}: no bucket in the URL (s3://BUCKET/PREFIX)")
    return bucket, key


def join_url(url: str, rel: str) -> str:
    return url.rstrip("/") + "/" + rel.lstrip("/") if rel else url.rstrip("/")


def url_ancestors(url: str, top: Optional[str] = None) -> Iterator[str]:
    """The "directories" of an object URL, nearest first, down to top (or the bucket)."""
    bucket, _ = split_url(url)
    stop = (top or S3_SCHEME + bucket).rstrip("/")
    d = posixpath.dirname(url.rstrip("/"))
    while True:
        yield d
        if d == stop or len(d) <= len(S3_SCHEME + bucket):
            return
        d = posixpath.dirname(d)

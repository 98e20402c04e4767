"""S3-compatible object storage through boto3 (AWS S3, MinIO, Ceph RGW, SeaweedFS, ...).

Endpoint, region and credentials come the way every AWS tool takes them (botocore's own
chain: AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, ~/.aws/config and ~/.aws/credentials,
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, instance roles), and S3Settings.endpoint_url
(`--endpoint-url`) overrides the endpoint. Every request has bounded connect and read
timeouts and botocore's "standard" retries (exponential backoff with jitter on 5xx,
throttling and connection errors); a response body that breaks off mid-transfer is
retried here the same way. What still fails is a StoreError: EIO through the mount.

A store that stops answering (frozen, unreachable) must not hold a reader for the sum of
every retry's timeout: a caller waits at most `deadline` seconds for any request
(bounded()), and a circuit breaker (breaker.py) then fails further requests at once
until a probe gets an answer again.

An S3Object is one *version* of an object: every ranged GET after the first carries
If-Match with the ETag first seen, so bytes of a replaced object are never mixed with the
old one's (ObjectChanged instead)."""
from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, TypeVar

import numpy as np

from ..errors import FpfsError, ObjectChanged, StoreError
from ..metrics import Latencies
from .objects import Store, StoreObject
from .urls import split_url
from .breaker import CircuitBreaker, StoreUnavailable

log = logging.getLogger("fpfs.store")
T = TypeVar("T")


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: Optional[str] = None   # None: AWS_ENDPOINT_URL / ~/.aws/config / AWS itself
    region: Optional[str] = None         # None: AWS_REGION / ~/.aws/config
    connect_timeout: float = 5.0
    read_timeout: float = 10.0           # per socket read: a stalled request is retried after it
    max_attempts: int = 4                # tries per request (1 = no retries)
    deadline: float = 30.0               # most a reader waits for the store, retries included
    concurrency: int = 8                 # parallel GETs: read-ahead, load_file, uploads
    request_size: int = 8 << 20          # most bytes one coalesced GET asks for
    readahead: int = 64 << 20            # bytes fetched ahead of a sequential reader
    multipart_size: int = 64 << 20       # upload parts (and the multipart threshold)


@dataclass
class StoreStats:
    gets: int = 0
    bytes_fetched: int = 0
    retries: int = 0
    errors: int = 0
    disk_hits: int = 0
    disk_misses: int = 0
    readahead_hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict:
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass(frozen=True)
class ObjectInfo:
    url: str
    size: int
    etag: str
    mtime_ns: int = 0


@dataclass(frozen=True)
class GetResult:
    data: bytes
    total: int          # the object's size
    etag: str


class _NotModified(StoreError):
    """A conditional GET found the object unchanged (304)."""


class _InvalidRange(StoreError):
    """A ranged GET started at or past the end of the object (416)."""


class _BodyBroken(StoreError):
    """A response body broke off mid-transfer (botocore does not retry those)."""


# Answers that show the store is up, even though the request failed.
_ANSWERED = (ObjectChanged, _NotModified, _InvalidRange)


def _client_error_code(exc) -> str:
    err = getattr(exc, "response", {}) or {}
    code = str(err.get("Error", {}).get("Code", ""))
    status = err.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or "")


class S3Store(Store):
    """A boto3 client (thread-safe, shared) plus the settings, statistics and optional disk
    cache (disk_cache.py) that every object opened from it uses."""

    def __init__(self, settings: S3Settings = S3Settings(), disk_cache=None):
        require_boto3()
        import boto3
        from botocore.config import Config
        self.settings = settings
        self.disk_cache = disk_cache
        self.stats = StoreStats()
        self.latencies = Latencies()
        self.breaker = CircuitBreaker(settings.endpoint_url or "s3")
        config = Config(connect_timeout=settings.connect_timeout,
                        read_timeout=settings.read_timeout,
                        retries={"mode": "standard", "max_attempts": settings.max_attempts},
                        max_pool_connections=max(10, 2 * settings.concurrency),
                        user_agent_extra="fpfs")
        try:
            self.client = boto3.session.Session().client(
                "s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
                config=config)
        except Exception as exc:          # noqa: BLE001 - botocore raises many kinds here
            raise StoreError(f"cannot set up the S3 client: {exc}") from None
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="fpfs-get")
        # Requests whose caller waits at most the deadline (bounded()) run here, so that a
        # stalled one leaves its caller free at the deadline.
        self._waited = ThreadPoolExecutor(max(4, settings.concurrency),
                                          thread_name_prefix="fpfs-req")

    # -- the Store interface -----------------------------------------------------------
    def open(self, name: str, size: Optional[int] = None,
             etag: Optional[str] = None) -> "S3Object":
        return S3Object(self, name, size, etag)

    def exists(self, name: str) -> bool:
        try:
            self.head(name)
        except ObjectChanged:       # a 404
            return False
        return True

    # -- requests ----------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """fn() with botocore's retries, timed, through the circuit breaker, and its
        failures as one-line fpfs errors."""
        try:
            probe = self.breaker.before(what)
        except StoreUnavailable:
            self.stats.add(errors=1)
            raise
        start = time.perf_counter()
        try:
            result = self._translated(what, fn)
        except _ANSWERED:
            self.breaker.success(probe)
            raise
        except _BodyBroken:             # retried by the caller; only its last failure counts
            self.breaker.abandon(probe)
            raise
        except StoreError as exc:
            # A failure that came back in time (refused, 5xx after the retries) opens
            # nothing: only a store that outlives the deadline does (bounded(), the
            # fetcher). A failed probe keeps the breaker open.
            if probe and getattr(exc, "store_down", True):
                self.breaker.failure(exc, probe)
            else:
                self.breaker.abandon(probe)
            raise
        except BaseException:
            self.breaker.abandon(probe)
            raise
        finally:
            self.latencies.observe(what.split(" ", 1)[0], time.perf_counter() - start)
        self.breaker.success(probe)
        return result

    def _translated(self, what: str, fn: Callable[[], T]) -> T:
        from botocore.exceptions import ClientError, NoCredentialsError, BotoCoreError
        try:
            return fn()
        except ClientError as exc:
            code = _client_error_code(exc)
            if code in ("PreconditionFailed", "412", "NoSuchKey", "404", "NotFound"):
                raise ObjectChanged(f"{what}: the object was replaced or removed "
                                    f"({code})") from None
            if code in ("304", "NotModified"):
                raise _NotModified(what) from None
            if code in ("InvalidRange", "416"):
                raise _InvalidRange(what) from None
            self.stats.add(errors=1)
            err = StoreError(f"{what}: {exc}")
            status = (getattr(exc, "response", {}) or {}).get(
                "ResponseMetadata", {}).get("HTTPStatusCode") or 0
            err.store_down = status >= 500 or status == 429 or code in (
                "SlowDown", "Throttling", "RequestTimeout", "InternalError",
                "ServiceUnavailable")
            raise err from None
        except NoCredentialsError:
            err = StoreError(f"{what}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
            err.store_down = False
            raise err from None
        except _BodyBroken:
            raise
        except BotoCoreError as exc:
            self.stats.add(errors=1)
            raise StoreError(f"{what}: {exc}") from None

    def bounded(self, what: str, fn: Callable[[], T]) -> T:
        """fn() (requests to the store), but its caller waits at most settings.deadline:
        then StoreError, and the breaker opens. What fn does meanwhile is let finish on
        its own (a stalled socket cannot be interrupted); fn is skipped if its turn comes
        only after the caller gave up."""
        try:
            self.breaker.check(what)        # not even queued behind stalled requests
        except StoreUnavailable:
            self.stats.add(errors=1)
            raise
        gave_up = threading.Event()

        def run() -> T:
            if gave_up.is_set():
                raise StoreUnavailable(f"{what}: abandoned")
            return fn()

        try:
            future = self._waited.submit(run)
        except RuntimeError:                 # shut down: unmounting
            raise StoreError(f"{what}: the store client is closed") from None
        try:
            return future.result(timeout=self.settings.deadline)
        except FutureTimeout:
            gave_up.set()
            exc = StoreError(f"{what}: no answer from the store in "
                             f"{self.settings.deadline:g} s")
            self.stats.add(errors=1)
            self.breaker.failure(exc)
            raise exc from None

    def head(self, url: str) -> ObjectInfo:
        bucket, key = split_url(url)
        r = self._call(f"HEAD {url}", lambda: self.client.head_object(Bucket=bucket, Key=key))
        return ObjectInfo(url, int(r["ContentLength"]), r.get("ETag", ""),
                          _mtime_ns(r.get("LastModified")))

    def get(self, url: str, offset: Optional[int] = None, size: Optional[int] = None,
            etag: Optional[str] = None) -> GetResult:
        """The object (or size bytes at offset; fewer only at its end), retried as a whole
        when the body breaks off. etag: only this version (else ObjectChanged)."""
        bucket, key = split_url(url)
        kwargs = {"Bucket": bucket, "Key": key}
        if size is not None:
            if size <= 0:
                return GetResult(b"", self.head(url).size, etag or "")
            kwargs["Range"] = f"bytes={offset}-{offset + size - 1}"
        if etag:
            kwargs["IfMatch"] = etag
        what = f"GET {url}" + (f" bytes {offset}+{size}" if size is not None else "")
        return self._with_body_retries(what, kwargs, etag)

    def _with_body_retries(self, what: str, kwargs: dict, etag: Optional[str]) -> GetResult:
        attempts = max(1, self.settings.max_attempts)
        for attempt in range(attempts):
            try:
                resp, data = self._call(what, lambda: self._get_once(what, kwargs))
            except _InvalidRange:
                info = self.head(f"s3://{kwargs['Bucket']}/{kwargs['Key']}")
                return GetResult(b"", info.size, info.etag)
            except _BodyBroken as exc:
                # botocore retries a request only until its headers arrive; a body that
                # breaks off (server killed, connection reset, read timeout) is retried here.
                if attempt + 1 == attempts:
                    self.stats.add(errors=1)
                    raise StoreError(str(exc)) from None
                self.stats.add(retries=1)
                time.sleep(min(20.0, random.random() * 2 ** attempt))
                continue
            got_etag = resp.get("ETag", "")
            if etag and got_etag and got_etag != etag:   # a server that ignores If-Match
                raise ObjectChanged(f"{what}: the object was replaced (ETag changed)")
            total = _total_size(resp, len(data))
            self.stats.add(bytes_fetched=len(data))
            return GetResult(data, total, got_etag)
        raise AssertionError("unreachable")

    def get_streamed(self, url: str, offset: int, size: int, etag: Optional[str],
                     sink: Callable[[bytes], None], piece: int = 256 << 10):
        """size bytes at offset handed to sink() piece by piece as they arrive (so a
        reader of the first bytes of a large GET need not wait for its last ones); a
        body that breaks off is resumed where it stopped (If-Match keeps it one version).
        Returns (the object's size, its ETag); fewer bytes only at the object's end."""
        bucket, key = split_url(url)
        attempts = max(1, self.settings.max_attempts)
        received, total, got_etag = 0, None, etag or ""
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError
        attempt = 0
        while received < size:
            kwargs = {"Bucket": bucket, "Key": key,
                      "Range": f"bytes={offset + received}-{offset + size - 1}"}
            if got_etag:
                kwargs["IfMatch"] = got_etag
            what = f"GET {url} bytes {offset + received}+{size - received}"
            try:
                resp = self._call(what, lambda: self.client.get_object(**kwargs))
            except _InvalidRange:
                return self.head(url).size, got_etag
            self.stats.add(gets=1, retries=resp["ResponseMetadata"].get("RetryAttempts", 0))
            new_etag = resp.get("ETag", "")
            if got_etag and new_etag and new_etag != got_etag:
                raise ObjectChanged(f"{what}: the object was replaced (ETag changed)")
            got_etag = new_etag or got_etag
            body = resp["Body"]
            try:
                while received < size:
                    data = body.read(min(piece, size - received))
                    if not data:
                        break
                    self.stats.add(bytes_fetched=len(data))
                    received += len(data)
                    sink(data)
                total = _total_size(resp, received)
                if received < size and offset + received < total:
                    raise HTTPError("the response ended early")
                return total, got_etag
            except (HTTPError, OSError, BotoCoreError) as exc:
                # botocore retries a request only until its headers arrive: a body that
                # breaks off is asked for again from where it stopped.
                attempt += 1
                if attempt >= attempts:
                    self.stats.add(errors=1)
                    raise StoreError(f"{what}: reading the response failed: {exc}") from None
                self.stats.add(retries=1)
                time.sleep(min(20.0, random.random() * 2 ** attempt))
            finally:
                body.close()
        return total if total is not None else offset + received, got_etag

    def _get_once(self, what: str, kwargs: dict):
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError
        resp = self.client.get_object(**kwargs)
        self.stats.add(gets=1, retries=resp["ResponseMetadata"].get("RetryAttempts", 0))
        try:
            return resp, resp["Body"].read()
        except (HTTPError, OSError, BotoCoreError) as exc:
            raise _BodyBroken(f"{what}: reading the response failed: {exc}") from None

    def get_if_changed(self, url: str, etag: Optional[str]) -> Optional[GetResult]:
        """The whole object, or None when its ETag is still etag (a 304)."""
        bucket, key = split_url(url)
        kwargs = {"Bucket": bucket, "Key": key}
        if etag:
            kwargs["IfNoneMatch"] = etag
        try:
            return self._with_body_retries(f"GET {url}", kwargs, None)
        except _NotModified:
            return None

    def list(self, url: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with the URL's key (pages of 1000)."""
        bucket, prefix = split_url(url)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
        it = iter(pages)
        while True:
            page = self._call(f"LIST {url}", lambda: next(it, None))
            if page is None:
                return
            for o in page.get("Contents", []):
                yield ObjectInfo(f"s3://{bucket}/{o['Key']}", int(o["Size"]),
                                 o.get("ETag", ""), _mtime_ns(o.get("LastModified")))

    def upload(self, path: str, url: str) -> ObjectInfo:
        """Upload a local file (multipart above multipart_size, parts in parallel): the
        object appears only once complete. Returns what the store now holds."""
        from boto3.s3.transfer import TransferConfig
        bucket, key = split_url(url)
        s = self.settings
        config = TransferConfig(multipart_threshold=s.multipart_size,
                                multipart_chunksize=s.multipart_size,
                                max_concurrency=s.concurrency, use_threads=True)
        self._call(f"PUT {url}", lambda: self.client.upload_file(path, bucket, key,
                                                                  Config=config))
        return self.head(url)

    def put_bytes(self, url: str, data: bytes) -> str:
        bucket, key = split_url(url)
        r = self._call(f"PUT {url}", lambda: self.client.put_object(Bucket=bucket, Key=key,
                                                                     Body=data))
        return r.get("ETag", "")

    def create_bucket(self, bucket: str) -> None:
        self._call(f"CREATE BUCKET {bucket}", lambda: self.client.create_bucket(Bucket=bucket))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._waited.shutdown(wait=False, cancel_futures=True)


# Plain reads (a container's head and table, small files) up to this size go through the
# disk cache; chunk payloads always do (fetcher.py).
MAX_CACHED_READ = 16 << 20


class S3Object(StoreObject):
    """One version of an S3 object, pinned by the ETag of the first answer (or given)."""

    def __init__(self, store: S3Store, url: str, size: Optional[int] = None,
                 etag: Optional[str] = None):
        self.name = url
        self.store = store
        self._size = size
        self._etag = etag

    def _learn(self, total: int, etag: str) -> None:
        if self._etag is None:
            self._etag, self._size = etag, total
        elif total != self._size:
            raise ObjectChanged(f"{self.name}: the object changed size while being read")

    def _stat(self) -> None:
        if self._size is None or self._etag is None:
            info = self.store.bounded(f"HEAD {self.name}", lambda: self.store.head(self.name))
            self._learn(info.size, info.etag)

    @property
    def size(self) -> int:
        self._stat()
        return self._size

    @property
    def etag(self) -> str:
        self._stat()
        return self._etag

    @property
    def identity(self):
        return ("s3", self.name, self.etag, self.size)

    def read_into(self, offset: int, buf: memoryview) -> int:
        data = self.read(offset, len(buf))
        buf[:len(data)] = data
        return len(data)

    def read(self, offset: int, size: int) -> bytes:
        """size bytes at offset; the caller waits at most the store's deadline. Through the
        disk cache when the version is known beforehand (the tree's manifest names it):
        the reads that open a container (head, table) then cost no request at a second
        start."""
        disk = self.store.disk_cache
        key = None
        if disk is not None and self._etag is not None and self._size is not None and \
                0 < size <= MAX_CACHED_READ:
            key = f"read:{self.identity!r}:{offset}:{size}"
            data = disk.get(key, size)
            if data is not None:
                self.store.stats.add(disk_hits=1)
                return data
            self.store.stats.add(disk_misses=1)
        data = self.store.bounded(f"GET {self.name}", lambda: self.fetch(offset, size))
        if key is not None:
            disk.put(key, data)
        return data

    def fetch(self, offset: int, size: int) -> bytes:
        """read() in the calling thread, however long the store's retries take (the
        fetcher's pool threads: their readers bound their own wait)."""
        r = self.store.get(self.name, offset, size, self._etag)
        self._learn(r.total, r.etag)
        return r.data

    def fetch_streamed(self, offset: int, size: int, sink: Callable[[bytes], None]) -> None:
        """fetch(), its bytes handed to sink() as they arrive (S3Store.get_streamed)."""
        total, etag = self.store.get_streamed(self.name, offset, size, self._etag, sink)
        self._learn(total, etag)

    def chunk_reader(self, offsets: np.ndarray, lengths: np.ndarray):
        from .fetcher import ChunkFetcher
        return ChunkFetcher(self, offsets, lengths)


def _total_size(resp: dict, body_len: int) -> int:
    """The whole object's size: from Content-Range on a ranged answer."""
    content_range = resp.get("ContentRange")
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1]
        if tail.isdigit():
            return int(tail)
    return int(resp.get("ContentLength", body_len))


def _mtime_ns(when) -> int:
    return int(when.timestamp() * 1e9) if when is not None else 0


_default: Optional[S3Store] = None
_default_settings = S3Settings()
_default_lock = threading.Lock()


def configure(settings: S3Settings) -> None:
    """Settings for the store that s3:// names open through (the CLI's flags)."""
    global _default, _default_settings
    with _default_lock:
        _default_settings = settings
        _default = None


def default_store() -> S3Store:
    global _default
    with _default_lock:
        if _default is None:
            _default = S3Store(_default_settings)
        return _default


def require_boto3() -> None:
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise FpfsError("s3:// needs boto3: pip install 'fpfs[s3]'") from None

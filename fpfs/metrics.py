"""Prometheus metrics of a mount (`fpfs mount --metrics HOST:PORT`).

The read path keeps plain counters where they already are (ReadOperations: bytes served,
reads, errors; the chunk cache's CacheStats: the RAM tier of decoded chunks; StoreStats
of an S3 store: bytes fetched, GETs, retries, errors, disk-cache tier, read-ahead) and the
store times its requests into a Latencies histogram here. Nothing is counted twice: a
collector turns those counters into Prometheus metric families when it is scraped, so the
hot path pays no prometheus-client call. Each mount serves its own registry, on its own
HTTP server thread (prometheus_client.start_http_server)."""
from __future__ import annotations

import bisect
import threading
from typing import Dict, Iterator, List, Tuple

from .errors import FpfsError

# Seconds; an S3 ranged GET of one 8 MiB request takes ~0.1 s on a 1 Gbit/s link.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)


class Latencies:
    """A thread-safe histogram of request durations per operation (GET, HEAD, LIST, PUT)."""

    def __init__(self, buckets: Tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self._lock = threading.Lock()
        self._counts: Dict[str, List[int]] = {}
        self._sums: Dict[str, float] = {}

    def observe(self, operation: str, seconds: float) -> None:
        slot = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            counts = self._counts.get(operation)
            if counts is None:
                counts = self._counts[operation] = [0] * (len(self.buckets) + 1)
                self._sums[operation] = 0.0
            counts[slot] += 1
            self._sums[operation] += seconds

    def snapshot(self) -> Dict[str, Tuple[List[Tuple[str, int]], float]]:
        """{operation: ([(le, cumulative count)...], sum)}, +Inf last, as Prometheus wants."""
        out = {}
        with self._lock:
            for op, counts in self._counts.items():
                total, cumulative = 0, []
                for le, n in zip([str(b) for b in self.buckets] + ["+Inf"], counts):
                    total += n
                    cumulative.append((le, total))
                out[op] = (cumulative, self._sums[op])
        return out


def parse_address(text: str) -> Tuple[str, int]:
    """'HOST:PORT' (or ':PORT' for all interfaces; '[::1]:PORT') -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise FpfsError(f"--metrics {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9110")
    return host.strip("[]") or "0.0.0.0", int(port)


class MountCollector:
    """Reads a mount's counters at scrape time (ops: a ReadOperations; remote mounts also
    have ops.tree.store, an S3Store)."""

    def __init__(self, ops):
        self.ops = ops

    def collect(self) -> Iterator:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        ops = self.ops

        def counter(name, doc, value, labels=None):
            m = CounterMetricFamily(name, doc, labels=list(labels or {}))
            m.add_metric(list((labels or {}).values()), value)
            return m

        yield counter("fpfs_bytes_served", "Bytes returned to readers of the mount",
                      ops.bytes_served)
        yield counter("fpfs_reads", "Read requests answered", ops.reads)
        yield counter("fpfs_read_errors", "Read requests answered with EIO", ops.read_errors)

        cache = ops.cache.snapshot()
        store = getattr(getattr(ops, "tree", None), "store", None)
        stats = store.stats.as_dict() if store is not None else None
        hits = CounterMetricFamily("fpfs_cache_hits", "Chunk lookups served by a cache tier "
                                   "(ram: decoded chunks; readahead: fetched ahead; disk: "
                                   "--cache-dir)", labels=["tier"])
        misses = CounterMetricFamily("fpfs_cache_misses", "Chunk lookups a cache tier could "
                                     "not serve", labels=["tier"])
        hits.add_metric(["ram"], cache["hits"] + cache["waits"])
        misses.add_metric(["ram"], cache["misses"] + cache["direct"])
        if stats is not None:
            hits.add_metric(["readahead"], stats["readahead_hits"])
            if store.disk_cache is not None:
                hits.add_metric(["disk"], stats["disk_hits"])
                misses.add_metric(["disk"], stats["disk_misses"])
        yield hits
        yield misses

        used = GaugeMetricFamily("fpfs_cache_used_bytes", "Bytes held by a cache tier",
                                 labels=["tier"])
        budget = GaugeMetricFamily("fpfs_cache_budget_bytes", "Most bytes a cache tier holds",
                                   labels=["tier"])
        used.add_metric(["ram"], cache["used_bytes"])
        budget.add_metric(["ram"], cache["budget_bytes"])
        if store is not None and store.disk_cache is not None:
            used.add_metric(["disk"], store.disk_cache.used)
            budget.add_metric(["disk"], store.disk_cache.budget)
        yield used
        yield budget
        yield counter("fpfs_decoded_bytes", "Bytes of chunks decoded", cache["decoded_bytes"])
        yield counter("fpfs_decode_errors", "Chunks that failed to load or decode",
                      cache["errors"])
        if store is None:
            return

        yield counter("fpfs_store_bytes_fetched", "Bytes fetched from the object store",
                      stats["bytes_fetched"])
        yield counter("fpfs_store_gets", "GET requests answered by the object store",
                      stats["gets"])
        yield counter("fpfs_store_retries", "Requests to the object store retried",
                      stats["retries"])
        yield counter("fpfs_store_errors", "Requests to the object store that failed after "
                      "their retries (or found the store unavailable)", stats["errors"])
        yield counter("fpfs_store_unavailable", "Times the store stopped answering (the "
                      "circuit breaker opened)", store.breaker.trips)
        state = GaugeMetricFamily("fpfs_store_up", "1 while the object store answers, 0 "
                                  "while reads fail fast (circuit breaker open)")
        state.add_metric([], 0 if store.breaker.is_open else 1)
        yield state
        latency = HistogramMetricFamily("fpfs_store_request_seconds", "Duration of requests "
                                        "to the object store, retries included",
                                        labels=["operation"])
        for op, (buckets, total) in sorted(store.latencies.snapshot().items()):
            latency.add_metric([op], buckets, total)
        yield latency


def serve(address: str, ops):
    """Serve ops' metrics (and the process's: RSS, CPU, open fds) at http://address/metrics
    from a daemon thread. Raises FpfsError when the address cannot be bound."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.process_collector import ProcessCollector
    except ImportError:
        raise FpfsError("--metrics needs prometheus-client: pip install prometheus-client") \
            from None
    host, port = parse_address(address)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(MountCollector(ops))
    try:
        return start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise FpfsError(f"--metrics {address}: cannot listen there: {exc}") from None

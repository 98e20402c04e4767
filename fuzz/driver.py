"""What the fuzz campaigns (fuzz_container.py, fuzz_formats.py) share: the command line, the
two engines (a structured random loop, or atheris/libFuzzer with the campaign's mutator
mixed into libFuzzer's), the hang watchdog, saving violating inputs, and the report.

A campaign subclasses Campaign and says how to make one input (mutate), run its oracle on
it (test, through one()), and hold it as the bytes libFuzzer keeps (encode, decode,
corpus). An input the oracle rejects raises Violation.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import hashlib
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Callable, Iterator, List, Optional, Tuple


class Violation(AssertionError):
    """An input broke the oracle's contract (wrong bytes, an untyped exception, a bound)."""


def instrumented(is_main: bool):
    """A context for importing fpfs under atheris's coverage instrumentation: when the
    script runs as the main program, may use atheris (not --engine random) and has it."""
    if is_main and "random" not in sys.argv:
        try:
            import atheris
            return atheris.instrument_imports(include=["fpfs"])
        except ImportError:
            pass
    return contextlib.nullcontext()


def rss() -> int:
    """Peak RSS of this process in bytes (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10


class Campaign:
    """Counts, violations and findings of one run; subclasses add their inputs and oracles."""
    max_len = 1 << 20           # the longest input libFuzzer may make
    min_mutate = 1              # shorter inputs are made anew, not mutated by libFuzzer

    def __init__(self, workdir: str, findings: str):
        self.workdir = workdir
        self.findings = findings
        self.counts: Counter = Counter()
        self.violations: List[str] = []
        self.current: Tuple[str, bytes] = ("", b"")
        self.started_one = time.monotonic()
        self.busy = False
        self.t0 = time.monotonic()
        self.keep_going = False

    # -- what a campaign says ----------------------------------------------------------------
    def describe(self) -> str:
        """Its seeds, for the first line of the run."""
        raise NotImplementedError

    def mutate(self, rnd: random.Random) -> tuple:
        """A new input (the campaign's own tuple) from its seeds."""
        raise NotImplementedError

    def test(self, item: tuple, rnd: random.Random) -> None:
        """Run the oracle on item through one(); raises Violation."""
        raise NotImplementedError

    def encode(self, item: tuple) -> bytes:
        """item as the bytes libFuzzer keeps and mutates."""
        raise NotImplementedError

    def decode(self, data: bytes) -> Optional[tuple]:
        """The input libFuzzer's bytes stand for, or None to skip them."""
        raise NotImplementedError

    def corpus(self) -> Iterator[Tuple[str, bytes]]:
        """(file name, encoded input) of the seed corpus libFuzzer starts from."""
        raise NotImplementedError

    # -- bookkeeping -------------------------------------------------------------------------
    def one(self, name: str, data: bytes, check: Callable[[], None]) -> None:
        """Run check() on one input of kind name (data: what is saved if it fails); a
        Violation or MemoryError is counted, saved and raised as a Violation."""
        self.started_one = time.monotonic()
        self.busy = True
        self.current = (name, data)
        self.counts["inputs"] += 1
        self.counts[f"inputs.{name}"] += 1
        try:
            check()
        except Violation as exc:
            self._violation(f"{name}: {exc}", f"violation-{name}", data, str(exc))
            raise
        except MemoryError as exc:
            self._violation(f"{name}: MemoryError", f"violation-{name}-memory", data, repr(exc))
            raise Violation(f"{name}: MemoryError") from exc
        finally:
            self.busy = False

    def _violation(self, what: str, prefix: str, data: bytes, why: str) -> None:
        self.counts["violations"] += 1
        self.violations.append(what)
        self.save(prefix, data, why)

    def save(self, prefix: str, data: bytes, why: str) -> None:
        os.makedirs(self.findings, exist_ok=True)
        h = hashlib.sha1(data).hexdigest()[:12]
        with open(os.path.join(self.findings, f"{prefix}-{h}.bin"), "wb") as f:
            f.write(data)
        with open(os.path.join(self.findings, f"{prefix}-{h}.txt"), "w") as f:
            f.write(why + "\n")

    def watchdog(self, limit: float) -> None:
        def run():
            while True:
                time.sleep(1)
                if self.busy and time.monotonic() - self.started_one > limit:
                    name, data = self.current
                    self.save(f"violation-{name}-hang", data, f"no result after {limit} s")
                    faulthandler.dump_traceback(all_threads=True)
                    print(json.dumps(self.report()), flush=True)
                    os._exit(3)
        threading.Thread(target=run, daemon=True, name="watchdog").start()

    def report(self) -> dict:
        elapsed = time.monotonic() - self.t0
        return {"elapsed_s": round(elapsed, 1), "inputs": self.counts["inputs"],
                "inputs_per_s": round(self.counts["inputs"] / max(elapsed, 1e-9), 1),
                "rss_mib": rss() >> 20,
                "counts": dict(sorted(self.counts.items())), "violations": self.violations[:20]}


def write_stats(path: str, camp: Campaign) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(camp.report(), f, indent=1)
    os.replace(tmp, path)


# -- engines -------------------------------------------------------------------------------
def run_random(camp: Campaign, seconds: float, seed: int, stats_file: Optional[str]) -> int:
    rnd = random.Random(seed)
    deadline = time.monotonic() + seconds
    last = time.monotonic()
    while time.monotonic() < deadline:
        try:
            camp.test(camp.mutate(rnd), rnd)
        except Violation as exc:
            print(f"VIOLATION: {exc}", file=sys.stderr, flush=True)
        if stats_file and time.monotonic() - last > 10:
            last = time.monotonic()
            write_stats(stats_file, camp)
    return 1 if camp.violations else 0


def run_atheris(camp: Campaign, seconds: float, seed: int, stats_file: Optional[str]) -> int:
    """libFuzzer drives; the custom mutator mixes its byte-level mutations with the
    campaign's own."""
    import atheris
    rnd = random.Random(seed)
    last = [time.monotonic()]

    def test_one(data: bytes) -> None:
        item = camp.decode(data)
        if item is None:
            return
        try:
            camp.test(item, rnd)
        except Violation:
            if not camp.keep_going:
                raise               # libFuzzer saves the input and stops
        if stats_file and time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            write_stats(stats_file, camp)

    def mutator(data: bytes, max_size: int, mseed: int) -> bytes:
        r = random.Random(mseed)
        if len(data) >= camp.min_mutate and r.random() < 0.5:
            return atheris.Mutate(data, max_size)
        return camp.encode(camp.mutate(r))[:max_size]

    os.makedirs(camp.findings, exist_ok=True)
    corpus = os.path.join(camp.workdir, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for name, data in camp.corpus():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(data)
    argv = [sys.argv[0], f"-max_total_time={int(seconds)}", f"-max_len={camp.max_len}",
            f"-seed={seed}", "-timeout=60", "-rss_limit_mb=4096",
            f"-artifact_prefix={camp.findings}/", "-print_final_stats=1", corpus]
    import atexit
    atexit.register(lambda: stats_file and write_stats(stats_file, camp))
    atheris.Setup(argv, test_one, custom_mutator=mutator)
    atheris.Fuzz()
    return 0


# -- command line --------------------------------------------------------------------------
def main(argv: Optional[List[str]], description: str,
         make: Callable[[str, str, argparse.Namespace], Campaign],
         add_arguments: Callable[[argparse.ArgumentParser], None] = lambda ap: None,
         prefix: str = "fpfs-fuzz-") -> int:
    """Parse the common options (and the campaign's own, add_arguments), then run the
    campaign that make(workdir, findings, args) builds in a scratch directory."""
    ap = argparse.ArgumentParser(description=description)
    add_arguments(ap)
    ap.add_argument("--seconds", type=float, default=60, help="time budget (default 60)")
    ap.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--findings", default="fuzz/findings",
                    help="where violating inputs are saved (default fuzz/findings)")
    ap.add_argument("--stats", default=None, help="also write running counts to this JSON file")
    ap.add_argument("--hang-seconds", type=float, default=30,
                    help="one input taking longer than this (wall) aborts the run (default 30)")
    ap.add_argument("--keep-going", action="store_true",
                    help="atheris: record violations and go on instead of stopping at the first")
    args = ap.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    # a 2^60-byte allocation must fail loudly (MemoryError -> violation), not swap
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, hard))
    with tempfile.TemporaryDirectory(prefix=prefix, dir=args.workdir or "/dev/shm"
                                     if os.path.isdir("/dev/shm") else None) as wd:
        if engine != "atheris":
            return _campaign(wd, args, engine, make)
        # libFuzzer ends the process with exit(): run it in a child, so that this process
        # removes the scratch directory (seeds, corpus) afterwards.
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            rc = 70
            try:
                rc = _campaign(wd, args, engine, make)
            finally:
                os._exit(rc)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _campaign(wd: str, args, engine: str, make) -> int:
    camp = make(wd, os.path.abspath(args.findings), args)
    camp.keep_going = args.keep_going
    camp.watchdog(args.hang_seconds)
    print(f"engine {engine}, seed {args.seed}, {camp.describe()}, {args.seconds:.0f} s",
          flush=True)
    run = run_atheris if engine == "atheris" else run_random
    rc = run(camp, args.seconds, args.seed, args.stats)
    report = camp.report()
    report["engine"] = engine
    print(json.dumps(report, indent=1))
    if args.stats:
        write_stats(args.stats, camp)
    return rc

"""Peer codecs for side-by-side benchmarks: the size another tool gets on a file alone, and on
a fine-tune or checkpoint given its base (delta mode), each result checked by decompressing
and comparing every byte with the original (RoundTripError if it differs).

    size_alone(tool, path) -> int
    size_delta(tool, path, base_path) -> Optional[int]   # None: the tool has no delta mode
    measure(tool, path, base_path=None) -> Result        # the same, with timings
    PEERS[tool] -> {"package", "version", "alone", "delta"}   (what it does, in words)
    SKIPPED[tool] -> why it is not available here (its package is missing)

size_delta raises Unsupported where the tool has a delta mode that cannot take this pair
(e.g. an XOR mode given files of different lengths). Every call works in a private
tempfile.TemporaryDirectory: the compressed artifact is written there, read back from
there and decompressed, so a size is the size of a file a user could keep. Sizes are bytes
on disk of everything needed to restore the file besides the base itself.

Exact commands and APIs used (versions as installed from PyPI, see PEERS):

zstd (zstandard 0.25): alone = zstandard.ZstdCompressor(level=3).compress(data), decompress
    with ZstdDecompressor().decompress. Delta = zstd's own delta mode through the zstd
    command line tool (Debian's zstd 1.5.4 here): `zstd -q -f -3 --patch-from=BASE FILE -o
    OUT` (which turns long mode on by itself), checked with `zstd -d -q -f --memory=2048MB
    --patch-from=BASE OUT -o RESTORED` (the window spans base and file); Unsupported where
    the zstd program is missing. Not through the package: a raw-content
    ZstdCompressionDict is only indexed over its tail and the package has no refPrefix,
    so it finds almost nothing (78.0% against the CLI's 43.7% on BF16 step 40 vs 0).
xor+zstd: not a peer but the naive baseline for XOR deltas: zstd -3 of (data XOR base),
    equal lengths only; no delta-less mode (alone = plain zstd -3).
lmz (lmzip 1.3.0, CLI `lmz`): alone = `lmz compress -q -j 2 FILE OUT.lmz`, checked with
    `lmz decompress -q -j 2 OUT.lmz RESTORED`. Delta = `lmz compress -q -j 2 BASE ARC.lmz`
    then `lmz append -q -j 2 ARC.lmz FILE` (lmz codes each tensor that matches one of the
    archive by name, dtype and size as an XOR difference when a sample says it pays); the
    size is the archive's growth, checked with `lmz extract -q ARC.lmz MEMBER RESTORED`.
    lmz parses safetensors, GGUF, torch.save zips and ONNX itself; it needs no dtype hint.
z4ai (0.2.0, Python API): alone = z4ai.safetensors.compress_bytes(data) (the ZSTN
    per-tensor container) for safetensors, else z4ai.compress(data, dtype=D) with D the
    dtype covering most bytes of the file (see element_dtype; opaque bytes if none);
    checked with z4ai.safetensors.decompress_bytes / z4ai.decompress. Delta =
    z4ai.model_delta.compress(target, base) for safetensors (name-aligned per-tensor XOR,
    COPY for identical tensors), else z4ai.compress_delta(data, reference=base, dtype=D)
    (whole-buffer XOR, equal lengths only); checked with model_delta.decompress /
    z4ai.decompress_delta.
glyd (0.32.1, Python API over libglyd_store.so; BUSL-1.1 licence, free for testing): alone =
    glyd.compress(data) (its default level, "max"), checked with glyd.decompress. Delta =
    glyd.compress_with_base(base, data), checked with glyd.decompress_with_base(base, blob).
    The wheel has no `glyd` compression CLI (that is a separate Rust program).
zipnn (0.5.4, Python API): alone = ZipNN(input_format="byte", bytearray_dtype=D,
    threads=2).compress(bytearray(data)), D from element_dtype ("bfloat16", "float16",
    "float32"; files of other dtypes raise Unsupported); checked with a fresh ZipNN of the
    same settings' .decompress(blob). Delta = ZipNN(..., delta_compressed_type="byte")
    .compress(data, delta_second_data=base) (an XOR of the two, equal lengths only; its
    docstring still says NOT IMPLEMENTED YET, but the code does it), checked with
    .decompress(blob, delta_second_data=base). NB: zipnn 0.5.4's compress() rewrites the
    buffer it is given in place (even an immutable bytes object), so it is always given a
    private bytearray copy; and it aborts the whole process ("double free or corruption")
    on a buffer whose length is not a multiple of the element size (every torch.save file
    here), so only the whole elements go to zipnn and the last 1-3 bytes are kept as they
    are in a side file, counted in the size.

Run `python bench/peers.py --help` for the side-by-side table on tests/finetune.py's real
MiniLM fine-tune series (sizes as % of the original file).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from importlib import metadata
from typing import Callable, Dict, NamedTuple, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

THREADS = 2


class RoundTripError(AssertionError):
    """A peer's output did not decompress to the original bytes."""


class Unsupported(ValueError):
    """The peer cannot compress this file (or this pair, in delta mode)."""


class Result(NamedTuple):
    size: int
    original: int
    compress_s: float
    decompress_s: float


PEERS: Dict[str, dict] = {}
SKIPPED: Dict[str, str] = {}
_ALONE: Dict[str, Callable] = {}
_DELTA: Dict[str, Callable] = {}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _register(name, package, alone_doc, delta_doc, alone, delta):
    PEERS[name] = {"package": package, "version": _version(package),
                   "alone": alone_doc, "delta": delta_doc}
    _ALONE[name] = alone
    if delta is not None:
        _DELTA[name] = delta


def _skip(name: str, err: BaseException) -> None:
    SKIPPED[name] = f"{type(err).__name__}: {err}"
    warnings.warn(f"bench.peers: peer {name!r} skipped ({SKIPPED[name]})", stacklevel=2)


# --------------------------------------------------------------------------- helpers

def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data) -> int:
    with open(path, "wb") as f:
        f.write(data)
    return os.path.getsize(path)


def _check(restored, original: bytes, what: str) -> None:
    if len(restored) != len(original) or \
            hashlib.sha256(restored).digest() != hashlib.sha256(original).digest():
        raise RoundTripError(f"{what}: decompressed {len(restored)} bytes differ from the "
                             f"original {len(original)} bytes")


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


_ST_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
              "I8": "int8", "U8": "uint8", "I16": "int16", "U16": "uint16",
              "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64",
              "F8_E4M3": "float8_e4m3", "F8_E5M2": "float8_e5m2"}


def element_dtype(path: str) -> Optional[str]:
    """The element type covering most tensor bytes of a safetensors, torch.save or GGUF
    file ("bfloat16", "float16", "float32", ..., "q8_0" ...), or None if unknown."""
    by: Dict[str, int] = {}
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"GGUF":
        import gguf
        for t in gguf.GGUFReader(path).tensors:
            kind = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(
                t.tensor_type.name, t.tensor_type.name.lower())
            by[kind] = by.get(kind, 0) + int(t.n_bytes)
    elif zipfile.is_zipfile(path):
        import torch
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        stack = [obj]
        while stack:
            o = stack.pop()
            if isinstance(o, torch.Tensor):
                kind = str(o.dtype).replace("torch.", "")
                by[kind] = by.get(kind, 0) + o.numel() * o.element_size()
            elif isinstance(o, dict):
                stack.extend(o.values())
            elif isinstance(o, (list, tuple)):
                stack.extend(o)
    else:
        try:
            (n,) = struct.unpack("<Q", head)
            with open(path, "rb") as f:
                f.seek(8)
                header = json.loads(f.read(n))
        except (struct.error, ValueError, OSError):
            return None
        for key, info in header.items():
            if key != "__metadata__":
                kind = _ST_DTYPES.get(info["dtype"], info["dtype"].lower())
                by[kind] = by.get(kind, 0) + info["data_offsets"][1] - info["data_offsets"][0]
    return max(by, key=by.get) if by else None


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] < os.path.getsize(path)


# --------------------------------------------------------------------------- zstd

try:
    import zstandard
except ImportError as e:  # pragma: no cover - depends on the machine
    _skip("zstd", e)
    _skip("xor+zstd", e)
else:
    def _zstd_alone(path, tmp):
        data = _read(path)
        blob, tc = _timed(zstandard.ZstdCompressor(level=3).compress, data)
        size = _write(os.path.join(tmp, "out.zst"), blob)
        out, td = _timed(zstandard.ZstdDecompressor().decompress,
                         _read(os.path.join(tmp, "out.zst")))
        _check(out, data, "zstd")
        return Result(size, len(data), tc, td)

    _ZSTD_CLI = shutil.which("zstd")

    def _zstd_cli(*args: str) -> None:
        run = subprocess.run([_ZSTD_CLI, "-q", "-f", *args], capture_output=True, text=True,
                             timeout=3600)
        if run.returncode:
            raise RuntimeError(f"zstd {' '.join(args)} failed ({run.returncode}): "
                               f"{run.stderr.strip()[-2000:]}")

    def _zstd_delta(path, base_path, tmp):
        # The zstandard package cannot do this: a dictionary (even raw content, even with
        # long-distance matching) is only indexed over its tail, and it exposes no
        # ZSTD_CCtx_refPrefix; measured 78.0% where the CLI gets 43.7% on BF16 step 40.
        if _ZSTD_CLI is None:
            raise Unsupported("zstd --patch-from needs the zstd command line tool")
        data = _read(path)
        out = os.path.join(tmp, "out.zst")
        _, tc = _timed(_zstd_cli, "-3", f"--patch-from={base_path}", path, "-o", out)
        restored = os.path.join(tmp, "restored")
        _, td = _timed(_zstd_cli, "-d", "--memory=2048MB", f"--patch-from={base_path}",
                       out, "-o", restored)
        _check(_read(restored), data, "zstd --patch-from")
        return Result(os.path.getsize(out), len(data), tc, td)

    def _xor(a: bytes, b: bytes) -> bytes:
        import numpy as np
        return np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)).tobytes()

    def _xor_zstd_delta(path, base_path, tmp):
        data, base = _read(path), _read(base_path)
        if len(data) != len(base):
            raise Unsupported("xor+zstd needs files of equal length")
        t = time.perf_counter()
        blob = zstandard.ZstdCompressor(level=3).compress(_xor(data, base))
        tc = time.perf_counter() - t
        size = _write(os.path.join(tmp, "out.zst"), blob)
        t = time.perf_counter()
        out = _xor(zstandard.ZstdDecompressor().decompress(_read(os.path.join(tmp, "out.zst"))),
                   base)
        td = time.perf_counter() - t
        _check(out, data, "xor+zstd")
        return Result(size, len(data), tc, td)

    _register("zstd", "zstandard", "zstd -3", "zstd CLI -3 --patch-from=BASE",
              _zstd_alone, _zstd_delta)
    if _ZSTD_CLI:
        PEERS["zstd"]["cli"] = subprocess.run([_ZSTD_CLI, "-V"], capture_output=True,
                                              text=True).stdout.strip()
    _register("xor+zstd", "zstandard", "zstd -3 (same as zstd)",
              "zstd -3 of FILE XOR BASE (baseline, equal lengths)", _zstd_alone,
              _xor_zstd_delta)


# --------------------------------------------------------------------------- lmz

try:
    import lmz  # noqa: F401  (lmzip)
    _LMZ = [shutil.which("lmz")] if shutil.which("lmz") else [sys.executable, "-m", "lmz"]
except ImportError as e:  # pragma: no cover
    _skip("lmz", e)
else:
    def _lmz(*args: str) -> None:
        run = subprocess.run(_LMZ + list(args), capture_output=True, text=True, timeout=3600)
        if run.returncode:
            raise RuntimeError(f"lmz {' '.join(args)} failed ({run.returncode}): "
                               f"{run.stderr.strip()[-2000:]}")

    def _lmz_alone(path, tmp):
        data = _read(path)
        arc = os.path.join(tmp, "out.lmz")
        _, tc = _timed(_lmz, "compress", "-q", "-j", str(THREADS), path, arc)
        restored = os.path.join(tmp, "restored")
        _, td = _timed(_lmz, "decompress", "-q", "-j", str(THREADS), arc, restored)
        _check(_read(restored), data, "lmz")
        return Result(os.path.getsize(arc), len(data), tc, td)

    def _lmz_delta(path, base_path, tmp):
        data = _read(path)
        # Members are named by basename, so the two files go in under distinct names.
        base_link = os.path.join(tmp, "base")
        target_link = os.path.join(tmp, "target")
        os.symlink(os.path.abspath(base_path), base_link)
        os.symlink(os.path.abspath(path), target_link)
        arc = os.path.join(tmp, "arc.lmz")
        _lmz("compress", "-q", "-j", str(THREADS), base_link, arc)
        before = os.path.getsize(arc)
        _, tc = _timed(_lmz, "append", "-q", "-j", str(THREADS), arc, target_link)
        restored = os.path.join(tmp, "restored")
        _, td = _timed(_lmz, "extract", "-q", "-j", str(THREADS), arc, "target", restored)
        _check(_read(restored), data, "lmz append")
        return Result(os.path.getsize(arc) - before, len(data), tc, td)

    _register("lmz", "lmzip", "lmz compress", "lmz compress BASE; lmz append FILE (growth)",
              _lmz_alone, _lmz_delta)


# --------------------------------------------------------------------------- z4ai

_Z4AI_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64",
                "int8": "int8", "uint8": "uint8", "int16": "int16", "uint16": "uint16",
                "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64"}

try:
    import z4ai
    from z4ai import model_delta as _z4_model_delta
    from z4ai import safetensors as _z4_st
except ImportError as e:  # pragma: no cover
    _skip("z4ai", e)
else:
    def _z4ai_alone(path, tmp):
        data = _read(path)
        if _is_safetensors(path):
            comp, decomp = _z4_st.compress_bytes, _z4_st.decompress_bytes
        else:
            code = _Z4AI_DTYPES.get(element_dtype(path) or "")
            comp = lambda d: z4ai.compress(d, dtype=code, threads=THREADS)  # noqa: E731
            decomp = z4ai.decompress
        blob, tc = _timed(comp, data)
        size = _write(os.path.join(tmp, "out.z4ai"), blob)
        out, td = _timed(decomp, _read(os.path.join(tmp, "out.z4ai")))
        _check(bytes(out), data, "z4ai")
        return Result(size, len(data), tc, td)

    def _z4ai_delta(path, base_path, tmp):
        data, base = _read(path), _read(base_path)
        if _is_safetensors(path) and _is_safetensors(base_path):
            comp = lambda: _z4_model_delta.compress(data, base, threads=THREADS)  # noqa: E731
            decomp = lambda blob: _z4_model_delta.decompress(blob, base)  # noqa: E731
        else:
            if len(data) != len(base):
                raise Unsupported("z4ai.compress_delta needs files of equal length")
            code = _Z4AI_DTYPES.get(element_dtype(path) or "")
            comp = lambda: z4ai.compress_delta(  # noqa: E731
                data, base, dtype=code, threads=THREADS)
            decomp = lambda blob: z4ai.decompress_delta(blob, base)  # noqa: E731
        blob, tc = _timed(comp)
        size = _write(os.path.join(tmp, "out.z4d"), blob)
        out, td = _timed(decomp, _read(os.path.join(tmp, "out.z4d")))
        _check(bytes(out), data, "z4ai delta")
        return Result(size, len(data), tc, td)

    _register("z4ai", "z4ai", "ZSTN container (safetensors) / z4ai.compress(dtype)",
              "model_delta (safetensors, by tensor name) / compress_delta (equal lengths)",
              _z4ai_alone, _z4ai_delta)


# --------------------------------------------------------------------------- glyd

try:
    import glyd
    glyd.version()          # the shared library loads
except (ImportError, OSError) as e:  # pragma: no cover
    _skip("glyd", e)
else:
    def _glyd_alone(path, tmp):
        data = _read(path)
        blob, tc = _timed(glyd.compress, data)
        size = _write(os.path.join(tmp, "out.glyd"), blob)
        out, td = _timed(glyd.decompress, _read(os.path.join(tmp, "out.glyd")))
        _check(out, data, "glyd")
        return Result(size, len(data), tc, td)

    def _glyd_delta(path, base_path, tmp):
        data, base = _read(path), _read(base_path)
        blob, tc = _timed(glyd.compress_with_base, base, data)
        size = _write(os.path.join(tmp, "out.glyd"), blob)
        out, td = _timed(glyd.decompress_with_base, base, _read(os.path.join(tmp, "out.glyd")))
        _check(out, data, "glyd with base")
        return Result(size, len(data), tc, td)

    _register("glyd", "glyd", "glyd.compress (level max)", "glyd.compress_with_base(base, data)",
              _glyd_alone, _glyd_delta)


# --------------------------------------------------------------------------- zipnn

_ZIPNN_DTYPES = ("bfloat16", "float16", "float32")

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import zipnn
except ImportError as e:  # pragma: no cover
    _skip("zipnn", e)
else:
    def _zipnn_dtype(path: str) -> str:
        dt = element_dtype(path)
        if dt not in _ZIPNN_DTYPES:
            raise Unsupported(f"zipnn has no byte mode for {dt} data")
        return dt

    def _zipnn(dt: str, delta: bool = False):
        kw = {"delta_compressed_type": "byte"} if delta else {}
        return zipnn.ZipNN(input_format="byte", bytearray_dtype=dt, threads=THREADS, **kw)

    _ZIPNN_ESIZE = {"bfloat16": 2, "float16": 2, "float32": 4}

    def _zipnn_run(dt, data, base, tmp):
        """zipnn on the whole elements of `data`; a ragged tail (torch.save files) goes to
        a side file as it is, because zipnn 0.5.4 corrupts its heap and aborts the process
        (double free) on a buffer whose length is not a multiple of the element size."""
        cut = len(data) - len(data) % _ZIPNN_ESIZE[dt]
        body = bytearray(data[:cut])                     # zipnn rewrites its input
        t = time.perf_counter()
        if base is None:
            blob = _zipnn(dt).compress(body)
        else:
            blob = _zipnn(dt, True).compress(body, delta_second_data=bytearray(base[:cut]))
        tc = time.perf_counter() - t
        size = _write(os.path.join(tmp, "out.znn"), blob)
        if cut < len(data):
            size += _write(os.path.join(tmp, "out.tail"), data[cut:])
        t = time.perf_counter()
        blob = _read(os.path.join(tmp, "out.znn"))
        if base is None:
            out = bytes(_zipnn(dt).decompress(blob))
        else:
            out = bytes(_zipnn(dt, True).decompress(blob, delta_second_data=bytearray(base[:cut])))
        if cut < len(data):
            out += _read(os.path.join(tmp, "out.tail"))
        td = time.perf_counter() - t
        _check(out, data, "zipnn" if base is None else "zipnn delta")
        return Result(size, len(data), tc, td)

    def _zipnn_alone(path, tmp):
        return _zipnn_run(_zipnn_dtype(path), _read(path), None, tmp)

    def _zipnn_delta(path, base_path, tmp):
        data, base = _read(path), _read(base_path)
        if len(data) != len(base):
            raise Unsupported("zipnn's byte delta needs files of equal length")
        return _zipnn_run(_zipnn_dtype(path), data, base, tmp)

    _register("zipnn", "zipnn", "ZipNN byte mode, dtype of the file",
              "ZipNN delta_compressed_type='byte' (XOR, equal lengths)",
              _zipnn_alone, _zipnn_delta)


# --------------------------------------------------------------------------- API

def _peer(tool: str) -> None:
    if tool in SKIPPED:
        raise Unsupported(f"peer {tool!r} is not available here: {SKIPPED[tool]}")
    if tool not in PEERS:
        raise KeyError(f"unknown peer {tool!r}; known: {sorted(PEERS)}")


def measure(tool: str, path: str, base_path: Optional[str] = None) -> Optional[Result]:
    """Compress `path` with `tool` (given `base_path`, if any), check the round trip, and
    return the size and timings; None if a base is given and the tool has no delta mode."""
    _peer(tool)
    if base_path is not None and tool not in _DELTA:
        return None
    inputs = [path] if base_path is None else [path, base_path]
    before = [hashlib.sha256(_read(p)).digest() for p in inputs]
    with tempfile.TemporaryDirectory(prefix=f"peer-{tool.replace('+', '-')}-") as tmp:
        if base_path is None:
            result = _ALONE[tool](path, tmp)
        else:
            result = _DELTA[tool](path, base_path, tmp)
    for p, digest in zip(inputs, before):
        if hashlib.sha256(_read(p)).digest() != digest:
            raise RoundTripError(f"{tool} changed its input file {p}")
    return result


def size_alone(tool: str, path: str) -> int:
    """Bytes `tool` compresses `path` to, after checking that they restore it exactly."""
    return measure(tool, path).size


def size_delta(tool: str, path: str, base_path: str) -> Optional[int]:
    """Bytes `tool` needs for `path` given `base_path` (restoring it needs both), after
    checking the round trip; None if the tool has no delta mode."""
    result = measure(tool, path, base_path)
    return None if result is None else result.size


def available() -> Tuple[str, ...]:
    return tuple(PEERS)


# --------------------------------------------------------------------------- table

def _pct(r: Optional[Result]) -> str:
    return "-" if r is None else f"{100.0 * r.size / r.original:.2f}"


def _cell(tool, path, base=None):
    try:
        return _pct(measure(tool, path, base))
    except Unsupported:
        return "n/a"
    except RoundTripError as e:
        print(f"  {tool}: ROUND TRIP FAILED: {e}", file=sys.stderr)
        return "FAIL"
    except Exception as e:  # noqa: BLE001 - one broken peer must not stop the table
        print(f"  {tool}: {type(e).__name__}: {e}", file=sys.stderr)
        return "ERR"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def main(argv=None) -> int:
    """Side-by-side table of the peers on the real MiniLM fine-tune series: sizes as % of
    the original file, alone and as deltas vs step 0 and vs the previous step."""
    import argparse
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from tests.finetune import make_series
    from tests.gguf_files import gguf_file

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--work", default=os.path.join(REPO, "bench", "out", "peers"),
                    help="where the series is trained and cached")
    ap.add_argument("--steps", default="0,40,80,120")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--tables", default="bf16,ckpt",
                    help="comma-separated: bf16 (the BF16 safetensors series), ckpt (the FP32 "
                         "AdamW training checkpoints), extra (alone: torch.save FP32/BF16 "
                         "state dicts, the AdamW checkpoint, GGUF F32/F16/BF16/Q8_0)")
    a = ap.parse_args(argv)
    steps = [int(s) for s in a.steps.split(",")]
    tools = [t for t in a.peers.split(",") if t]
    print(f"CPU: {_cpu()}, {os.cpu_count()} cores; peers: " +
          ", ".join(f"{t} {PEERS[t]['package']} {PEERS[t]['version']}"
                    for t in tools if t in PEERS))
    for name, why in SKIPPED.items():
        print(f"skipped {name}: {why}")

    def rows(title, paths):
        print(f"\n{title}")
        print(f"{'peer':10} {'step':>5} {'bytes':>10} {'alone %':>9} {'vs 0 %':>9} "
              f"{'vs prev %':>9}")
        for tool in tools:
            for i, (step, path) in enumerate(zip(steps, paths)):
                alone = _cell(tool, path)
                vs0 = _cell(tool, path, paths[0]) if i else ""
                prev = _cell(tool, path, paths[i - 1]) if i else ""
                print(f"{tool:10} {step:>5} {os.path.getsize(path):>10} {alone:>9} {vs0:>9} "
                      f"{prev:>9}", flush=True)

    tables = a.tables.split(",")
    if "bf16" in tables:
        rows("BF16 safetensors", make_series(a.work, steps, "BF16", "safetensors"))
    if "ckpt" in tables:
        rows("FP32 torch training checkpoints (model + AdamW state)",
             make_series(a.work, steps, "F32", "torch", optimizer=True))
    if "extra" in tables:
        print("\nalone, % of the file")
        last = steps[-1]
        files = {
            "torch.save FP32 state dict": make_series(a.work, [last], "F32", "torch")[0],
            "torch.save BF16 state dict": make_series(a.work, [last], "BF16", "torch")[0],
            "AdamW training checkpoint": make_series(a.work, [last], "F32", "torch", True)[0],
        }
        for ft in ("F32", "F16", "BF16", "Q8_0"):
            files[f"GGUF {ft} (base)"] = gguf_file(os.path.join(a.work, "gguf"), ft)
        print(f"{'file':30} {'bytes':>10} " + " ".join(f"{t:>9}" for t in tools))
        for what, path in files.items():
            print(f"{what:30} {os.path.getsize(path):>10} " +
                  " ".join(f"{_cell(t, path):>9}" for t in tools), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

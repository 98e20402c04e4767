"""Fuzz campaign over everything that parses untrusted bytes: the .fpz container reader
(Container open + decode of every chunk + PackedFile.pread), the chunk decoders (held to the
plain reference decoder in fpfs/_reference.py) and fpfs.kv.decompress.

    python fuzz/fuzz_container.py --seconds 300                 # atheris if installed
    python fuzz/fuzz_container.py --seconds 300 --engine random # structured random loop

Inputs are small valid containers / payloads / K/V blobs mutated by byte flips, insertions,
deletions, truncations, splices of two valid inputs and field edits with the CRCs recomputed
(so the validation behind the CRCs is reached too). Every input must give either authentic
bytes or a typed fpfs error (FpfsError); anything else - another exception, wrong bytes, a
MemoryError, a hang (watchdog) - is a *violation*: the input is saved under --findings and
the run fails. Known weaknesses that are not violations (e.g. a spliced container whose
prefix comes from one file and whose chunks from another, which only `fpfs verify`'s
whole-file SHA-256 catches) are counted as *notes*.

The same mutation operators and oracles are used by tests/test_fuzz.py (hypothesis).
"""
from __future__ import annotations

import json
import os
import random
import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz.driver import Campaign as Driven, Violation, instrumented        # noqa: E402
from fuzz.driver import main as drive                                     # noqa: E402

with instrumented(__name__ == "__main__"):
    import fpfs.kv as kv                                      # noqa: E402
    from fpfs import _reference                               # noqa: E402
    from fpfs.cache import ChunkCache                         # noqa: E402
    from fpfs.codecs import DecodeError, decode_chunk         # noqa: E402
    from fpfs.compress import compress_file                   # noqa: E402
    from fpfs.container import CHUNK_ENTRY, HEADER, TRAILER, Container  # noqa: E402
    from fpfs.errors import FpfsError                         # noqa: E402
    from fpfs.packed_file import PackedFile                   # noqa: E402

HDR, TRL, ENT = HEADER.size, TRAILER.size, CHUNK_ENTRY.itemsize
SEED_CHUNK = 4096                       # smallest legal chunk size: many chunks per seed
INTERESTING = (0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 4095, 4096, 4097,
               1 << 24, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 56, 1 << 60, (1 << 63) - 1,
               1 << 63, (1 << 64) - 1)


# -- seeds ---------------------------------------------------------------------------------
@dataclass
class Seed:
    name: str
    original: bytes
    packed: bytes


def _safetensors(tensors: Sequence[Tuple[str, str, Tuple[int, ...], bytes]],
                 metadata: Optional[dict] = None) -> bytes:
    header: dict = {"__metadata__": metadata} if metadata else {}
    data = bytearray()
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    js = json.dumps(header, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js + bytes(data)


def seed_originals() -> Dict[str, bytes]:
    """Small safetensors files covering every chunk shape the decoders see: rANS-coded
    exponent planes (BF16, F32, F16), RAW/CONST planes, whole-byte FP8 symbols, RAW chunks
    (random bytes), odd lengths (width 1 fallback), a partial last chunk, no chunks at all;
    two files with the same layout and different data (for splices)."""
    import ml_dtypes
    rng = np.random.default_rng(20240601)
    w = lambda n, s=0.05: rng.normal(0, s, n)               # noqa: E731
    bf = lambda n: w(n).astype(ml_dtypes.bfloat16).tobytes()  # noqa: E731
    out = {
        "bf16": _safetensors([("a.weight", "BF16", (64, 64), bf(4096)),
                              ("a.bias", "BF16", (64,), bf(64)),
                              ("b.weight", "BF16", (3000,), bf(3000))], {"format": "pt"}),
        "bf16_twin": _safetensors([("a.weight", "BF16", (64, 64), bf(4096)),
                                   ("a.bias", "BF16", (64,), bf(64)),
                                   ("b.weight", "BF16", (3000,), bf(3000))], {"format": "pt"}),
        # same layout and header length as "bf16", other metadata and data: a splice at the
        # end of the prefix opens as a valid container serving a mix of the two files
        "bf16_meta": _safetensors([("a.weight", "BF16", (64, 64), bf(4096)),
                                   ("a.bias", "BF16", (64,), bf(64)),
                                   ("b.weight", "BF16", (3000,), bf(3000))], {"format": "tf"}),
        "f32": _safetensors([("x", "F32", (2500,), w(2500).astype(np.float32).tobytes()),
                             ("zeros", "F32", (1500,), bytes(6000))]),
        "mixed": _safetensors([
            ("fp8", "F8_E4M3", (9000,), (w(9000) * 300).astype(ml_dtypes.float8_e4m3fn).tobytes()),
            ("f16", "F16", (2049,), w(2049).astype(np.float16).tobytes()),
            ("odd", "BF16", (1,), b"\x01\x3f"),
            ("i16", "I16", (3000,), rng.integers(-3, 4, 3000).astype(np.int16).tobytes()),
            ("u8", "U8", (5000,), bytes([7]) * 5000),
            ("f64", "F64", (600,), w(600).tobytes()),
        ]),
        "noise": _safetensors([("n", "U8", (9000,), rng.integers(0, 256, 9000, np.uint8).tobytes())]),
        "empty": _safetensors([("e", "F32", (0,), b"")], {"k": "v"}),
    }
    return out


def build_seeds(directory: str) -> List[Seed]:
    seeds = []
    for name, original in seed_originals().items():
        src = os.path.join(directory, name + ".safetensors")
        with open(src, "wb") as f:
            f.write(original)
        for ppm, tag in ((None, ""), (0, "_smallest")):
            if ppm is not None and name not in ("bf16", "mixed"):
                continue
            dst = src + tag + ".fpz"
            kwargs = {} if ppm is None else {"min_saving_ppm": ppm}
            compress_file(src, dst, chunk_size=SEED_CHUNK, threads=1, **kwargs)
            with open(dst, "rb") as f:
                seeds.append(Seed(name + tag, original, f.read()))
    return seeds


def kv_seeds() -> List[Tuple[object, bytes]]:
    """(tensor, blob) pairs for every K/V dtype, a multi-chunk one and a torch one."""
    import ml_dtypes
    rng = np.random.default_rng(7)
    arrays = [rng.normal(0, 1, (2, 4, 8)).astype(np.float16),
              rng.normal(0, 1, (3, 33)).astype(ml_dtypes.bfloat16),
              rng.normal(0, 1, (17,)).astype(np.float32),
              (rng.normal(0, 1, (4, 64)) * 50).astype(ml_dtypes.float8_e4m3fn),
              (rng.normal(0, 1, (128,))).astype(ml_dtypes.float8_e5m2),
              np.zeros((0, 4), np.float16),
              np.array(1.5, np.float32),
              rng.normal(0, 1, (2, 70000)).astype(ml_dtypes.bfloat16)]   # 2 chunks
    out = [(a, kv.compress(a)) for a in arrays]
    try:
        import torch
        t = torch.randn(4, 16, dtype=torch.float16)
        out.append((t, kv.compress(t)))
    except ImportError:
        pass
    return out


def payload_seeds(seeds: Sequence[Seed]) -> List[Tuple[bytes, int]]:
    """(PLANES payload, original length) of a few chunks of every seed."""
    out = []
    for s in seeds:
        _, t, table = parse(s.packed)
        for e in table[:6]:
            if int(e["codec"]) == 1:
                off, n = int(e["comp_offset"]), int(e["comp_length"])
                out.append((s.packed[off:off + n], int(e["orig_length"])))
    return out


# -- container anatomy ---------------------------------------------------------------------
def parse(buf: bytes):
    h = HEADER.unpack_from(buf, 0)
    t = TRAILER.unpack_from(buf, len(buf) - TRL)
    table = np.frombuffer(buf, CHUNK_ENTRY, count=t[1], offset=t[0])
    return h, t, table


def fix_crcs(buf: bytearray) -> None:
    """Recompute header, table and trailer CRCs the way the reader checks them (when the
    fields they depend on still fit the buffer), so mutations reach the checks behind them."""
    if len(buf) < HDR + TRL:
        return
    plen = struct.unpack_from("<Q", buf, 24)[0]
    if HDR + plen <= len(buf):
        crc = zlib.crc32(bytes(buf[HDR:HDR + plen]), zlib.crc32(bytes(buf[:32])))
        struct.pack_into("<I", buf, 32, crc)
    t0 = len(buf) - TRL
    table_off, count = struct.unpack_from("<QQ", buf, t0)
    if table_off + count * ENT <= t0:
        struct.pack_into("<I", buf, t0 + 56, zlib.crc32(bytes(buf[table_off:table_off + count * ENT])))
    header_crc = struct.unpack_from("<I", buf, 32)[0]
    struct.pack_into("<I", buf, t0 + 60, zlib.crc32(bytes(buf[t0:t0 + 56]), header_crc))


# (offset from region start, width) of every integer field a forger may set
_HEADER_FIELDS = [(8, 2), (10, 2), (12, 4), (16, 8), (24, 8), (36, 4)]
_TRAILER_FIELDS = [(0, 8), (8, 8), (16, 8)]
_ENTRY_FIELDS = [(0, 8), (8, 8), (16, 4), (20, 4), (24, 8), (32, 1), (33, 1), (34, 2), (36, 4)]


def _set_field(buf: bytearray, a: int, b: int) -> None:
    """Set one header/trailer/table/plane-header field (chosen by a) to a value (from b)."""
    n = len(buf)
    if n < HDR + TRL:
        return
    t0 = n - TRL
    table_off, count = struct.unpack_from("<QQ", buf, t0)
    choices = [("h", off, w) for off, w in _HEADER_FIELDS] + \
              [("t", t0 + off, w) for off, w in _TRAILER_FIELDS]
    if table_off + count * ENT <= t0 and count:
        i = (a >> 8) % count
        choices += [("e", table_off + i * ENT + off, w) for off, w in _ENTRY_FIELDS]
        # the plane header of that chunk's payload (not CRC-covered; the decoder checks it)
        coff = struct.unpack_from("<Q", buf, table_off + i * ENT + 8)[0]
        if coff + 7 <= t0:
            choices += [("p", coff, 1), ("p", coff + 1, 1), ("p", coff + 2, 1), ("p", coff + 3, 4)]
    _, off, width = choices[a % len(choices)]
    old = int.from_bytes(buf[off:off + width], "little")
    mask = (1 << (8 * width)) - 1
    k = b % 8
    value = [INTERESTING[(b >> 3) % len(INTERESTING)], old + 1, old - 1, old ^ (1 << ((b >> 3) % (8 * width))),
             old * 2, old + 8, old - 8, b >> 3][k] & mask
    buf[off:off + width] = value.to_bytes(width, "little")


Op = Tuple[str, int, int, bytes]
OP_KINDS = ("flip", "set", "insert", "delete", "truncate", "append", "splice", "int",
            "field", "fixcrc")


def apply_ops(data: bytes, ops: Sequence[Op], others: Sequence[bytes]) -> Tuple[bytes, bool]:
    """Apply mutation operators; returns (mutated bytes, forged) where forged means CRCs were
    recomputed (then header, prefix and table may be anything; only the decoders' own checks
    and the per-chunk checksums stand between the input and the output)."""
    buf = bytearray(data)
    forged = False
    for kind, a, b, blob in ops:
        n = len(buf)
        if kind == "flip" and n:
            buf[(a // 8) % n] ^= 1 << (a % 8)
        elif kind == "set" and n:
            buf[a % n] = b & 0xFF
        elif kind == "insert":
            pos = a % (n + 1)
            buf[pos:pos] = blob or b"\0"
        elif kind == "delete" and n:
            pos = a % n
            del buf[pos:pos + 1 + b % 97]
        elif kind == "truncate":
            del buf[a % (n + 1):]
        elif kind == "append":
            buf += blob or b"\0"
        elif kind == "splice" and others:
            other = others[b % len(others)]
            cut = a % (n + 1)
            # same position in both (aligned containers) or anywhere in the other
            cut2 = cut if (b >> 16) & 1 or cut > len(other) else (a >> 8) % (len(other) + 1)
            buf = buf[:cut] + bytearray(other[cut2:])
        elif kind == "int" and n >= 8:
            width = (1, 2, 4, 8)[b % 4]
            pos = a % (n - width + 1)
            value = INTERESTING[(b >> 2) % len(INTERESTING)] & ((1 << (8 * width)) - 1)
            buf[pos:pos + width] = value.to_bytes(width, "little")
        elif kind == "field":
            _set_field(buf, a, b)
            forged = True
        elif kind == "fixcrc":
            forged = True
        if forged and kind in ("field", "fixcrc"):
            fix_crcs(buf)
    return bytes(buf), forged


def random_ops(rng: random.Random, max_ops: int = 4) -> List[Op]:
    ops = []
    for _ in range(rng.randint(1, max_ops)):
        kind = rng.choice(OP_KINDS)
        ops.append((kind, rng.getrandbits(32), rng.getrandbits(32),
                    rng.randbytes(rng.choice((1, 1, 4, 8, 40, 300)))))
    return ops


# -- oracles -------------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str                                  # "open-error" | "read" (opened)
    chunks_ok: int = 0
    chunks_bad: int = 0
    notes: List[str] = field(default_factory=list)


def _authentic_sources(originals: Sequence[bytes], start: int, piece) -> set:
    piece = bytes(piece)
    return {i for i, o in enumerate(originals) if o[start:start + len(piece)] == piece}


def check_container(data: bytes, originals: Sequence[bytes], path: str, forged: bool = False,
                    reads: int = 3, rnd: Optional[random.Random] = None) -> Outcome:
    """Open data as a container, decode every chunk and pread a few ranges. Raises Violation
    unless every step gives a typed fpfs error or authentic bytes: for an unforged input
    (CRCs as mutated), the prefix and every decoded chunk must be bytes of one of the
    original files at that offset; for a forged one, every decoded chunk must match its
    table checksum and the reference decoder. pread must agree with the chunk decodes."""
    with open(path, "wb") as f:
        f.write(data)
    try:
        c = Container(path)
    except FpfsError:
        return Outcome("open-error")
    except Exception as exc:                   # noqa: BLE001 - that is the finding
        raise Violation(f"Container() raised {type(exc).__name__}: {exc}") from exc
    out = Outcome("read")
    with c:
        view: List[Optional[bytes]] = []
        sources = set(range(len(originals)))
        if not forged:
            src = _authentic_sources(originals, 0, c.prefix)
            if not src:
                raise Violation("opened container serves a prefix no original has")
            sources &= src
        for i in range(len(c)):
            try:
                chunk = c.decode(i)
            except FpfsError:
                out.chunks_bad += 1
                view.append(None)
                continue
            except Exception as exc:           # noqa: BLE001
                raise Violation(f"decode({i}) raised {type(exc).__name__}: {exc}") from exc
            start, length = c.chunk_span(i)
            if len(chunk) != length:
                raise Violation(f"chunk {i}: {len(chunk)} bytes for {length}")
            if forged:
                e = c.table[i]
                payload = c.read_payload(i)
                if int(e["codec"]) == 1 and len(payload) <= 64 << 10:
                    note = _differential(payload, length, bytes(chunk))
                    if note:
                        out.notes.append(note)
            else:
                src = _authentic_sources(originals, start, chunk)
                if not src:
                    raise Violation(f"chunk {i} decoded to bytes no original has at {start}")
                sources &= src
            out.chunks_ok += 1
            view.append(bytes(chunk))
        if not forged and not sources:
            out.notes.append("chimera")          # authentic pieces of different files
        _check_preads(c, view, out, reads, rnd or random.Random(len(data)))
    return out


def _check_preads(c: Container, chunks: List[Optional[bytes]], out: Outcome, reads: int,
                  rnd: random.Random) -> None:
    size = c.original_size
    pf = PackedFile(c, ChunkCache(8 * c.chunk_size))   # shares the open container
    for _ in range(reads):
        off = rnd.randrange(0, size + 2)
        n = rnd.choice((1, 7, 4096, 10000, 3 * c.chunk_size, size + 10))
        try:
            got = bytes(pf.pread(off, n))
        except FpfsError:
            continue
        except Exception as exc:               # noqa: BLE001
            raise Violation(f"pread({off}, {n}) raised {type(exc).__name__}: {exc}") from exc
        end = min(off + n, size)
        want = bytearray()
        pos = off
        if pos < min(end, len(c.prefix)):
            want += c.prefix[pos:min(end, len(c.prefix))]
            pos = min(end, len(c.prefix))
        while pos < end:
            i = c.chunk_index(pos)
            start, length = c.chunk_span(i)
            if chunks[i] is None:
                raise Violation(f"pread({off}, {n}) succeeded over chunk {i}, which fails")
            stop = min(end, start + length)
            want += chunks[i][pos - start:stop - start]
            pos = stop
        if got != bytes(want):
            raise Violation(f"pread({off}, {n}) differs from the chunk decodes")


def _differential(payload: bytes, length: int, fast: Optional[bytes]) -> Optional[str]:
    """Compare a fast decode (None = rejected) with the reference decoder. Returns None when
    they agree, a note for a known, safe divergence, else raises Violation.

    Known: the Cython kernel ignores the rotation byte when the width is 1 (FORMAT.md allows
    r < 8*w, i.e. r in 0..7 for w = 1; the reference rotates). The writer always stores r = 0
    for w = 1, so this only changes *which* check rejects a damaged chunk (the per-chunk
    xxh3 after decode), never the bytes served."""
    try:
        ref = _reference.decode_chunk(1, payload, length)
    except _reference.ReferenceError:
        ref = None
    if fast == ref:
        return None
    if len(payload) >= 2 and payload[0] == 1 and payload[1] != 0:
        return "w1-rotation-ignored"
    what = "rejects" if fast is None else "accepts" if ref is None else "differs from"
    raise Violation(f"fast decoder {what} what the reference decodes/rejects "
                    f"(payload {len(payload)} B, length {length})")


def check_payload(payload: bytes, length: int) -> str:
    """The fast PLANES decoder against the reference: same bytes, or both reject."""
    out = bytearray(length)
    try:
        decode_chunk(1, payload, memoryview(out))
        fast = bytes(out)
    except DecodeError:
        fast = None
    except Exception as exc:                   # noqa: BLE001
        raise Violation(f"decode_chunk raised {type(exc).__name__}: {exc}") from exc
    note = _differential(payload, length, fast)
    if note:
        return note
    return "ok" if fast is not None else "rejected"


def _kv_identity(t) -> Tuple[str, str, tuple, bytes]:
    if type(t).__module__.startswith("torch"):
        import torch
        raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return "torch", str(t.dtype), tuple(t.shape), raw
    return "numpy", str(t.dtype), tuple(t.shape), np.ascontiguousarray(t).tobytes()


def check_kv(blob: bytes, originals: Sequence[object]) -> str:
    """kv.decompress: the original tensor (dtype, shape, framework, bytes) or CorruptContainer.
    (Until aa19c8f the FPKV checksum covered only the data: a dtype-code flip went through.)"""
    try:
        t = kv.decompress(blob)
    except FpfsError:
        return "rejected"
    except Exception as exc:                   # noqa: BLE001
        raise Violation(f"kv.decompress raised {type(exc).__name__}: {exc}") from exc
    got = _kv_identity(t)
    idents = [_kv_identity(o) for o in originals]
    if got in idents:
        return "ok"
    if any(got[3] == i[3] for i in idents):   # data intact, dtype/shape/framework not
        raise Violation(f"kv.decompress returned the original bytes as {got[0]} {got[1]} "
                        f"{got[2]}: header change not detected")
    raise Violation(f"kv.decompress returned data no original has ({got[1]} {got[2]})")


# -- campaign ------------------------------------------------------------------------------
class Campaign(Driven):
    """Inputs are (target, bytes, forged): target 0 a container (forged: its CRCs were
    recomputed after the mutation), 1 a K/V blob, 2 a chunk payload behind its length."""
    max_len = 400000
    min_mutate = 2              # the target and forged bytes

    def __init__(self, workdir: str, findings: str):
        super().__init__(workdir, findings)
        self.seeds = build_seeds(workdir)
        self.originals = [s.original for s in self.seeds]
        self.packed = [s.packed for s in self.seeds]
        self.kv = kv_seeds()
        self.kv_originals = [t for t, _ in self.kv]
        self.kv_blobs = [b for _, b in self.kv]
        self.payloads = payload_seeds(self.seeds)
        self.path = os.path.join(workdir, "input.fpz")

    def describe(self) -> str:
        return (f"{len(self.seeds)} container seeds, {len(self.kv)} kv seeds, "
                f"{len(self.payloads)} payload seeds")

    def test(self, item: Tuple[int, bytes, bool], rnd: random.Random) -> None:
        target, data, forged = item
        name = ("container", "kv", "payload")[target % 3]
        self.one(name, data, lambda: self._check(name, data, forged, rnd))

    def _check(self, name: str, data: bytes, forged: bool, rnd: random.Random) -> None:
        if name == "container":
            o = check_container(data, self.originals, self.path, forged, rnd=rnd)
            self.counts[f"container.{o.kind}{'.forged' if forged else ''}"] += 1
            self.counts["container.chunks_ok"] += o.chunks_ok
            self.counts["container.chunks_bad"] += o.chunks_bad
            for note in o.notes:
                self.note(note, data)
        elif name == "kv":
            r = check_kv(data, self.kv_originals)
            self.counts[f"kv.{r}"] += 1
        else:
            # L >= 1: containers never hold an empty chunk (the table check refuses it)
            length = 1 + struct.unpack_from("<I", data, 0)[0] % (64 << 10) \
                if len(data) >= 4 else 1
            r = check_payload(data[4:], length)
            self.counts[f"payload.{r}"] += 1
            if r not in ("ok", "rejected"):
                self.note(r, data)

    def note(self, what: str, data: bytes) -> None:
        self.counts[f"note.{what}"] += 1
        if self.counts[f"note.{what}"] <= 3:
            self.save(f"note-{what}", data, what)

    def mutate(self, rnd: random.Random) -> Tuple[int, bytes, bool]:
        target = rnd.choices((0, 1, 2), weights=(6, 2, 2))[0]
        if target == 0:
            base = rnd.choice(self.packed)
            data, forged = apply_ops(base, random_ops(rnd), self.packed)
        elif target == 1:
            base = rnd.choice(self.kv_blobs)
            data, forged = apply_ops(base, [op for op in random_ops(rnd)
                                            if op[0] not in ("field", "fixcrc")], self.kv_blobs)
        else:
            payload, length = rnd.choice(self.payloads)
            ops = [op for op in random_ops(rnd, 3) if op[0] not in ("field", "fixcrc", "splice")]
            body, forged = apply_ops(payload, ops, [])
            if rnd.random() < 0.2:
                length = rnd.choice((0, 1, 2, length - 1, length + 1, length * 2, 8, 4096))
            data = struct.pack("<I", max(1, length) - 1) + body
        return target, data, forged

    # libFuzzer's inputs: the target byte, the forged byte (for a container: recompute
    # the CRCs after libFuzzer's mutations), then the input's bytes
    def encode(self, item: Tuple[int, bytes, bool]) -> bytes:
        target, data, forged = item
        return bytes([target, int(forged)]) + data

    def decode(self, data: bytes) -> Optional[Tuple[int, bytes, bool]]:
        if len(data) < 2:
            return None
        target, forged = data[0] % 3, bool(data[1] & 1) and data[0] % 3 == 0
        body = data[2:]
        if forged:
            buf = bytearray(body)
            fix_crcs(buf)
            body = bytes(buf)
        return target, body, forged

    def corpus(self) -> Iterator[Tuple[str, bytes]]:
        for i, p in enumerate(self.packed):
            yield f"c{i}", self.encode((0, p, False))
        for i, b in enumerate(self.kv_blobs):
            yield f"k{i}", self.encode((1, b, False))
        for i, (p, n) in enumerate(self.payloads[:20]):
            yield f"p{i}", self.encode((2, struct.pack("<I", n - 1) + p, False))


def main(argv: Optional[List[str]] = None) -> int:
    return drive(argv, __doc__.split("\n\n")[0],
                 lambda workdir, findings, args: Campaign(workdir, findings))


if __name__ == "__main__":
    sys.exit(main())

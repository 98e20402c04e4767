"""Slow, plain reference decoder of chunk payloads, written from FORMAT.md and
its "rANS stream" and "rANS32 stream" sections alone. The tests hold the Cython decoder to it: same bytes for valid input,
and an error wherever it reports one. Speed is not a goal; clarity is."""
from __future__ import annotations

from typing import List

PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
LANES = 8
STATE_LOW = 1 << 24
PLANE_RAW, PLANE_RANS, PLANE_CONST, PLANE_RANS32 = 0, 1, 2, 3
R32_LANES = 32
R32_STATE_LOW = 1 << 16


class ReferenceError(ValueError):
    """The payload breaks a rule of the format."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ReferenceError(what)


class _Bits:
    """LSB-first bit reader over a byte string."""

    def __init__(self, data: bytes, start: int):
        self.data, self.start, self.pos = data, start, 0

    def bit(self) -> int:
        byte = self.start + self.pos // 8
        _check(byte < len(self.data), "frequency table truncated")
        b = (self.data[byte] >> (self.pos % 8)) & 1
        self.pos += 1
        return b

    def exp_golomb(self, k: int) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            _check(zeros <= 20, "Exp-Golomb prefix too long")
        u = 1
        for _ in range(zeros + k):
            u = (u << 1) | self.bit()
        return u - (1 << k)

    def end(self) -> int:
        return self.start + (self.pos + 7) // 8


def read_freq_table(s: bytes) -> tuple:
    """(frequencies of the 256 symbols, bytes consumed)."""
    _check(len(s) >= 3, "frequency table truncated")
    k, sparse, base, present = s[0] & 15, s[0] & 16, s[1], s[2] + 1
    _check(not s[0] & 0xE0 and k <= 12 and base >= 1, "bad frequency table header")
    _check(sparse or present == 256, "dense table must list all 256 symbols")
    bits = _Bits(s, 3)
    freq = [0] * 256
    prev, total = -1, 0
    for i in range(present):
        sym = prev + 1 + bits.exp_golomb(0) if sparse else i
        _check(sym <= 255, "symbol out of range")
        if i < present - 1:
            freq[sym] = base + bits.exp_golomb(k)
            total += freq[sym]
            _check(total < PROB_SCALE, "frequencies exceed the scale")
        else:
            freq[sym] = PROB_SCALE - total
        prev = sym
    return freq, bits.end()


def _slots(freq: List[int]) -> tuple:
    """(cum[s], the symbol of each of the 4096 slots) of a frequency table."""
    cum, slot_symbol, c = [0] * 256, [], 0
    for sym in range(256):
        cum[sym] = c
        c += freq[sym]
        slot_symbol += [sym] * freq[sym]
    return cum, slot_symbol


def rans_decode(s: bytes, n: int) -> bytes:
    """Decode an rANS stream of exactly n symbols (FORMAT.md, "rANS stream")."""
    freq, pos = read_freq_table(s)
    _check(pos + 2 <= len(s), "stream truncated")
    lens = s[pos] | s[pos + 1] << 8
    pos += 2
    states: List[int] = []
    for j in range(LANES):
        size = 4 + ((lens >> 2 * j) & 3)
        _check(pos + size <= len(s), "stream truncated")
        states.append(int.from_bytes(s[pos:pos + size], "little"))
        pos += size
        _check(STATE_LOW <= states[-1] < 1 << 56, "state out of range")
    cum, slot_symbol = _slots(freq)
    out = bytearray()
    for block in range(0, n, 2 * LANES):
        r = min(2 * LANES, n - block)
        for position in range(r):                 # positions 0..7, then 8..15
            j = position % LANES
            x = states[j]
            slot = x & (PROB_SCALE - 1)
            sym = slot_symbol[slot]
            states[j] = freq[sym] * (x >> PROB_BITS) + slot - cum[sym]
            out.append(sym)
        for j in range(min(r, LANES)):
            if states[j] < STATE_LOW:
                _check(pos + 4 <= len(s), "stream truncated")
                states[j] = (states[j] << 32) | int.from_bytes(s[pos:pos + 4], "little")
                pos += 4
    _check(pos == len(s), "trailing bytes after the last symbol")
    _check(all(x == STATE_LOW for x in states), "final state mismatch")
    return bytes(out)


def rans32_decode(s: bytes, n: int) -> bytes:
    """Decode an rANS32 stream of exactly n symbols (FORMAT.md, "rANS32 stream")."""
    freq, pos = read_freq_table(s)
    _check(max(freq) < PROB_SCALE, "a frequency of 4096 in an rANS32 table")
    _check(pos + 4 * R32_LANES <= len(s), "stream truncated")
    states = [int.from_bytes(s[pos + 4 * j:pos + 4 * j + 4], "little") for j in range(R32_LANES)]
    _check(all(x >= R32_STATE_LOW for x in states), "state out of range")
    pos += 4 * R32_LANES
    cum, slot_symbol = _slots(freq)
    out = bytearray()
    for i in range(n):
        j = i % R32_LANES
        x = states[j]
        slot = x & (PROB_SCALE - 1)
        sym = slot_symbol[slot]
        x = freq[sym] * (x >> PROB_BITS) + slot - cum[sym]
        if x < R32_STATE_LOW:
            _check(pos + 2 <= len(s), "stream truncated")
            x = (x << 16) | int.from_bytes(s[pos:pos + 2], "little")
            pos += 2
        states[j] = x
        out.append(sym)
    _check(pos == len(s), "trailing bytes after the last symbol")
    _check(all(x == R32_STATE_LOW for x in states), "final state mismatch")
    return bytes(out)


def merge_planes(planes: List[bytes], width: int, rot: int) -> bytes:
    """Inverse of the plane split: plane j holds byte (width-1-j) of rotl(element, rot)."""
    bits = 8 * width
    mask = (1 << bits) - 1
    out = bytearray()
    for i in range(len(planes[0])):
        v = 0
        for j in range(width):
            v = (v << 8) | planes[j][i]
        v = ((v >> rot) | (v << (bits - rot))) & mask if rot else v
        out += v.to_bytes(width, "little")
    return bytes(out)


def decode_planes(payload: bytes, length: int) -> bytes:
    """Decode a PLANES payload (FORMAT.md, codec 1) of a chunk of `length` original bytes."""
    if length == 0:     # MASKED values when k = 0: the payload of no bytes is empty
        _check(len(payload) == 0, "payload for an empty chunk")
        return b""
    _check(len(payload) >= 2, "payload truncated")
    width, rot = payload[0], payload[1]
    _check(width in (1, 2, 4, 8) and rot < 8 * width and (width > 1 or rot == 0)
           and length % width == 0, "bad layout")
    n = length // width
    pos = 2 + 5 * width
    _check(len(payload) >= pos, "payload truncated")
    entries = [(payload[2 + 5 * j], int.from_bytes(payload[3 + 5 * j:7 + 5 * j], "little"))
               for j in range(width)]
    _check(pos + sum(size for _, size in entries) == len(payload), "plane lengths")
    planes = []
    for mode, size in entries:
        stream = payload[pos:pos + size]
        if mode == PLANE_RAW:
            _check(size == n, "raw plane length")
            planes.append(stream)
        elif mode == PLANE_CONST:
            _check(size == 1, "const plane length")
            planes.append(stream * n)
        elif mode == PLANE_RANS:
            planes.append(rans_decode(stream, n))
        elif mode == PLANE_RANS32:
            planes.append(rans32_decode(stream, n))
        else:
            raise ReferenceError(f"unknown plane mode {mode}")
        pos += size
    return merge_planes(planes, width, rot)


def decode_zstd(payload: bytes, length: int) -> bytes:
    """Codec 2. zstd is its own format (RFC 8878); its reference is the zstd library."""
    import zstandard
    try:
        # "whatever the frame header claims": the library allocates the claimed content
        # size before max_output_size is looked at, so the claim is checked first.
        _check(zstandard.frame_content_size(payload) in (-1, length), "zstd frame length")
        out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=max(length, 1))
    except zstandard.ZstdError as exc:
        raise ReferenceError(f"zstd: {exc}") from None
    _check(len(out) == length, "zstd frame length")
    return out


def decode_blocks(payload: bytes, length: int) -> bytes:
    """Codec 3: field streams of block structs, interleaved back into blocks."""
    _check(len(payload) >= 3, "payload truncated")
    block_bytes = int.from_bytes(payload[0:2], "little")
    nfields = payload[2]
    _check(1 <= nfields <= 32 and block_bytes > 0 and length % block_bytes == 0, "layout")
    pos = 3
    _check(len(payload) >= pos + 7 * nfields, "payload truncated")
    lengths = [int.from_bytes(payload[pos + 2 * i:pos + 2 * i + 2], "little")
               for i in range(nfields)]
    pos += 2 * nfields
    _check(0 not in lengths and sum(lengths) == block_bytes, "fields do not tile the block")
    subs = [(payload[pos + 5 * i], int.from_bytes(payload[pos + 5 * i + 1:pos + 5 * i + 5],
                                                  "little")) for i in range(nfields)]
    pos += 5 * nfields
    _check(pos + sum(size for _, size in subs) == len(payload), "stream lengths")
    nblocks = length // block_bytes
    streams = []
    for flen, (sub, size) in zip(lengths, subs):
        _check(sub in (0, 1, 2), "field codec")
        streams.append(decode_chunk(sub, payload[pos:pos + size], nblocks * flen))
        pos += size
    out = bytearray()
    for b in range(nblocks):
        for flen, stream in zip(lengths, streams):
            out += stream[b * flen:(b + 1) * flen]
    return bytes(out)


def decode_delta(payload: bytes, length: int, base: bytes) -> bytes:
    """Codec 4: the residual (any codec but 4) combined with the base's bytes."""
    _check(len(payload) >= 12, "payload truncated")
    transform, width, inner, zero = payload[0], payload[1], payload[2], payload[3]
    base_offset = int.from_bytes(payload[4:12], "little")
    _check(zero == 0 and inner != 4, "delta header")
    _check((transform == 0 and width == 1) or
           (transform == 1 and width in (2, 4, 8) and length % width == 0), "transform")
    residual = decode_chunk(inner, payload[12:], length)
    old = base[base_offset:base_offset + length]
    _check(len(old) == length, "base too short")
    if transform == 0:
        return bytes(a ^ b for a, b in zip(residual, old))
    bits, out = 8 * width, bytearray()
    for i in range(0, length, width):
        z = int.from_bytes(residual[i:i + width], "little")
        d = (z >> 1) ^ -(z & 1)                  # zigzag back to a signed difference
        v = (int.from_bytes(old[i:i + width], "little") + d) % (1 << bits)
        out += v.to_bytes(width, "little")
    return bytes(out)


def decode_masked(payload: bytes, length: int) -> bytes:
    """Codec 5: a bitmap of the non-zero elements, then those elements."""
    _check(len(payload) >= 14, "payload truncated")
    width, z1 = payload[0], payload[1]
    z2 = int.from_bytes(payload[2:4], "little")
    k = int.from_bytes(payload[4:8], "little")
    mask_codec = payload[8]
    mask_len = int.from_bytes(payload[9:13], "little")
    values_codec = payload[13]
    _check(z1 == 0 and z2 == 0 and width in (1, 2, 4, 8) and length % width == 0, "header")
    _check(mask_codec in (0, 1, 2) and values_codec in (0, 1, 2), "sub-codecs")
    count = length // width
    _check(k <= count and 14 + mask_len <= len(payload), "lengths")
    mask = decode_chunk(mask_codec, payload[14:14 + mask_len], (count + 7) // 8)
    bits = [(mask[i // 8] >> (i % 8)) & 1 for i in range(len(mask) * 8)]
    _check(sum(bits[:count]) == k and not any(bits[count:]), "bitmap")
    values = decode_chunk(values_codec, payload[14 + mask_len:], k * width)
    out, j = bytearray(), 0
    for i in range(count):
        if bits[i]:
            out += values[j * width:(j + 1) * width]
            j += 1
        else:
            out += bytes(width)
    return bytes(out)


def decode_expmant(payload: bytes, length: int) -> bytes:
    """Codec 6 (version 4): BF16 elements from one rANS32 symbol each (exponent window and
    top k mantissa bits) and packed fields of the other 8 - k bits."""
    _check(len(payload) >= 6 and length >= 2 and length % 2 == 0, "header")
    k, b = payload[0], payload[1]
    _check(k in (1, 2) and 1 <= b and b + (1 << (8 - k)) - 2 <= 255, "window")
    w = 8 - k
    n = length // 2
    slen = int.from_bytes(payload[2:6], "little")
    flen = (n * w + 7) // 8
    _check(6 + slen + flen == len(payload), "lengths")
    symbols = rans32_decode(payload[6:6 + slen], n)
    fields = int.from_bytes(payload[6 + slen:], "little")
    _check(fields >> (n * w) == 0, "padding bits")
    out = bytearray()
    for i in range(n):
        sym, field = symbols[i], (fields >> (w * i)) & ((1 << w) - 1)
        t, top = sym >> k, sym & ((1 << k) - 1)
        e = t + b - 1 if t else 0
        sign, low = field >> (7 - k), field & ((1 << (7 - k)) - 1)
        out += ((sign << 15) | (e << 7) | (top << (7 - k)) | low).to_bytes(2, "little")
    return bytes(out)


def decode_chunk(codec: int, payload: bytes, length: int, base: bytes = b"") -> bytes:
    """Decode one chunk payload; base is the whole original base file (codec 4 only)."""
    if codec == 0:
        _check(len(payload) == length, "raw chunk length")
        return bytes(payload)
    if codec == 1:
        return decode_planes(payload, length)
    if codec == 2:
        return decode_zstd(payload, length)
    if codec == 3:
        return decode_blocks(payload, length)
    if codec == 5:
        return decode_masked(payload, length)
    if codec == 6:
        return decode_expmant(payload, length)
    _check(codec == 4, f"unknown codec {codec}")
    return decode_delta(payload, length, base)

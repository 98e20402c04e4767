"""ONNX: a ModelProto in protobuf wire format, parsed by hand (fpfs does not import onnx).

Tensors live in TensorProtos: the graph's initializers, sparse initializers, tensors held
by node attributes (Constant nodes, If/Loop subgraphs) and training graphs. A tensor's
bytes are typed when they are contiguous little-endian elements in this file: raw_data,
or packed float_data / double_data (fixed-width in the wire format, unlike the varint
int32/int64 fields). Tensors with data_location EXTERNAL keep their bytes in a separate
file, which carries no header at all and so cannot be recognised by content.

ONNX has no magic number, so sniff() only checks that the first bytes read as ModelProto
fields; layout() parses the whole message and anything invalid is a FormatError (the
file is then stored as plain bytes, losslessly). No prefix: the graph's nodes and names
are RAW regions between the tensors.
"""
from __future__ import annotations

from math import prod
from typing import BinaryIO, Dict, Iterable, Iterator, List, Optional, Tuple

from .layout import FormatError, Layout, TensorSpan, tile
from ._reader import BoundedReader

NAME = "onnx"

# Wire types.
VARINT, I64, LEN, I32 = 0, 1, 2, 5
# Graphs nest through node attributes (If/Loop/Scan bodies); real models go a few deep.
MAX_GRAPH_DEPTH = 32
# Bounds on the work a hostile file can cause: fields visited (a large exported graph
# has a few million), bytes of one name or of packed dims read into memory.
MAX_FIELDS = 1 << 23
MAX_NAME_BYTES = 1 << 20
MAX_DIMS = 64
# The highest IR version sniff() accepts (onnx 1.23 writes 14); leaves room to grow.
MAX_IR_VERSION = 64

# TensorProto.DataType -> (fpfs dtype, bits per element). Not listed (STRING, COMPLEX128,
# 2/4-bit integers, FLOAT6): bytes stay RAW.
ONNX_DTYPES: Dict[int, Tuple[str, int]] = {
    1: ("F32", 32), 2: ("U8", 8), 3: ("I8", 8), 4: ("U16", 16), 5: ("I16", 16),
    6: ("I32", 32), 7: ("I64", 64), 9: ("BOOL", 8), 10: ("F16", 16), 11: ("F64", 64),
    12: ("U32", 32), 13: ("U64", 64), 14: ("C64", 64), 16: ("BF16", 16),
    17: ("F8_E4M3", 8), 18: ("F8_E4M3FNUZ", 8), 19: ("F8_E5M2", 8), 20: ("F8_E5M2FNUZ", 8),
    23: ("F4", 4),          # FLOAT4E2M1, two per byte
    24: ("F8_E8M0", 8),
}
_FLOAT, _DOUBLE = 1, 11
_EXTERNAL = 1

# ModelProto fields and their wire types, for sniffing (protobuf writes fields in number
# order, so a serialized model starts with ir_version, field 1).
_MODEL_FIELDS = {1: VARINT, 2: LEN, 3: LEN, 4: LEN, 5: VARINT, 6: LEN, 7: LEN, 8: LEN,
                 14: LEN, 20: LEN, 25: LEN, 26: LEN}


def sniff(head: bytes, file_size: int) -> bool:
    """The head reads as ModelProto fields: ir_version first with a small value, then at
    least one more known ModelProto field, each length inside the file."""
    if head[:1] != b"\x08":
        return False
    fields = 0
    try:
        ir_version, pos = _varint(head, 1)
        if not 1 <= ir_version <= MAX_IR_VERSION:
            return False
        fields = 1
        while pos < len(head):
            tag, pos = _varint(head, pos)
            if _MODEL_FIELDS.get(tag >> 3) != tag & 7:
                return False
            value, pos = _varint(head, pos)
            fields += 1
            if tag & 7 == LEN:
                if value > file_size - pos:
                    return False
                pos += value
    except ValueError:          # a varint cut off by the end of the head is fine
        pass
    return fields >= 2


def layout(f: BinaryIO, file_size: int) -> Layout:
    parser = _Parser(BoundedReader(f, file_size))
    spans = parser.model(file_size)
    return Layout(NAME, 0, file_size, tile(spans, 0, file_size))


def _varint(buf, pos: int) -> Tuple[int, int]:
    """(value, next position) of the varint at buf[pos]; ValueError if buf ends first or
    it is longer than 10 bytes."""
    value = shift = 0
    for i in range(pos, min(pos + 10, len(buf))):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, i + 1
        shift += 7
    raise ValueError("varint cut off or too long")


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# One decoded field: (field number, wire type, value, payload offset in the file). value
# is the number for VARINT fields, the payload length for LEN fields, 0 for fixed-width.
Field = Tuple[int, int, int, int]
# Where a message's bytes already are in memory: (buffer, file offset of its first byte).
Mem = Optional[Tuple[bytes, int]]


def _scan(buf: bytes, i: int, end: int, base: int, out: List[Field], limit: int) -> int:
    """Decode the fields of buf[i:end] into out (buf[0] is file offset base), at most
    limit of them. end may lie past the buffer (a message larger than the window):
    payloads are skipped by arithmetic, and decoding stops at the first field whose tag or
    length the buffer cuts off; the return value is where it stopped. Written as one flat
    loop: an exported graph has millions of fields and this is the per-field cost."""
    stop = min(end, len(buf))
    while i < stop and len(out) < limit:
        at = i
        tag = buf[i]
        i += 1
        if tag >= 0x80:
            tag &= 0x7F
            shift = 7
            while True:
                if i >= stop:
                    return at
                b = buf[i]
                i += 1
                tag |= (b & 0x7F) << shift
                if b < 0x80:
                    break
                shift += 7
                if shift > 63:
                    raise FormatError(f"protobuf varint too long at byte {base + at}")
        wire = tag & 7
        if tag < 8:
            raise FormatError(f"protobuf field number 0 at byte {base + at}")
        if wire == VARINT or wire == LEN:
            if i >= stop:
                return at
            value = buf[i]
            i += 1
            if value >= 0x80:
                value &= 0x7F
                shift = 7
                while True:
                    if i >= stop:
                        return at
                    b = buf[i]
                    i += 1
                    value |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 63:
                        raise FormatError(f"protobuf varint too long at byte {base + at}")
                value &= 0xFFFFFFFFFFFFFFFF
            payload = i
            if wire == LEN:
                if value > end - i:
                    raise FormatError(
                        f"field of {value} bytes runs past its message at byte {base + at}")
                i += value
        elif wire == I64 or wire == I32:
            value, payload = 0, i
            i += 8 if wire == I64 else 4
            if i > end:
                raise FormatError(f"fixed-width field runs past its message at byte {base + at}")
        else:                   # groups (3, 4) are deprecated and unused by ONNX
            raise FormatError(f"protobuf wire type {wire} at byte {base + at}")
        out.append((tag >> 3, wire, value, base + payload))
    return i


class _Parser:
    """Walks the messages that can hold tensors; every other field is skipped by its wire
    type without being read. A message up to IN_MEMORY bytes is read whole and decoded
    from memory (nodes, attributes, tensor headers); a larger one (the graph, tensors
    with their data) is decoded through the reader's window, its payloads never read."""

    IN_MEMORY = 1 << 16
    BATCH = 1 << 12         # fields decoded at a time from a large message

    def __init__(self, r: BoundedReader):
        self.r = r
        self.n_fields = 0
        self.spans: List[TensorSpan] = []

    # -- wire format ------------------------------------------------------------------
    def fields(self, start: int, n: int, mem: Mem
               ) -> Tuple[Iterable[Field], Mem]:
        """The fields of the message at file offset start, n bytes long, and the memory
        (buffer, file offset of its first byte) its payloads can be read from, if any."""
        if mem is None and n <= self.IN_MEMORY:
            self.r.pos = start
            mem = (self.r.take(n, "message"), start)
        if mem is None:
            return self._stream(start, start + n), None
        out: List[Field] = []
        buf, base = mem
        i, end = start - base, start - base + n
        if _scan(buf, i, end, base, out, n) != end:
            raise FormatError(f"protobuf field cut off by the end of its message at {start + n}")
        self._count(len(out))
        return out, mem

    def _stream(self, pos: int, end: int) -> Iterator[Field]:
        # Batches of fields from the reader's window. The consumer may move the reader
        # (it parses each node) between batches; every batch asks for its window anew.
        while pos < end:
            buf, i = self.r.window_at(pos, 32)
            out: List[Field] = []
            stopped = _scan(buf, i, i + end - pos, pos - i, out, self.BATCH)
            if stopped == i:
                raise FormatError(f"protobuf field cut off at byte {pos}")
            pos += stopped - i
            self._count(len(out))
            yield from out

    def _count(self, n: int) -> None:
        self.n_fields += n
        if self.n_fields > MAX_FIELDS:
            raise FormatError(f"more than {MAX_FIELDS} protobuf fields")

    def payload(self, pos: int, n: int, mem: Mem) -> bytes:
        if mem is not None:
            buf, base = mem
            return buf[pos - base:pos - base + n]
        self.r.pos = pos
        return self.r.take(n, "field")

    def string(self, pos: int, n: int, mem: Mem) -> str:
        if n > MAX_NAME_BYTES:
            raise FormatError(f"name of {n} bytes")
        return self.payload(pos, n, mem).decode("utf-8", errors="replace")

    @staticmethod
    def expect(wire: int, want: int, what: str) -> None:
        if wire != want:
            raise FormatError(f"{what} has wire type {wire}, not {want}")

    # -- messages -------------------------------------------------------------------------
    def model(self, file_size: int) -> List[TensorSpan]:
        graphs = 0
        fields, mem = self.fields(0, file_size, None)
        for field, wire, size, pos in fields:
            if field == 1:
                self.expect(wire, VARINT, "ModelProto.ir_version")
            elif field == 7:
                self.expect(wire, LEN, "ModelProto.graph")
                self.graph(pos, size, mem, 1)
                graphs += 1
            elif field == 20:
                self.expect(wire, LEN, "ModelProto.training_info")
                info, info_mem = self.fields(pos, size, mem)
                for f2, w2, n2, p2 in info:
                    if f2 in (1, 2):                # initialization, algorithm graphs
                        self.expect(w2, LEN, "TrainingInfoProto graph")
                        self.graph(p2, n2, info_mem, 1)
        if not graphs:
            raise FormatError("no graph in the model")
        return self.spans

    def graph(self, start: int, n: int, mem: Mem, depth: int) -> None:
        if depth > MAX_GRAPH_DEPTH:
            raise FormatError("graphs nested too deeply")
        fields, mem = self.fields(start, n, mem)
        for field, wire, size, pos in fields:
            if field == 5:
                self.expect(wire, LEN, "GraphProto.initializer")
                self.tensor(pos, size, mem, "")
            elif field == 15:
                self.expect(wire, LEN, "GraphProto.sparse_initializer")
                self.sparse_tensor(pos, size, mem, "")
            elif field == 1:
                self.expect(wire, LEN, "GraphProto.node")
                self.node(pos, size, mem, depth)

    def node(self, start: int, n: int, mem: Mem, depth: int) -> None:
        # Attribute tensors are usually unnamed: they are named after their node.
        name = output = ""
        attributes = []
        fields, mem = self.fields(start, n, mem)
        for field, wire, size, pos in fields:
            if field == 3:
                self.expect(wire, LEN, "NodeProto.name")
                name = self.string(pos, size, mem)
            elif field == 2 and not output:
                self.expect(wire, LEN, "NodeProto.output")
                output = self.string(pos, size, mem)
            elif field == 5:
                self.expect(wire, LEN, "NodeProto.attribute")
                attributes.append((pos, size))
        for pos, size in attributes:
            self.attribute(pos, size, mem, name or output, depth)

    def attribute(self, start: int, n: int, mem: Mem, node: str, depth: int) -> None:
        fields, mem = self.fields(start, n, mem)
        fields = list(fields)
        holders = [f for f in fields if f[0] in (5, 6, 10, 11, 22, 23)]
        if not holders:
            return              # the common case: an int, float, string or list of them
        name = ""
        for field, wire, size, pos in fields:
            if field == 1:
                self.expect(wire, LEN, "AttributeProto.name")
                name = self.string(pos, size, mem)
        for i, (field, wire, size, pos) in enumerate(holders):
            self.expect(wire, LEN, "AttributeProto tensor or graph")
            fallback = f"{node}/{name}" if len(holders) == 1 else f"{node}/{name}[{i}]"
            if field in (5, 10):            # t, tensors
                self.tensor(pos, size, mem, fallback)
            elif field in (22, 23):         # sparse_tensor, sparse_tensors
                self.sparse_tensor(pos, size, mem, fallback)
            else:                           # g, graphs
                self.graph(pos, size, mem, depth + 1)

    def sparse_tensor(self, start: int, n: int, mem: Mem, fallback: str) -> None:
        fields, mem = self.fields(start, n, mem)
        for field, wire, size, pos in fields:
            if field in (1, 2):                     # values, indices
                self.expect(wire, LEN, "SparseTensorProto tensor")
                self.tensor(pos, size, mem, fallback + ("" if field == 1 else ".indices"))

    def tensor(self, start: int, n: int, mem: Mem, fallback: str) -> None:
        dims: Optional[List[int]] = []
        data_type = 0
        name = ""
        location = 0
        payload: Dict[int, Tuple[int, int]] = {}    # field -> (offset, length)
        fields, mem = self.fields(start, n, mem)
        for field, wire, size, pos in fields:
            if field == 1:                          # dims: unpacked or packed int64
                if wire == VARINT:
                    if dims is not None:
                        dims.append(_int64(size))
                elif wire == LEN:
                    dims = self.packed_dims(pos, size, mem, dims)
                else:
                    raise FormatError(f"TensorProto.dims has wire type {wire}")
                if dims is not None and len(dims) > MAX_DIMS:
                    dims = None
            elif field == 2:
                self.expect(wire, VARINT, "TensorProto.data_type")
                data_type = size
            elif field == 8:
                self.expect(wire, LEN, "TensorProto.name")
                name = self.string(pos, size, mem)
            elif field == 9:
                self.expect(wire, LEN, "TensorProto.raw_data")
                payload[9] = (pos, size)
            elif field in (4, 10) and wire == LEN:  # packed float_data / double_data
                payload[field] = (pos, size)
            elif field == 14:
                self.expect(wire, VARINT, "TensorProto.data_location")
                location = size
        if location == _EXTERNAL or data_type not in ONNX_DTYPES:
            return
        dtype, bits = ONNX_DTYPES[data_type]
        if 9 in payload:
            offset, length = payload[9]
        elif data_type == _FLOAT and 4 in payload:
            offset, length = payload[4]
        elif data_type == _DOUBLE and 10 in payload:
            offset, length = payload[10]
        else:
            return
        if (8 * length) % bits:
            return              # not whole elements: not a tensor of this type
        shape = None
        if dims is not None and all(d >= 0 for d in dims) and \
                (prod(dims) * bits + 7) // 8 == length:
            shape = tuple(dims)
        self.spans.append(TensorSpan(offset, length, dtype, name or fallback, shape))

    def packed_dims(self, pos: int, n: int, mem: Mem,
                    dims: Optional[List[int]]) -> Optional[List[int]]:
        if dims is None or n > 10 * MAX_DIMS:
            return None         # the bytes are skipped; the shape is just unknown
        buf = self.payload(pos, n, mem)
        i = 0
        while i < n:
            try:
                v, i = _varint(buf, i)
            except ValueError:
                raise FormatError("bad packed TensorProto.dims") from None
            dims.append(_int64(v))
        return dims

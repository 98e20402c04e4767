"""The format layer: which byte ranges of a file are tensors of which element type.

Each module here knows one file format and answers one question, by content (never by
name: Hugging Face cache blobs have no suffix): "which byte ranges of this file are
tensors of which element type, and what is everything else?" The answer is a Layout:
a verbatim prefix (metadata that reads without decoding) and regions that tile the rest
of the file. Codecs turn regions into chunks; nothing here encodes or decodes.

Parsers treat every byte as hostile: a length or count is checked against the file size
before anything is allocated from it, and pickles are parsed, never executed. A file no
parser recognises is still stored losslessly - as plain bytes.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, List, Optional, Tuple

from ..errors import FpfsError

RAW = "RAW"     # element type of bytes that no tensor describes


class FormatError(FpfsError):
    """A file claims a format (its magic matched) but its structure is invalid. Callers
    store such files as plain bytes; the message says why."""


@dataclass(frozen=True)
class Region:
    """A byte range of the original file and the element type its bytes hold.

    dtype is a safetensors dtype name (F32, BF16, F8_E4M3, ...), a block-quantized type
    (GGUF_Q8_0, GGUF_Q4_K, ..., see fpfs.codecs.blocks) or RAW. tensor and shape name the
    tensor the bytes belong to (None for RAW): deltas match regions of two files by them.
    """
    offset: int
    length: int
    dtype: str = RAW
    tensor: Optional[str] = None
    shape: Optional[Tuple[int, ...]] = None


@dataclass(frozen=True)
class Layout:
    format: str                 # "safetensors", "torch", "gguf", "npy", "npz", "onnx", "bytes"
    prefix_length: int          # bytes [0, prefix_length) stored verbatim, uncompressed
    file_size: int
    regions: List[Region]       # tile [prefix_length, file_size) in order, no gaps

    def tensors(self) -> List[Region]:
        return [r for r in self.regions if r.tensor is not None]


@dataclass(frozen=True)
class TensorSpan:
    """A tensor's bytes as a parser found them, before tiling (offsets absolute)."""
    offset: int
    length: int
    dtype: str
    tensor: Optional[str] = None
    shape: Optional[Tuple[int, ...]] = None


@contextlib.contextmanager
def parser_warnings_ignored() -> Iterator[None]:
    """Python's own parsers warn about a hostile file's invalid string escapes ('\\m':
    DeprecationWarning, SyntaxWarning from 3.12): the format layer judges such input
    itself, so the warning is not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        yield


def tile(spans: Iterable[TensorSpan], prefix_length: int, file_size: int) -> List[Region]:
    """Regions tiling [prefix_length, file_size): the spans in offset order, RAW regions in
    the gaps. Spans that overlap an earlier one, reach outside the range or are empty are
    dropped from the typed map (their bytes stay stored, as RAW): the map is a hint for the
    codecs and never decides what is stored."""
    regions: List[Region] = []
    pos = prefix_length
    for s in sorted(spans, key=lambda s: (s.offset, s.length)):
        if s.length <= 0 or s.offset < pos or s.offset + s.length > file_size:
            continue
        if s.offset > pos:
            regions.append(Region(pos, s.offset - pos))
        regions.append(Region(s.offset, s.length, s.dtype, s.tensor, s.shape))
        pos = s.offset + s.length
    if pos < file_size:
        regions.append(Region(pos, file_size - pos))
    return regions


def plain_bytes(file_size: int) -> Layout:
    """The layout of a file no parser recognises: one RAW region."""
    return Layout("bytes", 0, file_size, tile((), 0, file_size))


# -- recognition ---------------------------------------------------------------------------
# Format modules, tried in order on the first SNIFF_BYTES of a file. Each has NAME,
# sniff(head, file_size) -> bool (a cheap magic check) and layout(f, file_size) -> Layout
# (a full parse; FormatError when the structure is invalid).
SNIFF_BYTES = 4096


def _modules():
    from . import safetensors
    mods = [safetensors]
    for name in ("gguf", "torch_zip", "npy", "npz", "onnx"):
        try:
            mods.append(__import__(f"{__name__}.{name}", fromlist=[name]))
        except ImportError:       # a format module not written yet
            pass
    return mods


def recognise(f: BinaryIO, file_size: int) -> Tuple[Layout, Optional[str]]:
    """(layout, why) of an open file: the first format whose magic matches and whose
    structure parses; plain bytes otherwise, with why naming the format that claimed the
    file but failed to parse (None when no format claimed it)."""
    f.seek(0)
    head = f.read(SNIFF_BYTES)
    why = None
    for mod in _modules():
        if not mod.sniff(head, file_size):
            continue
        try:
            found = mod.layout(f, file_size)
        except FormatError as exc:
            why = why or f"looks like {mod.NAME} but {exc}"
            continue
        _check_tiling(found)
        return found, None
    return plain_bytes(file_size), why


def detect(path: str) -> Layout:
    """The layout of the file at path (plain bytes if no format recognises it)."""
    with open(path, "rb") as f:
        import os
        return recognise(f, os.fstat(f.fileno()).st_size)[0]


def _check_tiling(found: Layout) -> None:
    """A parser bug must never lose bytes: the regions must tile the rest of the file."""
    pos = found.prefix_length
    for r in found.regions:
        if r.offset != pos or r.length <= 0:
            raise AssertionError(f"{found.format} layout does not tile the file at {pos}")
        pos += r.length
    if pos != found.file_size or not 0 <= found.prefix_length <= found.file_size:
        raise AssertionError(f"{found.format} layout does not cover the file")

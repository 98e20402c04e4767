"""What every format parser answers with: a Layout, the file's verbatim prefix and the
regions tiling the rest, each RAW or a tensor of one element type; and the FormatError a
parser raises when a file that claims its format does not parse."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Tuple

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

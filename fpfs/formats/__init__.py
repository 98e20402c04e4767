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

from typing import BinaryIO, Optional, Tuple

from .layout import (RAW, FormatError, Layout, Region, TensorSpan, parser_warnings_ignored,
                     plain_bytes, tile)


# -- recognition ---------------------------------------------------------------------------
# Format modules, tried in order on the first SNIFF_BYTES of a file. Each has NAME,
# sniff(head, file_size) -> bool (a cheap magic check) and layout(f, file_size) -> Layout
# (a full parse; FormatError when the structure is invalid).
SNIFF_BYTES = 4096


def _modules():
    from . import gguf, npy, npz, onnx, safetensors, torch_zip
    return [safetensors, gguf, torch_zip, npy, npz, onnx]


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


__all__ = ["RAW", "FormatError", "Layout", "Region", "TensorSpan", "parser_warnings_ignored",
           "plain_bytes", "tile", "SNIFF_BYTES", "recognise", "detect"]

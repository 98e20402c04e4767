"""NumPy .npz (np.savez): a ZIP whose members are .npy files named `<key>.npy`.

np.savez STORES its members, so each member's array bytes are a span named by its key (the
member name without ".npy"); member npy headers, zip headers and the central directory
stay RAW, and prefix_length is 0. np.savez_compressed DEFLATES its members: the file is
still recognised, but with no spans (compressed bytes have no element type).
"""
from __future__ import annotations

from typing import BinaryIO, List

from .layout import FormatError, Layout, TensorSpan, tile
from .npy import MAX_HEADER_BYTES, parse_header
from .zip_entries import STORED, first_local_name, read_entries

NAME = "npz"
SUFFIX = ".npy"


def sniff(head: bytes, file_size: int) -> bool:
    # torch.save's first entry is `<archive>/data.pkl`: a torch file never matches this.
    name = first_local_name(head)
    return name is not None and name.endswith(SUFFIX.encode())


def layout(f: BinaryIO, file_size: int) -> Layout:
    entries = read_entries(f, file_size)
    spans: List[TensorSpan] = []
    for entry in entries:
        if not entry.name.endswith(SUFFIX) or entry.method != STORED or entry.flags & 1:
            continue
        f.seek(entry.data_offset)
        head = f.read(min(entry.length, 12 + MAX_HEADER_BYTES))
        try:
            hdr = parse_header(head, entry.length)
        except FormatError:
            continue        # a member that is not a valid .npy is stored as bytes
        if hdr.dtype == "RAW" or hdr.data_length is None \
                or hdr.header_length + hdr.data_length > entry.length:
            continue
        spans.append(TensorSpan(entry.data_offset + hdr.header_length, hdr.data_length,
                                hdr.dtype, entry.name[:-len(SUFFIX)], hdr.shape))
    return Layout(NAME, 0, file_size, tile(spans, 0, file_size))

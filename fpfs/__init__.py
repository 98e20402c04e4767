"""fpfs: lossless exponent/mantissa compression of neural-network weights, mounted as the
original safetensors files.

    fpfs.compress_file(src, dst)      safetensors -> .fpz (atomic, verified)
    fpfs.decompress_file(src, dst)    .fpz -> original bytes
    fpfs.verify_file(path)            every chunk checksum and the whole-file SHA-256
    fpfs.open(path)                   read-only file object with pread over a .fpz
    fpfs.load_file(path, framework)   the tensors of a compressed safetensors file
Paths may be s3://BUCKET/KEY URLs (fpfs/store/).
"""
from .compress import CompressResult, compress_file, decompress_file, verify_file
from .container import SUFFIX
from .errors import (CorruptChunk, CorruptContainer, FpfsError, NotSafetensors,
                     UnsupportedVersion)
from .fpz_file import FpzFile
from .fpz_file import open_packed as open  # noqa: A001  (mirrors builtins.open)
from .loading import load_file
from .packed_file import PackedFile

__version__ = "0.1.0"

__all__ = [
    "compress_file", "decompress_file", "verify_file", "open", "load_file", "FpzFile", "PackedFile",
    "CompressResult", "FpfsError", "NotSafetensors", "CorruptContainer", "CorruptChunk",
    "UnsupportedVersion", "SUFFIX",
]

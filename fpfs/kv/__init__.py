"""fpfs.kv: K/V caches, losslessly compressed with the codecs fpfs uses for weights.

Tensors (tensors.py; numpy arrays, ml_dtypes or torch; FP16, BF16, FP32, F8_E4M3, F8_E5M2):

    blob = fpfs.kv.compress(tensor)         # bytes, shape and dtype preserved
    tensor = fpfs.kv.decompress(blob)       # same type (numpy or torch) and dtype

Byte layout ("FPKV") in FORMAT.md.
"""
from .tensors import (MAGIC, MAX_WHOLE_CHUNK, SUPPORTED, VERSION, BlobHead, UnsupportedDtype,
                      blob_head, compress, compress_block, decompress, restore_block)

__all__ = ["compress", "decompress", "compress_block", "restore_block", "blob_head",
           "BlobHead", "UnsupportedDtype", "SUPPORTED", "MAGIC", "VERSION", "MAX_WHOLE_CHUNK"]

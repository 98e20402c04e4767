"""Where container bytes come from: the backing-store seam.

The read path (fpfs/container.py, fpfs/packed_file.py) asks a StoreObject for "bytes at
offset" and a Store for "does this name exist / open it"; it never knows whether a local
file (local.py) or an S3 object (s3.py) answered. Names are local paths or `s3://BUCKET/KEY`
URLs; open_object() and store_for() pick the store from the name.
"""
from __future__ import annotations

from .objects import ChunkReader, DirectChunkReader, Store, StoreObject
from .urls import S3_SCHEME, is_url, join_url, split_url, url_ancestors


def store_for(name: str) -> Store:
    if is_url(name):
        from .s3 import default_store
        return default_store()
    from .local import LOCAL
    return LOCAL


def open_object(name: str) -> StoreObject:
    return store_for(name).open(name)


__all__ = ["ChunkReader", "DirectChunkReader", "Store", "StoreObject", "S3_SCHEME", "is_url",
           "join_url", "split_url", "url_ancestors", "store_for", "open_object"]

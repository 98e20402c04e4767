"""Typed errors. Everything fpfs raises on bad input derives from FpfsError, so the CLI can
print one line and the mount can answer EIO without guessing."""


class FpfsError(Exception):
    """Base class of fpfs errors."""


class NotSafetensors(FpfsError):
    """The input is not a safetensors file (kept for API compatibility; fpfs now stores
    any file, recognised formats by their tensors and everything else as bytes)."""


class AlreadyCompressed(FpfsError):
    """The input is already an fpfs container."""


class MissingBase(FpfsError):
    """A delta container's base file is not where fpfs looks for it, or is not the file the
    delta was coded against."""


class CorruptContainer(FpfsError):
    """A .fpz file failed validation: bad magic, lengths, table, checksum or hash."""


class UnsupportedVersion(CorruptContainer):
    """The .fpz file was written by a newer fpfs (format version or flags unknown)."""


class CorruptChunk(CorruptContainer):
    """One chunk failed to decode or its checksum did not match."""

    def __init__(self, path: str, index: int, reason: str):
        super().__init__(f"{path}: chunk {index}: {reason}")
        self.path = path
        self.index = index
        self.reason = reason


class StoreError(FpfsError):
    """The backing store (an S3 endpoint) did not answer, or failed, after its retries."""


class ObjectChanged(StoreError):
    """An object was replaced or removed while fpfs was reading it (its ETag changed): what
    was read before may belong to the old version, so nothing more is read from it."""

"""Import mfusepy bound to libfuse3 (it silently picks libfuse2 unless told), with a clear
message when FUSE is not installed."""
from __future__ import annotations

import os

from ..errors import FpfsError


class FuseUnavailable(FpfsError):
    pass


def load():
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    try:
        import mfusepy
    except (ImportError, OSError) as exc:
        raise FuseUnavailable(
            f"cannot load libfuse3 ({exc}); install it: apt-get install fuse3 libfuse3-3 "
            "(and pip install mfusepy)") from None
    return mfusepy

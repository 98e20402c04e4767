"""The one error chunk codecs raise."""
from ..errors import FpfsError


class DecodeError(FpfsError):
    """A payload could not be decoded (the caller adds file and chunk to the message)."""

"""The object-store layout's manifest (FORMAT.md, "Object-store layout").

A tree published under s3://BUCKET/PREFIX holds one object per regular file of the tree
`fpfs compress` writes locally, under the same relative name (X.safetensors.fpz,
.fpfs-bases/<sha256>.fpz, config.json), and one object PREFIX/.fpfs-manifest.json,
written last, naming every entry: directories, symlinks (which S3 cannot hold), files
with the ETag and size of their object, and for containers the original size (so a
listing with sizes costs one GET, not two per file). A manifest is a snapshot: the mount
opens each object pinned to the ETag it names."""
from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional

from .. import tempfiles
from ..errors import FpfsError

MANIFEST_NAME = ".fpfs-manifest.json"
MANIFEST_VERSION = 1
KINDS = ("file", "dir", "link")


class CorruptManifest(FpfsError):
    pass


@dataclass(frozen=True)
class Entry:
    path: str                               # relative, "/"-separated, no "." or ".."
    kind: str                               # file | dir | link
    size: int = 0                           # file: the object's size
    etag: str = ""                          # file: the object's ETag
    original_size: Optional[int] = None     # file that is a container: the original's size
    mode: int = 0o644                       # permission bits
    mtime_ns: int = 0
    target: str = ""                        # link: where it points, as stored

    @property
    def is_container(self) -> bool:
        return self.original_size is not None

    def to_json(self) -> dict:
        defaults = Entry("", self.kind)
        return {k: v for k, v in asdict(self).items()
                if k in ("path", "kind") or v != getattr(defaults, k)}


def check_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or "\0" in path or \
            any(p in ("", ".", "..") for p in parts):
        raise CorruptManifest(f"invalid path {path!r} in the manifest")
    return path


def entry_from_json(d) -> Entry:
    if not isinstance(d, dict) or d.get("kind") not in KINDS or \
            not isinstance(d.get("path"), str):
        raise CorruptManifest(f"invalid manifest entry {str(d)[:200]}")
    fields = {"size": int, "etag": str, "original_size": int, "mode": int, "mtime_ns": int,
              "target": str}
    kwargs = {}
    for name, typ in fields.items():
        if name in d:
            value = d[name]
            if not isinstance(value, typ) or isinstance(value, bool) or \
                    (typ is int and value < 0):
                raise CorruptManifest(f"invalid {name} in manifest entry {d['path']!r}")
            kwargs[name] = value
    return Entry(check_path(d["path"]), d["kind"], **kwargs)


def dumps(entries: Iterable[Entry]) -> bytes:
    """The manifest: JSON, one entry a line (readable, and diffs of two publishes are)."""
    lines = [json.dumps(e.to_json(), separators=(",", ":"))
             for e in sorted(entries, key=lambda e: e.path)]
    return (f'{{"fpfs_manifest": {MANIFEST_VERSION}, "entries": [\n'
            + ",\n".join(lines) + "\n]}\n").encode()


def loads(data: bytes, where: str) -> Dict[str, Entry]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptManifest(f"{where}: not a manifest ({str(exc)[:200]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise CorruptManifest(f"{where}: not an fpfs manifest")
    if doc.get("fpfs_manifest") != MANIFEST_VERSION:
        raise CorruptManifest(f"{where}: manifest version {doc.get('fpfs_manifest')!r} "
                              f"(this fpfs reads {MANIFEST_VERSION}); upgrade fpfs")
    return {e.path: e for e in map(entry_from_json, doc["entries"])}


def local_entries(root: str) -> List[Entry]:
    """Every directory, symlink and regular file under root, the base store included
    (fpfs's temporary files left out); files without ETags yet."""
    from ..container import Container, is_container
    out: List[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames) + sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if name.startswith(tempfiles.TMP_PREFIX):
                continue
            st = os.lstat(path)
            common = dict(mode=stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns)
            if stat.S_ISLNK(st.st_mode):
                out.append(Entry(rel, "link", target=os.readlink(path), **common))
            elif stat.S_ISDIR(st.st_mode):
                out.append(Entry(rel, "dir", **common))
            elif stat.S_ISREG(st.st_mode):
                original = None
                if name.endswith(".fpz") and is_container(path):
                    with Container(path) as c:
                        original = c.original_size
                out.append(Entry(rel, "file", size=st.st_size, original_size=original,
                                 **common))
    return out

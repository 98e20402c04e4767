"""`fpfs BACKING MOUNTPOINT -o opt,opt`: the form mount.fuse3 runs for `mount -t fuse.fpfs`
and for /etc/fstab entries of type fuse.fpfs, turned into `fpfs mount` arguments.

mount(8) hands mount.fuse3 the generic mount options too (rw or ro, dev/suid or
nodev/nosuid/noexec for `user` mounts, ...) and keeps some for itself (_netdev, nofail,
noauto, x-systemd.*); both are ignored here. fpfs's own options are the `fpfs mount` flags
with `_` for `-` and `=` for a value: cache_size=2G, cache_dir=/var/cache/fpfs,
endpoint_url=http://..., metrics=127.0.0.1:9110, allow_other, writable. `rw` does not make
a mount writable (mount(8) passes it whenever `ro` is not given): say `writable`."""
from __future__ import annotations

from typing import List, Optional

# Generic mount(8) / mount.fuse3 / systemd options that mean nothing to fpfs.
IGNORED = {"rw", "ro", "defaults", "auto", "noauto", "user", "nouser", "users", "owner",
           "group", "_netdev", "nofail", "dev", "nodev", "suid", "nosuid", "exec", "noexec",
           "async", "sync", "atime", "noatime", "relatime", "strictatime", "nodiratime",
           "diratime", "lazytime", "nolazytime", "silent", "loud"}
IGNORED_PREFIXES = ("x-", "comment=")
# fpfs mount flags that take no value.
SWITCHES = {"allow_other", "writable", "debug"}
# fpfs mount flags that take one: everything a fleet's fstab line may want to set.
VALUED = {"cache_size", "threads", "decode_ahead", "log_file", "metrics", "endpoint_url",
          "region", "concurrency", "request_size", "readahead", "timeout", "retries",
          "deadline", "cache_dir", "disk_cache_size", "metadata_ttl"}


class FstabError(ValueError):
    pass


def is_fstab_form(argv: List[str], commands: List[str]) -> bool:
    """`fpfs BACKING MOUNTPOINT [-o OPTS]`: two operands, the first not a command."""
    operands = [a for i, a in enumerate(argv)
                if not a.startswith("-") and (i == 0 or argv[i - 1] != "-o")]
    return len(argv) >= 2 and not argv[0].startswith("-") and argv[0] not in commands and \
        len(operands) == 2


def mount_argv(argv: List[str]) -> List[str]:
    """`BACKING MOUNTPOINT -o a,b=c` (-o may repeat, or be glued: -oa,b) -> the argv of
    `fpfs mount BACKING MOUNTPOINT --a --b c`."""
    operands: List[str] = []
    options: List[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            value: Optional[str] = next(it, None)
            if value is None:
                raise FstabError("-o needs a value")
            options += value.split(",")
        elif arg.startswith("-o"):
            options += arg[2:].split(",")
        elif arg.startswith("-"):
            raise FstabError(f"{arg}: only -o OPTIONS is understood in the "
                             "`fpfs BACKING MOUNTPOINT -o OPTIONS` form")
        else:
            operands.append(arg)
    if len(operands) != 2:
        raise FstabError("expected BACKING MOUNTPOINT -o OPTIONS")
    out = ["mount", *operands]
    writable = read_only = False
    for opt in filter(None, (o.strip() for o in options)):
        name, eq, value = opt.partition("=")
        read_only |= opt == "ro"
        writable |= name == "writable"
        if opt in IGNORED or opt.startswith(IGNORED_PREFIXES):
            continue
        if name in SWITCHES and not eq:
            out.append("--" + name.replace("_", "-"))
        elif name in VALUED and eq and value:
            out += ["--" + name.replace("_", "-"), value]
        else:
            raise FstabError(f"mount option {opt!r} is not an fpfs option (known: "
                             f"{', '.join(sorted(SWITCHES | {v + '=' for v in VALUED}))})")
    if writable and read_only:
        raise FstabError("mount options ro and writable contradict each other")
    return out

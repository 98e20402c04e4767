"""`fpfs mount`, `umount`, `status` (fpfs/mount/launcher.py does the work) and `warmup`."""
from __future__ import annotations

from ..options import UserError, store_settings
from ..progress import human_bytes
from . import EXIT_OK


def cmd_mount(args) -> int:
    from ..mount import launcher
    return launcher.mount(args)


def cmd_warmup(args) -> int:
    from ..warmup import check_paths, is_remote, warm_paths, warm_store
    problem = check_paths(args.paths)
    if problem:
        raise UserError(problem)
    say = print if args.verbose else None
    if not is_remote(args.paths):
        total = warm_paths(args.paths, say=say)
        print(f"read {human_bytes(total)}")
        return EXIT_OK
    if not args.cache_dir:
        raise UserError("warming s3:// needs --cache-dir (the one the mounts will use)")
    from ..store.remote_tree import RemoteConfig
    config = RemoteConfig(store_settings(args), args.cache_dir, args.disk_cache_size)
    total = sum(warm_store(url, config, say) for url in args.paths)
    print(f"{args.cache_dir}: holds the chunks of {human_bytes(total)} of containers")
    return EXIT_OK


def cmd_umount(args) -> int:
    from ..mount import launcher
    return launcher.umount(args.mountpoint, lazy=args.lazy)


def cmd_status(args) -> int:
    from ..mount import launcher
    return launcher.status(args.mountpoint, as_json=args.json)

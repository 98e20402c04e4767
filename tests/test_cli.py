"""The `fpfs` command line, in-process (fpfs.cli.main) and as `python -m fpfs.cli`: trees
with a Hugging Face cache layout, verify/stats, --in-place, and user errors (one line, an
exit code, no traceback, nothing half-written left behind), including a full disk."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import fpfs
from fpfs import cli
from fpfs.container import ContainerWriter
from tests import st_files
from tests.st_files import build, sample_bytes

CHUNK = "4096"


def model_bytes(seed: int, n: int = 40000) -> bytes:
    rng = np.random.default_rng(seed)
    return build([("w", "BF16", sample_bytes("BF16", n, rng)),
                  ("b", "F32", sample_bytes("F32", 400, rng)),
                  ("s", "F8_E8M0", sample_bytes("F8_E8M0", 3000, rng))],
                 metadata={"format": "pt"})


@pytest.fixture
def hf_tree(tmp_path):
    """A Hugging Face cache-like tree:
        models--org--m/blobs/<sha>          safetensors by content, no suffix
        models--org--m/blobs/<sha2>         config.json contents
        models--org--m/refs/main            plain text
        models--org--m/snapshots/rev/model.safetensors -> ../../blobs/<sha>
        models--org--m/snapshots/rev/config.json       -> ../../blobs/<sha2>
        extra/nested/deeper/adapter.safetensors        safetensors with a suffix
        extra/nested/notes.txt, extra/empty.bin        plain files
        extra/emptydir/                                an empty directory
        extra/link_to_dir -> nested                    a symlink to a directory
    """
    root = tmp_path / "src"
    repo = root / "models--org--m"
    blob = model_bytes(1)
    config = b'{"architectures": ["Bert"]}\n'
    sha, sha2 = hashlib.sha256(blob).hexdigest(), hashlib.sha256(config).hexdigest()
    for d in ("blobs", "refs", "snapshots/rev"):
        (repo / d).mkdir(parents=True)
    st_files.write(repo / "blobs" / sha, blob)
    st_files.write(repo / "blobs" / sha2, config)
    st_files.write(repo / "refs" / "main", b"rev\n")
    os.symlink(f"../../blobs/{sha}", repo / "snapshots/rev/model.safetensors")
    os.symlink(f"../../blobs/{sha2}", repo / "snapshots/rev/config.json")
    (root / "extra/nested/deeper").mkdir(parents=True)
    (root / "extra/emptydir").mkdir()
    st_files.write(root / "extra/nested/deeper/adapter.safetensors", model_bytes(2, 9000))
    st_files.write(root / "extra/nested/notes.txt", b"hello\n" * 100)
    st_files.write(root / "extra/empty.bin", b"")
    os.chmod(root / "extra/nested/notes.txt", 0o640)
    os.symlink("nested", root / "extra/link_to_dir")
    return root, sha


def snapshot(root) -> dict:
    """rel path -> ('dir',) | ('link', target) | ('file', bytes, mode)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", f.read(), stat.S_IMODE(st.st_mode))
    return out


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, expected_code=2):
    assert code == expected_code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fpfs: error:"), err
    assert "Traceback" not in err


def no_temp_files(root) -> bool:
    return not [os.path.join(d, n) for d, ds, fs in os.walk(root) for n in ds + fs
                if n.startswith(".fpfs-tmp-")]


# -- trees ---------------------------------------------------------------------------------
def test_compress_decompress_tree(hf_tree, tmp_path, capsys):
    src, sha = hf_tree
    before = snapshot(src)
    code, out, err = run(capsys, "compress", str(src), str(tmp_path / "packed"),
                         "--chunk-size", CHUNK, "-v")
    assert code == 0, err
    assert "Traceback" not in err
    assert snapshot(src) == before                                  # source untouched
    packed = snapshot(tmp_path / "packed")
    repo = "models--org--m"
    # the suffix-less blob was recognised by content
    assert packed[f"{repo}/blobs/{sha}.fpz"][0] == "file"
    assert f"{repo}/blobs/{sha}" not in packed
    assert packed["extra/nested/deeper/adapter.safetensors.fpz"][0] == "file"
    # symlinks verbatim, plain files copied byte for byte with their mode
    for rel, entry in before.items():
        if entry[0] == "link":
            assert packed[rel] == entry
        elif entry[0] == "dir":
            assert packed[rel] == ("dir",)
        elif rel.endswith(".safetensors") or rel == f"{repo}/blobs/{sha}":
            assert fpfs.open(str(tmp_path / "packed" / (rel + ".fpz"))).read() == entry[1]
        else:
            assert packed[rel] == entry
    assert no_temp_files(tmp_path)

    code, out, err = run(capsys, "decompress", str(tmp_path / "packed"),
                         str(tmp_path / "restored"))
    assert code == 0, err
    assert snapshot(tmp_path / "restored") == before
    # through the restored snapshot link the model loads as the original
    with open(tmp_path / "restored" / repo / "snapshots/rev/model.safetensors", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == sha
    assert no_temp_files(tmp_path)


def test_compress_rejects_dst_inside_src(hf_tree, capsys):
    src, _ = hf_tree
    code, out, err = run(capsys, "compress", str(src), str(src / "extra" / "out"))
    assert_user_error(code, err)
    assert not (src / "extra" / "out").exists()


def test_single_file_into_directory(tmp_path, capsys):
    src = st_files.write(tmp_path / "m.safetensors", model_bytes(3))
    (tmp_path / "out").mkdir()
    code, out, err = run(capsys, "compress", src, str(tmp_path / "out"), "--chunk-size", "4K")
    assert code == 0, err
    fpz = tmp_path / "out" / "m.safetensors.fpz"
    assert fpz.exists() and "% of original" in out
    (tmp_path / "back").mkdir()
    code, out, err = run(capsys, "decompress", str(fpz), str(tmp_path / "back"))
    assert code == 0, err
    assert (tmp_path / "back" / "m.safetensors").read_bytes() == model_bytes(3)
    assert stat.S_IMODE(os.stat(fpz).st_mode) == stat.S_IMODE(os.stat(src).st_mode)


# -- verify and stats ----------------------------------------------------------------------
def test_verify_and_corruption(hf_tree, tmp_path, capsys):
    src, sha = hf_tree
    dst = tmp_path / "packed"
    assert run(capsys, "compress", str(src), str(dst), "--chunk-size", CHUNK)[0] == 0
    code, out, err = run(capsys, "verify", str(dst))
    assert code == 0, (out, err)
    assert out.count("OK ") == 2 and "FAIL" not in out
    blob = dst / "models--org--m" / "blobs" / f"{sha}.fpz"
    assert run(capsys, "verify", str(blob))[0] == 0
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x40                                    # inside a chunk payload
    blob.write_bytes(bytes(data))
    code, out, err = run(capsys, "verify", str(dst))
    assert code == 1
    assert "FAIL" in out and f"{sha}.fpz" in out and out.count("OK ") == 1
    assert "1 of 2" in err and "Traceback" not in err
    # decompressing the damaged tree fails with exit 1 and leaves no partial blob
    code, out, err = run(capsys, "decompress", str(dst), str(tmp_path / "restored"))
    assert code == 1 and err.startswith("fpfs: error:") and "Traceback" not in err
    assert not (tmp_path / "restored" / "models--org--m" / "blobs" / sha).exists()
    assert no_temp_files(tmp_path)
    # a truncated container: verify says FAIL, exit 1
    blob.write_bytes(bytes(data[:-10]))
    code, out, err = run(capsys, "verify", str(blob))
    assert code == 1 and "FAIL" in out


def test_stats_json(hf_tree, tmp_path, capsys):
    src, _ = hf_tree
    dst = tmp_path / "packed"
    assert run(capsys, "compress", str(src), str(dst), "--chunk-size", CHUNK)[0] == 0
    code, out, err = run(capsys, "stats", str(dst), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["files"]) == 2
    for f in doc["files"]:
        assert {"BF16", "F32", "F8_E8M0", "header"} <= set(f["dtypes"])
        assert f["stored_bytes"] == os.path.getsize(f["path"])
        assert sum(d["original_bytes"] for d in f["dtypes"].values()) == f["original_bytes"]
        assert f["dtypes"]["BF16"]["ratio"] < 1.0
        for d in f["dtypes"].values():
            assert set(d) >= {"original_bytes", "stored_bytes", "ratio", "codecs"}
            assert all(k in ("raw", "planes", "zstd", "expmant", "verbatim") for k in d["codecs"])
    total = doc["total"]
    assert total["original_bytes"] == sum(f["original_bytes"] for f in doc["files"])
    code, out, err = run(capsys, "stats", str(dst))
    assert code == 0 and "BF16" in out and "%" in out


# -- --in-place ----------------------------------------------------------------------------
def test_in_place(hf_tree, capsys):
    src, sha = hf_tree
    before = snapshot(src)
    code, out, err = run(capsys, "compress", "--in-place", str(src), "--chunk-size", CHUNK)
    assert code == 0, err
    after = snapshot(src)
    replaced = [f"models--org--m/blobs/{sha}", "extra/nested/deeper/adapter.safetensors"]
    for rel in replaced:
        assert rel not in after and after[rel + ".fpz"][0] == "file"
        fpfs.verify_file(str(src / (rel + ".fpz")))
        assert fpfs.open(str(src / (rel + ".fpz"))).read() == before[rel][1]
    for rel, entry in before.items():
        if rel not in replaced:
            assert after[rel] == entry                               # links, plain files
    assert no_temp_files(src)
    # running it again finds nothing left to do: a user error, nothing changes
    code, out, err = run(capsys, "compress", "--in-place", str(src))
    assert_user_error(code, err)
    assert snapshot(src) == after
    code, out, err = run(capsys, "compress", "--in-place", str(src), str(src) + "x")
    assert_user_error(code, err)


def test_in_place_failure_keeps_original(tmp_path, capsys, monkeypatch):
    src = st_files.write(tmp_path / "m.safetensors", model_bytes(4))
    monkeypatch.setattr(fpfs.compress, "verify_file", _raise_corrupt)
    code, out, err = run(capsys, "compress", "--in-place", str(tmp_path))
    assert code == 1 and "Traceback" not in err
    assert os.listdir(tmp_path) == ["m.safetensors"]
    assert open(src, "rb").read() == model_bytes(4)


def _raise_corrupt(path, progress=None, root=None):
    raise fpfs.CorruptContainer(f"{path}: simulated verification failure")


# -- user errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["compress", "{missing}", "{tmp}/out"],
    ["compress", "--in-place", "{missing}"],
    ["decompress", "{missing}", "{tmp}/out"],
    ["verify", "{missing}"],
    ["stats", "{missing}"],
    ["stats", "{missing}", "--json"],
])
def test_missing_input(tmp_path, capsys, argv):
    argv = [a.format(missing=tmp_path / "nope", tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, *argv)
    assert_user_error(code, err)
    assert "nope" in err
    assert os.listdir(tmp_path) == []


def test_non_weight_inputs(tmp_path, capsys):
    plain = st_files.write(tmp_path / "plain.safetensors", b"definitely not weights" * 10)
    code, out, err = run(capsys, "compress", plain, str(tmp_path / "o.fpz"))
    assert code == 0, err                           # stored as bytes, as asked
    assert fpfs.open(str(tmp_path / "o.fpz")).read() == b"definitely not weights" * 10
    code, out, err = run(capsys, "compress", str(tmp_path / "o.fpz"), str(tmp_path / "o2.fpz"))
    assert_user_error(code, err)
    assert "already an fpfs container" in err
    os.unlink(tmp_path / "o.fpz")
    # decompress / verify / stats of something that is not a container
    code, out, err = run(capsys, "decompress", plain, str(tmp_path / "o"))
    assert_user_error(code, err)
    code, out, err = run(capsys, "stats", plain)
    assert code == 1 and err.startswith("fpfs: error:") and "Traceback" not in err
    code, out, err = run(capsys, "verify", plain)
    assert code == 1 and "FAIL" in out
    # an empty directory has nothing to verify
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "verify", str(tmp_path / "empty"))
    assert_user_error(code, err)
    assert sorted(os.listdir(tmp_path)) == ["empty", "plain.safetensors"]


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["compress", "a", "b", "--chunk-size", "lots"])
    assert exc.value.code == 2
    code, out, err = run(capsys)
    assert code == 2 and "usage" in out.lower()


def test_bad_chunk_size_is_a_user_error(tmp_path, capsys):
    src = st_files.write(tmp_path / "m.safetensors", model_bytes(5))
    for size in ("5001", "1K", "0", "128M"):
        code, out, err = run(capsys, "compress", src, str(tmp_path / "o.fpz"), "--chunk-size",
                             size)
        assert_user_error(code, err)
        assert "chunk size" in err
        assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


# -- failures mid-write: nothing half-written ----------------------------------------------
def test_failure_mid_write_leaves_nothing(hf_tree, tmp_path, capsys, monkeypatch):
    src, sha = hf_tree
    calls = {"n": 0}
    real_add = ContainerWriter.add

    def failing_add(self, rec):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(5, "Input/output error (simulated)")
        return real_add(self, rec)

    monkeypatch.setattr(ContainerWriter, "add", failing_add)
    before = snapshot(src)
    code, out, err = run(capsys, "compress", str(src), str(tmp_path / "packed"),
                         "--chunk-size", CHUNK)
    assert code == 1 and err.startswith("fpfs: error:") and "Traceback" not in err
    assert "simulated" in err
    assert no_temp_files(tmp_path)
    assert not [p for p in snapshot(tmp_path / "packed") if p.endswith(".fpz")]
    assert snapshot(src) == before


def test_interrupt_mid_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    src = st_files.write(tmp_path / "m.safetensors", model_bytes(6))

    def interrupted(self, rec):
        raise KeyboardInterrupt

    monkeypatch.setattr(ContainerWriter, "add", interrupted)
    code, out, err = run(capsys, "compress", src, str(tmp_path / "m.fpz"))
    assert code == 130 and "Traceback" not in err
    assert os.listdir(tmp_path) == ["m.safetensors"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (tests run as root here)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full(tmp_path, tiny_disk, capsys):
    rng = np.random.default_rng(7)
    # 3 MB: compressible weights that still need > 1 MiB, plus incompressible bytes
    content = build([("w", "BF16", sample_bytes("BF16", 2_000_000, rng)),
                     ("n", "U8", sample_bytes("U8", 1_000_000, rng, "random"))])
    src = st_files.write(tmp_path / "big.safetensors", content)
    digest = hashlib.sha256(content).hexdigest()
    code, out, err = run(capsys, "compress", src, str(tiny_disk / "big.safetensors.fpz"),
                         "--chunk-size", "64K")
    assert code == 1
    assert "disk full" in err and err.startswith("fpfs: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert os.listdir(tiny_disk) == []                         # no temp, no partial output
    assert hashlib.sha256(open(src, "rb").read()).hexdigest() == digest
    # a tree whose plain file does not fit either
    tree = tmp_path / "tree"
    tree.mkdir()
    st_files.write(tree / "blob.bin", content)
    code, out, err = run(capsys, "compress", str(tree), str(tiny_disk / "out"))
    assert code == 1 and "disk full" in err and "Traceback" not in err
    assert no_temp_files(tiny_disk) and not (tiny_disk / "out" / "blob.bin").exists()
    # decompress onto the full disk: same
    fpz = str(tmp_path / "big.fpz")
    fpfs.compress_file(src, fpz, chunk_size=65536)
    code, out, err = run(capsys, "decompress", fpz, str(tiny_disk / "big.safetensors"))
    assert code == 1 and "disk full" in err and "Traceback" not in err
    assert no_temp_files(tiny_disk) and not (tiny_disk / "big.safetensors").exists()


# -- as a real process ---------------------------------------------------------------------
def fpfs_cmd(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "fpfs.cli", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_subprocess_round_trip(hf_tree, tmp_path):
    src, sha = hf_tree
    res = fpfs_cmd("compress", src, tmp_path / "packed", "--chunk-size", "8K", "--threads", "2")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    res = fpfs_cmd("verify", tmp_path / "packed")
    assert res.returncode == 0 and res.stdout.count("OK ") == 2
    res = fpfs_cmd("stats", tmp_path / "packed", "--json")
    assert res.returncode == 0 and len(json.loads(res.stdout)["files"]) == 2
    res = fpfs_cmd("decompress", tmp_path / "packed", tmp_path / "restored")
    assert res.returncode == 0, res.stderr
    assert snapshot(tmp_path / "restored") == snapshot(src)


def test_subprocess_errors(tmp_path):
    res = fpfs_cmd("compress", tmp_path / "missing", tmp_path / "out")
    assert res.returncode == 2 and res.stderr.startswith("fpfs: error:")
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    plain = st_files.write(tmp_path / "x.safetensors", b"\x00" * 64)
    res = fpfs_cmd("compress", tmp_path / "missing.fpz", tmp_path / "x.fpz")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    res = fpfs_cmd("verify", plain)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors"]

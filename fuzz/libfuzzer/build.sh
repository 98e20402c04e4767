#!/usr/bin/env bash
# Build the libFuzzer targets of the plain-C decoders (clang with libFuzzer, ASan, UBSan:
# Debian's clang-14 and libclang-rt-14-dev), and seed corpora from real chunks.
#   bash fuzz/libfuzzer/build.sh && fuzz/libfuzzer/out/fuzz_planes fuzz/libfuzzer/out/corpus-planes -runs=10000000
set -euo pipefail
cd "$(dirname "$0")"
CC=${CC:-$(command -v clang-14 || command -v clang)}
mkdir -p out
for t in 1:rans 2:planes 3:mask 4:delta 5:rans32 6:expmant; do
    "$CC" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -I../../cython_ext -DFPFS_TARGET="${t%%:*}" fuzz_decode.c -o "out/fuzz_${t##*:}"
done
python3 seeds.py out

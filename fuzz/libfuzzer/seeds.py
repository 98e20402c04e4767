"""Seed corpora for the libFuzzer targets: real PLANES and EXPMANT payloads and rANS streams of the
real MiniLM weights (tests/weights.py) in several dtypes, framed as fuzz_decode.c reads
them (3 bytes of length, then the payload)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from fpfs import _kernels  # noqa: E402
from fpfs.codecs import CODEC_EXPMANT, CODECS, CODEC_PLANES  # noqa: E402
from tests.weights import cast_tensors, load_real  # noqa: E402


def main(out: str) -> None:
    real = load_real()
    for d in ("planes", "rans", "mask", "delta", "rans32", "expmant"):
        os.makedirs(os.path.join(out, f"corpus-{d}"), exist_ok=True)
    count = 0
    for dtype in ("F32", "BF16", "F16", "F8_E4M3"):
        tensors = cast_tensors(real, dtype)
        for name in sorted(tensors)[:12]:
            raw = np.ascontiguousarray(tensors[name]).view(np.uint8).ravel()[:8192]
            if raw.size < 64:
                continue
            n = raw.size.to_bytes(3, "little")
            payload = CODECS[CODEC_PLANES].encode(memoryview(raw.tobytes()), dtype, 0)
            if payload is not None:
                with open(os.path.join(out, "corpus-planes", f"{dtype}-{count}"), "wb") as f:
                    f.write(n + payload)
            payload = CODECS[CODEC_EXPMANT].encode(memoryview(raw.tobytes())) \
                if dtype == "BF16" else None
            if payload is not None:
                with open(os.path.join(out, "corpus-expmant", f"{dtype}-{count}"), "wb") as f:
                    f.write(n + payload)
            for coder, corpus in ((1, "corpus-rans"), (3, "corpus-rans32")):
                stream = _kernels.rans_encode_bytes(raw.tobytes()[: raw.size // 2], coder)
                if stream:
                    with open(os.path.join(out, corpus, f"{dtype}-{count}"), "wb") as f:
                        f.write((raw.size // 2).to_bytes(3, "little") + stream)
            count += 1
    rng = np.random.default_rng(1)
    bf16 = cast_tensors(real, "BF16")["encoder.layer.0.attention.self.query.weight"].ravel()[:3001]
    for i, scale in enumerate((1, 40, 90)):       # k = 2, k = 1, zeros and subnormals
        v = bf16.astype(np.float32) * np.exp2(rng.integers(-scale, scale + 1, bf16.size))
        v[::7 + i] = 0
        raw = v.astype(bf16.dtype).view(np.uint8)
        payload = CODECS[CODEC_EXPMANT].encode(memoryview(raw.tobytes()))
        if payload is not None:
            with open(os.path.join(out, "corpus-expmant", f"window-{i}"), "wb") as f:
                f.write(raw.size.to_bytes(3, "little") + payload)
    for i in range(8):
        nz = rng.random(200) < 0.4
        mask = np.packbits(nz, bitorder="little").tobytes()
        head = bytes([i & 3]) + (200).to_bytes(2, "little") + int(nz.sum()).to_bytes(2, "little")
        with open(os.path.join(out, "corpus-mask", f"m{i}"), "wb") as f:
            f.write(head + mask + rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
        with open(os.path.join(out, "corpus-delta", f"d{i}"), "wb") as f:
            f.write(bytes([i & 1, i & 3]) + rng.integers(0, 256, 512, dtype=np.uint8).tobytes())
    print(f"seeded {count} chunks into {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")

"""A BERT-style encoder written in Keras and exported by tf2onnx: a transformer from another converter.

Run:  python samples/keras_encoder.py [--out artifacts/keras_encoder]

Writes ``keras_encoder.onnx`` (exported by tf2onnx, parity checked at two batch sizes) and
padded random token rows as ``calib.npz`` / ``val.npz``. The encoder (a small BERT built from
Keras' own layers, seeded weights, no download) and its data are
:mod:`onnx_compress.samples.keras_encoder`'s, shared with the tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_compress.samples.keras_encoder import export_encoder, token_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/keras_encoder"), help="output folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = export_encoder(args.out / "keras_encoder.onnx")
    token_dataset(200, seed=1).save(args.out / "calib.npz")
    token_dataset(200, seed=2).save(args.out / "val.npz")
    print(f"wrote {result.path} (max abs error {result.max_abs_error:.2e}), calib.npz and val.npz")


if __name__ == "__main__":
    main()

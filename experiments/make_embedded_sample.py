"""Build the CIFAR-10 sample shipped in diffjax/assets from an offline CIFAR-10 export.

    diffjax make-sample --source DIR        # DIR: cifar10_jpeg.npz, cifar10_lossless_subset.npz

The export is two files (their SHA-256 digests are checked below): ``cifar10_jpeg.npz``, every
CIFAR-10 image JPEG-encoded (quality 75, 4:2:0) with its label, and ``cifar10_lossless_subset.npz``,
the exact original pixels of training images 0..3999 and test images 0..999 (docs/data.md).

Training images 0..N-1 are kept as the JPEG bytes of the offline export (decoded with Pillow at
load time); test images 0..999 are the exact original pixels, stored as one lossless PNG sheet.
Writes ``diffjax/assets/cifar10_sample.npz`` and its data card ``cifar10_sample.json``. Only
developers run this; the tests and the package read only the built sample.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pathlib

import numpy as np
import tqdm
from PIL import Image

import diffjax

ASSETS = pathlib.Path(diffjax.__file__).parent / "assets"
# The digests published with the export.
SOURCE_SHA256 = {
    "cifar10_jpeg.npz": "66faad9be096fabe421fc519a2db600012a188ff22dfb1bce96733454e1f3e9f",
    "cifar10_lossless_subset.npz": (
        "e48015fd8460684d29ab3dbc926453b35d776cd6dfb7a97b78f8e209f63c9802"
    ),
}
MAX_BYTES = 8 * 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        type=pathlib.Path,
        required=True,
        help="folder with cifar10_jpeg.npz and cifar10_lossless_subset.npz",
    )
    parser.add_argument("--train", type=int, default=5000, help="training images to keep")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=ASSETS,
        help="output folder",
    )


def run(args: argparse.Namespace) -> None:
    # Imported here, not above: ``diffjax make-sample --help`` answers before JAX loads.
    from diffjax.checkpoint import write_json_atomic
    from diffjax.data.archive import decode_image
    from diffjax.data.embedded import ASSET, CARD

    for name, digest in SOURCE_SHA256.items():
        actual = sha256((args.source / name).read_bytes())
        if actual != digest:
            raise SystemExit(f"{args.source / name}: sha256 {actual}, expected {digest}")
    jpeg = np.load(args.source / "cifar10_jpeg.npz")
    exact = np.load(args.source / "cifar10_lossless_subset.npz")
    class_names = exact["class_names"]
    if list(jpeg["class_names"]) != list(class_names):
        raise SystemExit("the two source files disagree on the class names")

    lengths = jpeg["train_jpeg_lengths"][: args.train]
    train_jpeg = jpeg["train_jpeg"][: int(lengths.sum())]
    train_labels = jpeg["train_y"][: args.train].astype(np.uint8)
    blob = train_jpeg.tobytes()
    ends = np.cumsum(lengths)
    train_pixels = np.stack(
        [
            decode_image(blob[e - n : e], f"train[{i}]", 32)
            for i, (n, e) in enumerate(
                tqdm.tqdm(list(zip(lengths, ends, strict=True)), desc="decoding JPEGs")
            )
        ]
    )

    test_images, test_labels = exact["x_test"], exact["y_test"].astype(np.uint8)
    if not np.array_equal(test_labels, jpeg["test_y"][: len(test_labels)]):
        raise SystemExit("exact test labels disagree with the JPEG copy's")
    buf = io.BytesIO()
    Image.fromarray(test_images.reshape(-1, 32, 3)).save(buf, "PNG", optimize=True)
    test_png = np.frombuffer(buf.getvalue(), np.uint8)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        if not np.array_equal(np.asarray(im).reshape(test_images.shape), test_images):
            raise SystemExit("PNG round trip is not lossless")

    out = io.BytesIO()
    np.savez(
        out,
        train_jpeg=train_jpeg,
        train_jpeg_lengths=lengths.astype(np.int32),
        train_labels=train_labels,
        test_png=test_png,
        test_labels=test_labels,
        class_names=class_names,
    )
    data = out.getvalue()
    if len(data) > MAX_BYTES:
        raise SystemExit(f"sample is {len(data)} bytes, over the {MAX_BYTES} byte budget")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / f".{ASSET}.tmp"
    tmp.write_bytes(data)
    tmp.replace(args.out / ASSET)
    card = {
        "source": "CIFAR-10 (Krizhevsky 2009), from an offline export: every image JPEG-encoded "
        "(quality 75, 4:2:0), plus the exact pixels of training images 0..3999 and test images "
        "0..999 (docs/data.md)",
        "source_sha256": SOURCE_SHA256,
        "train": {
            "indices": f"0..{args.train - 1} of the official training set",
            "count": int(args.train),
            "pixels": "JPEG-decoded (quality 75, 4:2:0 export): right labels, approximate pixels",
            "label_counts": np.bincount(train_labels, minlength=10).tolist(),
            "decoded_sha256": sha256(train_pixels.tobytes()),
            "decoded_with": f"Pillow {Image.__version__}",
        },
        "test": {
            "indices": f"0..{len(test_labels) - 1} of the official test set",
            "count": int(len(test_labels)),
            "pixels": "exact original pixels (lossless PNG)",
            "label_counts": np.bincount(test_labels, minlength=10).tolist(),
            "decoded_sha256": sha256(np.ascontiguousarray(test_images).tobytes()),
        },
        "class_names": [str(c) for c in class_names],
        "bytes": len(data),
        "sha256": {ASSET: sha256(data)},
    }
    write_json_atomic(args.out / CARD, card)
    (args.out / CARD).chmod(0o644)  # a package file, readable by every user
    print(f"wrote {args.out / ASSET} ({len(data):,} bytes) and {args.out / CARD}")
    print(f"sha256 {card['sha256'][ASSET]}")

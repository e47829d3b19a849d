"""Hostile and careless files: each is refused with the documented error naming the file and
the cause, before any large allocation, or read exactly.

The files are written here, byte by byte: ``torch.save`` archives by a small pickle writer of
the opcodes torch uses (so no torch is needed), safetensors files by their 8-byte length and
JSON header. "Bounded" is measured: the peak of Python and NumPy allocations (``tracemalloc``)
while a hostile file is read stays under :data:`BOUND`. Sizes of gigabytes exist only as
declared numbers or sparse files. The outcomes feed the fault table of docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import struct
import tarfile
import tracemalloc
import warnings
import zipfile

import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from diffjax import torch_weights
from diffjax.checkpoint import CheckpointError, load_model, save_model, write_manifest
from diffjax.config import preset
from diffjax.data import (
    ChecksumError,
    DatasetFormatError,
    UnverifiedDatasetWarning,
    cifar,
    download,
    load_dataset,
)
from diffjax.experiments.attack import FORMAT, load_previous
from diffjax.records import seal
from diffjax.torch_weights import ConversionError, read_safetensors, read_state_dict
from diffjax.vit import ViT
from tests.fault_table import Outcomes, table_fixture
from tests.test_data import cifar_files, sha256_of, write_folder, write_tar_gz

outcome = Outcomes()
fault_table = table_fixture(outcome, "test_hostile_files")

# No hostile file here may make a reader allocate more than this (the files are a few kB).
BOUND = 16 << 20


@contextlib.contextmanager
def bounded():
    """Fail if the block allocates more than :data:`BOUND` bytes at its peak."""
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < BOUND, f"{peak} bytes allocated reading a hostile file"


def refused(kind: str, read, path, *patterns: str):
    """``read(path)`` raises ConversionError naming ``path`` and every pattern, within BOUND."""
    with bounded(), pytest.raises(ConversionError) as e:
        read(path)
    message = str(e.value)
    assert str(path) in message
    for p in patterns:
        assert p in message, message
    outcome(kind, recovered=False)


# ---------------------------------------------------------------------------------------------
# torch.save archives, written without torch


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _int(i: int) -> bytes:
    return b"\x8a\x09" + i.to_bytes(9, "little", signed=True)  # LONG1


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK … TUPLE


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def tensor(key: str, numel: int, size, stride, offset=0, storage="FloatStorage") -> bytes:
    """The opcodes torch writes for a tensor: ``_rebuild_tensor_v2(storage, offset, size,
    stride, False, OrderedDict())`` with the storage as a persistent id."""
    pid = _tuple(_str("storage"), _global("torch", storage), _str(key), _str("cpu"), _int(numel))
    return (
        _global("torch._utils", "_rebuild_tensor_v2")
        + _tuple(
            pid + b"Q",  # BINPERSID
            _int(offset),
            _tuple(*map(_int, size)),
            _tuple(*map(_int, stride)),
            b"\x89",  # False
            _global("collections", "OrderedDict") + b")R",
        )
        + b"R"
    )


def state_pickle(entries: dict[str, bytes]) -> bytes:
    """A pickled dict of ``{name: opcodes of its value}``."""
    items = b"".join(_str(k) + v for k, v in entries.items())
    return b"\x80\x02}(" + items + b"u."


def write_pt(path, pkl: bytes, storages: dict[str, bytes], byteorder=b"little", extra=()):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
        for name, raw in extra:
            z.writestr(name, raw)
    return path


def good_pt(path, byteorder=b"little", extra=()):
    """A state dict {w: 2x3 float32, b: its second row}; the arrays the reader must give."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    order = "<" if byteorder == b"little" else ">"
    pkl = state_pickle({"w": tensor("0", 6, (2, 3), (3, 1)), "b": tensor("0", 6, (3,), (1,), 3)})
    write_pt(path, pkl, {"0": w.astype(f"{order}f4").tobytes()}, byteorder, extra)
    return {"w": w, "b": w[1]}


@pytest.mark.parametrize("byteorder", [b"little", b"big", b"big\n"])
def test_the_pickle_writer_gives_what_the_reader_reads(tmp_path, byteorder):
    want = good_pt(tmp_path / "ok.pt", byteorder)
    got = read_state_dict(tmp_path / "ok.pt")
    assert sorted(got) == ["b", "w"]
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
        assert got[k].dtype == np.float32 and got[k].dtype.isnative


@pytest.mark.parametrize("byteorder", [b"litle", b"", b"LITTLE", b"\xff"])
def test_byteorder_other_than_little_or_big_is_refused(tmp_path, byteorder):
    path = tmp_path / "order.pt"
    good_pt(path, byteorder)
    refused("torch archive: unknown byte order", read_state_dict, path, "byteorder")


def test_a_member_twice_is_an_ambiguous_archive(tmp_path):
    path = tmp_path / "twice.pt"
    with pytest.warns(UserWarning, match="Duplicate name"):
        good_pt(path, extra=[("archive/data/0", np.zeros(6, np.float32).tobytes())])
    refused("torch archive: a member twice", read_state_dict, path, "archive/data/0", "ambiguous")


def _set_method(raw: bytes, method: int) -> bytes:
    """Every member's compression method in the local and central headers set to ``method``."""
    b = bytearray(raw)
    for signature, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        i = b.find(signature)
        while i >= 0:
            b[i + at : i + at + 2] = struct.pack("<H", method)
            i = b.find(signature, i + 4)
    return bytes(b)


HOSTILE_PICKLES = {
    # a tensor rebuilt with the wrong arguments (TypeError inside pickle)
    "rebuild with wrong arguments": state_pickle(
        {"w": _global("torch._utils", "_rebuild_tensor_v2") + _tuple(_int(1)) + b"R"}
    ),
    # getattr(getattr, "x")(): calls the inert placeholder that stands in for any global
    "getattr chain": b"\x80\x02"
    + _global("builtins", "getattr")
    + _tuple(_global("builtins", "getattr"), _str("x"))
    + b"R)R.",
    "OrderedDict of a number": b"\x80\x02" + _global("collections", "OrderedDict") + b"K\x01\x85R.",
    "extension opcode": b"\x80\x02\x82\x07.",  # EXT1 code 7: unregistered
    "negative dimension": state_pickle({"w": tensor("0", 6, (-2, 3), (3, 1))}),
    "negative stride": state_pickle({"w": tensor("0", 6, (2, 3), (-3, 1), 5)}),
    "negative storage size": state_pickle({"w": tensor("0", -6, (2, 3), (3, 1))}),
    "int64-overflowing shape": state_pickle({"w": tensor("0", 6, (2**40, 2**40), (0, 0))}),
    "storage type torch lacks": state_pickle({"w": tensor("0", 6, (6,), (1,), 0, "FooStorage")}),
    # one element viewed with stride 0 as 2**40: 4 TiB if materialised
    "stride-0 view of 2**40 elements": state_pickle({"w": tensor("0", 6, (2**40,), (0,))}),
    # BINBYTES8 declaring 2**40 bytes that the file does not hold
    "BINBYTES8 of 2**40 bytes": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc.",
    "not a dict": b"\x80\x02K\x07.",
    "a string where a tensor belongs": state_pickle({"w": _str("weights")}),
    "truncated pickle": state_pickle({"w": tensor("0", 6, (2, 3), (3, 1))})[:-9],
}


@pytest.mark.parametrize("name", list(HOSTILE_PICKLES))
def test_hostile_pickles_raise_conversion_errors(tmp_path, name):
    path = tmp_path / "hostile.pt"
    write_pt(path, HOSTILE_PICKLES[name], {"0": np.zeros(6, np.float32).tobytes()})
    unbounded = name in ("int64-overflowing shape", "stride-0 view of 2**40 elements",
                         "BINBYTES8 of 2**40 bytes")  # fmt: skip
    kind = "sizes the file does not hold" if unbounded else "malformed pickle"
    refused(f"torch archive: {kind}", read_state_dict, path)


def test_members_are_checked_before_they_are_read(tmp_path, monkeypatch):
    # An unsupported compression method (zipfile raises NotImplementedError on reading).
    good_pt(tmp_path / "ok.pt")
    packed = tmp_path / "packed.pt"
    packed.write_bytes(_set_method((tmp_path / "ok.pt").read_bytes(), 99))
    refused(
        "torch archive: member compressed or over its size", read_state_dict, packed, "method 99"
    )
    # A deflated storage: torch stores members, and only a stored one is bounded by the file.
    deflated = tmp_path / "deflated.pt"
    pkl = state_pickle({"w": tensor("0", 1 << 20, (1 << 20,), (1,))})
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl, zipfile.ZIP_STORED)
        z.writestr("archive/data/0", bytes(4 << 20))
    assert deflated.stat().st_size < 64 << 10
    refused(
        "torch archive: member compressed or over its size",
        read_state_dict,
        deflated,
        "archive/data/0",
    )
    # A storage whose declared size is not its elements' bytes.
    short = tmp_path / "short.pt"
    write_pt(short, state_pickle({"w": tensor("0", 1 << 28, (4,), (1,))}), {"0": bytes(16)})
    refused(
        "torch archive: member compressed or over its size",
        read_state_dict,
        short,
        "expected 1073741824",
    )
    # data.pkl over the limit.
    monkeypatch.setattr(torch_weights, "MAX_PICKLE_BYTES", 64)
    refused(
        "torch archive: member compressed or over its size",
        read_state_dict,
        tmp_path / "ok.pt",
        "64",
    )


# ---------------------------------------------------------------------------------------------
# safetensors


def write_safetensors(path, header: bytes | dict, body: bytes):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


BODY = np.arange(4, dtype="<f4").tobytes()


def _entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_safetensors_read_exactly(tmp_path):
    half = np.array([1.5, -2.25], "<f2").tobytes()
    bf = np.array([3.0, -0.5], ml_dtypes.bfloat16).tobytes()
    header = {
        "__metadata__": {"format": "np"},
        "module.a": _entry("F32", [2, 2], 0, 16),
        "h": _entry("F16", [2], 16, 20),
        "bf": _entry("BF16", [2], 20, 24),
    }
    got = read_safetensors(write_safetensors(tmp_path / "ok.safetensors", header, BODY + half + bf))
    assert sorted(got) == ["a", "bf", "h"]
    np.testing.assert_array_equal(got["a"], np.arange(4, dtype=np.float32).reshape(2, 2))
    np.testing.assert_array_equal(got["h"], np.array([1.5, -2.25], np.float16))
    np.testing.assert_array_equal(got["bf"].astype(np.float32), [3.0, -0.5])


HOSTILE_SAFETENSORS = {
    "overlapping ranges": (
        {"a": _entry("F32", [4], 0, 16), "b": _entry("F32", [2], 8, 16)},
        ["`b`", "offset"],
    ),
    "a gap": ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [1], 12, 16)}, ["`b`"]),
    "trailing bytes": ({"a": _entry("F32", [3], 0, 12)}, ["not fully covered"]),
    "float offsets": ({"a": _entry("F32", [4], 0.0, 16.0)}, ["floating point"]),
    "negative dimension": ({"a": _entry("F32", [-4], 0, 16)}, ["-4"]),
    "int64-overflowing shape": ({"a": _entry("F32", [2**62, 4], 0, 16)}, ["overflow"]),
    "dtype NumPy lacks": ({"a": _entry("F8_E4M3", [16], 0, 16)}, ["float8"]),
    # the later entry would cover the body exactly: the library would keep it
    "a tensor twice": (
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}',
        ["'a'", "more than once"],
    ),
    "header length past the file": (b"{}", ["header length"]),
}


@pytest.mark.parametrize("name", list(HOSTILE_SAFETENSORS))
def test_hostile_safetensors_name_the_tensor(tmp_path, name):
    header, patterns = HOSTILE_SAFETENSORS[name]
    path = write_safetensors(tmp_path / "bad.safetensors", header, BODY)
    if name == "header length past the file":
        raw = bytearray(path.read_bytes())
        raw[:8] = struct.pack("<Q", 1 << 40)
        path.write_bytes(bytes(raw))
    refused("safetensors: malformed header", read_safetensors, path, *patterns)


def test_pickle_opcodes_are_walked_before_unpickling(tmp_path):
    # The check itself, against pickle's own writer: every valid pickle passes it.
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        torch_weights._check_pickle(pickle.dumps({"a": [1, b"x" * 300, 2.5]}, protocol), "p")


# ---------------------------------------------------------------------------------------------
# Results an attack resumes from


def test_every_edited_digit_of_a_sealed_attack_file_is_refused(tmp_path):
    records = [
        {"index": i, "label": i % 10, "adv_pred": (i + 3) % 10, "linf": 0.0313 * i, "valid": True}
        for i in range(8)
    ]
    settings = {"seed": 0, "eps": 0.0313}
    value = {"format": FORMAT, "settings": settings, "batches_done": 2, "records": records}
    path = tmp_path / "attack.json"
    text = json.dumps(seal(value))
    path.write_text(text)
    assert load_previous(path, settings, resume=True)["records"] == records
    rng = np.random.default_rng(0)
    digits = [i for i, c in enumerate(text) if c.isdigit() and i < text.index('"sha256"')]
    for i in rng.choice(digits, 40, replace=False):
        edited = text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1 :]
        path.write_text(edited)
        with pytest.raises(SystemExit, match=f"{path}.*sha256"):
            load_previous(path, settings, resume=True)
        outcome("edited digit in a partial attack.json", recovered=False)


# ---------------------------------------------------------------------------------------------
# Datasets on disk


def cifar_remote(monkeypatch, archive=None):
    """The CIFAR-10 remote, its digest that of ``archive`` (standing for the published one)."""
    remote = cifar._LAYOUTS["cifar10"][0]
    if archive is not None:
        remote = dataclasses.replace(remote, checksum=f"sha256:{sha256_of(archive)}")
        monkeypatch.setitem(cifar._LAYOUTS, "cifar10", (remote, *cifar._LAYOUTS["cifar10"][1:]))
    return remote


@pytest.mark.parametrize(
    "labels, shown",
    [
        ([3.7] * 5, "3.7"),
        ([2**32 + 3] * 5, "4294967299"),
        ([10] * 5, "10"),
        ([-1] * 5, "-1"),
        ([True] * 5, "True"),
    ],  # fmt: skip
)
def test_cifar_labels_must_be_integers_in_range(tmp_path, labels, shown):
    files, _ = cifar_files("cifar10")
    batch = cifar.unpickle(files["test_batch"], "test_batch")
    files["test_batch"] = pickle.dumps({b"data": batch[b"data"], b"labels": labels}, protocol=2)
    folder = write_folder(tmp_path, "cifar-10-batches-py", files)
    with bounded(), pytest.raises(DatasetFormatError, match=f"test_batch.*integers.*{shown}"):
        cifar.read_cifar(folder, "cifar10", "test")
    outcome("CIFAR labels not integers in range", recovered=False)


def _sparse_tar(path, member: str, size: int):
    """An uncompressed tar whose one member declares ``size`` zero bytes (a sparse file)."""
    info = tarfile.TarInfo(member)
    info.size = size
    with open(path, "wb") as f:
        f.write(info.tobuf())
        f.truncate(512 + -(-size // 512) * 512 + 1024)  # zeros: the data and two end blocks
    return path


def test_a_2_gib_dataset_member_is_refused_before_it_is_read(tmp_path):
    big = 2 << 30
    archive = _sparse_tar(tmp_path / "big.tar", "cifar-10-batches-py/batches.meta", big)
    with bounded(), pytest.raises(DatasetFormatError, match=f"batches.meta is {big} bytes"):
        cifar.read_cifar(archive, "cifar10", "test")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "batches.meta", "wb") as f:
        f.truncate(big)
    with bounded(), pytest.raises(DatasetFormatError, match=f"batches.meta is {big} bytes"):
        cifar.read_cifar(folder, "cifar10", "test")
    outcome("2 GiB dataset member", recovered=False)
    outcome("2 GiB dataset member", recovered=False)


def _wrong_cifar(tmp_path):
    """A well-formed CIFAR-10 that is not the published one: 5 test images, every label 7."""
    files, _ = cifar_files("cifar10")
    batch = cifar.unpickle(files["test_batch"], "test_batch")
    files["test_batch"] = pickle.dumps({b"data": batch[b"data"], b"labels": [7] * 5}, protocol=2)
    return files


@pytest.mark.parametrize("download", [True, False])
def test_a_wrong_archive_in_the_cache_is_refused(tmp_path, monkeypatch, download):
    cifar_remote(monkeypatch)  # the published digest
    archive = write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py",
                           _wrong_cifar(tmp_path))  # fmt: skip
    with pytest.raises(ChecksumError, match=f"{archive}.*not the published CIFAR-10"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=download)
    outcome("wrong dataset archive in the cache", recovered=False)


def test_a_cached_archive_is_hashed_once_and_again_when_changed(tmp_path, monkeypatch):
    files, expected = cifar_files("cifar10")
    archive = write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    cifar_remote(monkeypatch, archive)
    hashed = []
    digest = download.file_digest
    monkeypatch.setattr(download, "file_digest", lambda *a: hashed.append(a) or digest(*a))
    for _ in range(2):
        ds = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
        np.testing.assert_array_equal(ds.labels, expected["test"][1])
    assert len(hashed) == 1  # the second run trusted the record of the first
    wrong = write_tar_gz(tmp_path / "w.tar.gz", "cifar-10-batches-py", _wrong_cifar(tmp_path))
    os.replace(wrong, archive)
    with pytest.raises(ChecksumError, match="not the published"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    outcome("wrong dataset archive in the cache", recovered=False)


def test_an_extracted_folder_is_checked_against_its_record(tmp_path, monkeypatch):
    files, expected = cifar_files("cifar10")
    served = write_tar_gz(tmp_path / "served.tar.gz", "cifar-10-batches-py", files)
    remote = dataclasses.replace(cifar_remote(monkeypatch, served), url=served.as_uri())
    monkeypatch.setitem(cifar._LAYOUTS, "cifar10", (remote, *cifar._LAYOUTS["cifar10"][1:]))
    root = tmp_path / "data"
    load_dataset("cifar10", "test", data_dir=root)  # downloads, extracts, records
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset("cifar10", "test", data_dir=root, download=False)
    np.testing.assert_array_equal(ds.labels, expected["test"][1])
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(_wrong_cifar(tmp_path)["test_batch"])
    with pytest.raises(ChecksumError, match=f"{batch} was changed"):
        load_dataset("cifar10", "test", data_dir=root, download=False)
    outcome("edited file in an extracted dataset folder", recovered=False)
    # A folder extracted by hand cannot be checked: it loads with a warning, never silently.
    (root / "cifar-10-batches-py.verified").unlink()
    with pytest.warns(UnverifiedDatasetWarning, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", "test", data_dir=root, download=False)
    outcome("unverified dataset folder (warned)", recovered=False)


# ---------------------------------------------------------------------------------------------
# A saved model's config


@pytest.mark.parametrize("forged_manifest", [False, True])
def test_an_absurd_depth_in_config_json_is_refused_at_once(tmp_path, forged_manifest):
    directory = save_model(tmp_path / "vit", ViT(preset("tiny"), rngs=nnx.Rngs(0)))
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["depth"] = 10**9
    path.write_text(json.dumps(config))
    if forged_manifest:  # digests recomputed: only the size check stands in the way
        write_manifest(directory)
    cause = "declares depth 1000000000" if forged_manifest else "sha256"
    with bounded(), pytest.raises(CheckpointError, match=f"{path}.*{cause}"):
        load_model(directory)
    outcome("absurd depth in a saved model's config.json", recovered=False)

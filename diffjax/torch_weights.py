"""PyTorch weights without torch: ``torch.save`` archives (``.pt``, ``.pth``, ``.bin``) and
``.safetensors`` files read into ``{key: np.ndarray}``, and strict key-by-key loading into a
diffjax model.

    state = read_weights("pytorch_model.bin")     # or .pt / .pth / .safetensors
    rules = {...}                                 # torch key → (shape, [(diffjax path, transform)])
    check_state_dict(state, rules, "timm ViT")    # every missing / extra / wrong-shaped key named
    load_into(model, state, rules)                # every parameter written exactly once

A ``torch.save`` file (torch ≥ 1.6) is a zip archive holding ``<name>/data.pkl`` (the pickled
object, tensors as references to storages) and ``<name>/data/<key>`` (each storage's raw bytes).
:func:`read_state_dict` unpickles ``data.pkl`` with a restricted unpickler that knows only the few
torch globals a tensor needs; every other global (``argparse.Namespace``, paths, numpy scalars of
the training ``args``) becomes an inert placeholder, so nothing from the file is executed. Only the
storages of the model's state dict are read: optimizer moments and the AMP scaler state are
skipped.

A ``.safetensors`` file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw little-endian bytes; :func:`read_safetensors`
reads it with the ``safetensors`` package's NumPy API, which checks the ranges (bfloat16 through
``ml_dtypes``), after refusing a header that names a tensor twice.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import pickletools
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx
from tqdm import tqdm

from diffjax.checkpoint import CheckpointError
from diffjax.vit import WEIGHTS

# Top-level entries of a training checkpoint that can hold the model's state dict.
STATE_DICT_ENTRIES = ("state_dict", "model", "model_state_dict")
DDP_PREFIX = "module."

# The first bytes of a zip archive (a local file header), as torch.save writes them.
ZIP_SIGNATURE = b"PK\x03\x04"
# Limits checked before anything is allocated. The pickle of a state dict takes ~100 bytes per
# tensor (a few MB for the largest models); storages are bounded by the file itself.
MAX_PICKLE_BYTES = 64 << 20
_INT64 = 1 << 63

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class ConversionError(CheckpointError):
    """A weights file that cannot be read or does not match the target architecture."""


# ---------------------------------------------------------------------------------------------
# Reading torch.save zip archives


class _Placeholder:
    """Stands in for any non-tensor global of the pickle; accepts and ignores its arguments."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


class _StorageRef:
    """A storage of the archive, read only when a tensor of the state dict needs it."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _LazyTensor:
    """What ``torch._utils._rebuild_tensor_v2`` would build, without reading the bytes yet."""

    def __init__(self, storage: _StorageRef, offset: int, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _StorageRef):
        raise ConversionError(f"tensor rebuilt from a non-storage object {type(storage).__name__}")
    if len(size) != len(stride):
        raise ConversionError(f"tensor with size {size} but stride {stride}")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type(func, _new_type, args, _state):
    return func(*args)


_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("collections", "OrderedDict"): OrderedDict,
}


class _TorchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name.endswith("Storage"):
            raise ConversionError(f"unsupported tensor storage type torch.{name}")
        return _Placeholder

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ConversionError(f"unexpected persistent id in checkpoint: {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ConversionError(f"unexpected storage type {storage_type!r}")
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def _archive_prefix(zf: zipfile.ZipFile, path) -> str:
    names = zf.namelist()
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConversionError(f"{path}: ambiguous archive: members {twice} appear more than once")
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ConversionError(
            f"{path}: expected one '<name>/data.pkl' in the torch archive, found {pickles}"
        )
    return pickles[0][: -len("data.pkl")]


def _read_member(zf: zipfile.ZipFile, name: str, size: int | None, limit: int, path) -> bytes:
    """The bytes of member ``name``, after checking what its header declares: stored (torch.save
    never compresses, and a stored member cannot inflate), inside the archive, ``size`` bytes if
    given and at most ``limit`` bytes."""
    try:
        info = zf.getinfo(name)
    except KeyError as e:
        raise ConversionError(f"{path}: {name} is missing from the archive") from e
    if info.compress_type != zipfile.ZIP_STORED:
        raise ConversionError(
            f"{path}: {name} is compressed (zip method {info.compress_type}); torch.save "
            "stores every member uncompressed"
        )
    if info.file_size != info.compress_size or info.file_size > os.path.getsize(path):
        raise ConversionError(
            f"{path}: {name} declares {info.file_size} bytes in a "
            f"{os.path.getsize(path)}-byte file (corrupt)"
        )
    if size is not None and info.file_size != size:
        raise ConversionError(
            f"{path}: {name} holds {info.file_size} bytes, expected {size} (truncated or corrupt)"
        )
    if info.file_size > limit:
        raise ConversionError(f"{path}: {name} is {info.file_size} bytes, over the {limit} limit")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConversionError(f"{path}: cannot read {name}: {e}") from e


def _check_pickle(raw: bytes, path) -> None:
    """Walk the opcodes of ``raw`` before unpickling it: a length the data does not hold (a
    BINBYTES8 declaring 2**40 bytes) is refused here, where pickle would allocate it first."""
    try:
        for _ in pickletools.genops(io.BytesIO(raw)):
            pass
    except (ValueError, struct.error) as e:
        raise ConversionError(f"{path}: corrupt data.pkl: {e}") from e


def _materialize(
    zf: zipfile.ZipFile, prefix: str, t: _LazyTensor, byteorder: str, cache: dict, path
) -> np.ndarray:
    s = t.storage
    if s.key not in cache:
        if not 0 <= s.numel < _INT64:
            raise ConversionError(f"{path}: storage {s.key} declares {s.numel} elements")
        nbytes = s.numel * s.dtype.itemsize
        raw = _read_member(zf, f"{prefix}data/{s.key}", nbytes, nbytes, path)
        cache[s.key] = np.frombuffer(raw, s.dtype.newbyteorder(byteorder))
    flat = cache[s.key]
    fields = (t.offset, *t.size, *t.stride)
    if any(not 0 <= v < _INT64 for v in fields) or math.prod(t.size) > flat.size:
        # a view larger than its storage (stride 0 or overlapping) could ask for any size
        raise ConversionError(
            f"{path}: tensor view (offset {t.offset}, size {t.size}, stride {t.stride}) does "
            f"not fit its storage of {flat.size} elements"
        )
    if math.prod(t.size) == 0:
        return np.zeros(t.size, s.dtype)
    last = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride, strict=True))
    if last >= flat.size:
        raise ConversionError(
            f"{path}: tensor view (offset {t.offset}, size {t.size}, stride {t.stride}) lies "
            f"outside its storage of {flat.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset :], shape=t.size, strides=[st * s.dtype.itemsize for st in t.stride]
    )
    return np.array(view, dtype=s.dtype.newbyteorder("="))


def read_state_dict(path: str | os.PathLike, progress: bool = False) -> dict[str, np.ndarray]:
    """The model state dict of a ``torch.save`` checkpoint, as NumPy arrays, without torch.

    Accepts a bare state dict or a training checkpoint whose ``state_dict`` (or ``model``,
    ``model_state_dict``) entry holds it; every other entry (optimizer, scaler, epoch, args) is
    ignored and its tensors are never read. A DDP ``module.`` prefix is stripped from every key.

    Every declared size is checked before anything is allocated: members must be stored
    uncompressed within the file, ``data.pkl`` at most :data:`MAX_PICKLE_BYTES`, each storage
    exactly its elements' bytes, each tensor view within its storage.

    Raises:
      ConversionError: not a torch ≥ 1.6 zip archive, an ambiguous archive (a member twice), a
        byte order other than ``little`` / ``big``, corrupt or truncated data, sizes the file
        does not hold, no state dict, non-tensor entries in it, or keys that collide after
        stripping ``module.``. Every error names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            signature = f.read(4)
        if signature == ZIP_SIGNATURE:
            # A zip's index is at its end: a file cut short starts like one but has none.
            raise ConversionError(
                f"{path} starts like a torch zip archive but has no readable zip index: the "
                f"file is truncated or corrupt ({os.path.getsize(path)} bytes); download or "
                "copy it again"
            )
        raise ConversionError(
            f"{path} is not a torch zip archive (torch >= 1.6 format); legacy tar/pickle "
            "checkpoints are not supported: re-save it with torch.save in torch >= 1.6"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            prefix = _archive_prefix(zf, path)
            names = set(zf.namelist())
            if f"{prefix}constants.pkl" in names:
                raise ConversionError(
                    f"{path} is a TorchScript archive (torch.jit.save, e.g. OpenAI's original "
                    "CLIP .pt files), not a state dict: load it with open_clip "
                    "(pretrained='openai') and save model.state_dict(), or use the "
                    "open_clip_model.safetensors of the model's Hugging Face repository"
                )
            byteorder = "little"
            if f"{prefix}byteorder" in names:
                raw = _read_member(zf, f"{prefix}byteorder", None, 16, path)
                byteorder = raw.decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise ConversionError(
                        f"{path}: byteorder record is {byteorder!r}; torch writes 'little' or 'big'"
                    )
            raw = _read_member(zf, f"{prefix}data.pkl", None, MAX_PICKLE_BYTES, path)
            _check_pickle(raw, path)
            obj = _TorchUnpickler(io.BytesIO(raw)).load()
            state = _find_state_dict(obj, path)
            cache: dict[str, np.ndarray] = {}
            out = {}
            for key, value in tqdm(state.items(), desc="reading", disable=not progress):
                if not isinstance(value, _LazyTensor):
                    raise ConversionError(
                        f"{path}: state-dict entry {key!r} is a {type(value).__name__}, "
                        "not a tensor"
                    )
                out[key] = _materialize(zf, prefix, value, byteorder, cache, path)
    except ConversionError as e:
        if str(e).startswith(path):
            raise
        raise ConversionError(f"{path}: {e}") from e  # raised inside the unpickler
    # what a hostile pickle or archive can raise inside pickle, zipfile and numpy
    except (
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        EOFError,
        OSError,
        TypeError,
        ValueError,
        AttributeError,
        LookupError,
        NotImplementedError,
        MemoryError,
        OverflowError,
        RecursionError,
    ) as e:
        raise ConversionError(f"{path}: corrupt checkpoint: {type(e).__name__}: {e}") from e
    return _strip_prefix(out, path)


def _find_state_dict(obj, path) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: top-level object is a {type(obj).__name__}, not a dict")
    for entry in STATE_DICT_ENTRIES:
        if isinstance(obj.get(entry), dict):
            return obj[entry]
    if obj and all(isinstance(v, _LazyTensor) for v in obj.values()):
        return obj
    raise ConversionError(
        f"{path}: no model state dict found: top-level keys {sorted(map(str, obj))} include "
        f"none of {list(STATE_DICT_ENTRIES)} and are not all tensors"
    )


def _strip_prefix(state: dict[str, np.ndarray], path) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        new = key[len(DDP_PREFIX) :] if key.startswith(DDP_PREFIX) else key
        if new in out:
            raise ConversionError(f"{path}: keys {key!r} and {new!r} collide after stripping")
        out[new] = value
    return out


# ---------------------------------------------------------------------------------------------
# Reading .safetensors files

# The safetensors package refuses headers over 100 MB, offsets that overlap, leave gaps or
# leave bytes uncovered, non-integer offsets and shapes, and sizes that overflow, all before
# reading a tensor. JSON with a key twice it reads as the last one: that is refused here.
_SAFETENSORS_HEADER_LIMIT = 100_000_000


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConversionError(f"tensor {twice[0]!r} appears more than once in the header")
    return dict(pairs)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as NumPy arrays, read by the ``safetensors``
    package (the ``__metadata__`` entry is dropped; a DDP ``module.`` prefix is stripped as for
    :func:`read_state_dict`).

    Raises:
      ConversionError: missing file, a header that is not safetensors JSON or names a tensor
        twice, an unknown dtype, or byte ranges that overlap, leave gaps, leave trailing bytes
        or do not match the shapes. Every error names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"weights file {path} does not exist")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConversionError(f"{path}: {size} bytes is too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _SAFETENSORS_HEADER_LIMIT):
            raise ConversionError(
                f"{path}: header length {n} does not fit the {size}-byte file (not safetensors)"
            )
        header = f.read(n)
    try:
        json.loads(header, object_pairs_hook=_unique_keys)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: safetensors header is not JSON: {e}") from e
    try:
        out = safetensors.numpy.load_file(path)
    # SafetensorError for the checks above; AttributeError for a dtype NumPy lacks (F8_*)
    except (safetensors.SafetensorError, AttributeError, TypeError, ValueError) as e:
        raise ConversionError(f"{path}: not a valid safetensors file: {e}") from e
    return _strip_prefix(out, path)


TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_weights(path: str | os.PathLike, progress: bool = False) -> dict[str, np.ndarray]:
    """``{key: np.ndarray}`` of a weights file: ``.safetensors`` by :func:`read_safetensors`,
    ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` (``torch.save`` archives) by
    :func:`read_state_dict`.

    Raises:
      ConversionError: another suffix, or the reader's errors.
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return read_state_dict(path, progress=progress)
    raise ConversionError(
        f"{path}: unknown weights format {suffix!r}; expected .safetensors or one of "
        f"{list(TORCH_SUFFIXES)} (torch.save)"
    )


# ---------------------------------------------------------------------------------------------
# Torch keys → diffjax parameter paths

Path = tuple[Any, ...]
Transform = Callable[[np.ndarray], np.ndarray]
# torch key → (expected torch shape, [(diffjax path, transform of the torch array)])
Rule = tuple[tuple[int, ...], list[tuple[Path, Transform]]]


def identity(w: np.ndarray) -> np.ndarray:
    return w


def transpose(w: np.ndarray) -> np.ndarray:
    return w.T


def rows(i: int, n: int) -> Transform:
    """The i-th of n equal row blocks of a fused [q; k; v] weight, as a Dense kernel/bias."""

    def take(w: np.ndarray) -> np.ndarray:
        block = np.split(w, n, axis=0)[i]
        return block.T if block.ndim == 2 else block

    return take


def conv_to_dense(w: np.ndarray) -> np.ndarray:
    """Patch convolution (O, I, kh, kw) → the patch Dense kernel [(kh, kw, I), O] of ViT.embed."""
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def linear_rules(
    prefix: str, target: Path, n_in: int, n_out: int, bias: bool = True
) -> dict[str, Rule]:
    """``prefix.weight`` (out, in) → ``target`` kernel (in, out), and ``prefix.bias``."""
    rules = {f"{prefix}.weight": ((n_out, n_in), [(target + ("kernel",), transpose)])}
    if bias:
        rules[f"{prefix}.bias"] = ((n_out,), [(target + ("bias",), identity)])
    return rules


def norm_rules(prefix: str, target: Path, width: int) -> dict[str, Rule]:
    """LayerNorm ``prefix.weight`` / ``prefix.bias`` → ``target`` scale / bias."""
    return {
        f"{prefix}.weight": ((width,), [(target + ("scale",), identity)]),
        f"{prefix}.bias": ((width,), [(target + ("bias",), identity)]),
    }


def batchnorm_rules(prefix: str, target: Path, width: int) -> dict[str, Rule]:
    """BatchNorm ``prefix.{weight, bias, running_mean, running_var}`` → ``target`` scale, bias,
    mean, var (PyTorch's ``num_batches_tracked`` is dropped first: :func:`drop_batch_counts`)."""
    names = (
        ("weight", "scale"),
        ("bias", "bias"),
        ("running_mean", "mean"),
        ("running_var", "var"),
    )
    return {f"{prefix}.{src}": ((width,), [(target + (dst,), identity)]) for src, dst in names}


def drop_batch_counts(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` without PyTorch BatchNorm's integer ``*.num_batches_tracked`` counters: they
    only set the averaging when ``momentum=None``, and the running statistics are what an
    evaluation-mode BatchNorm reads."""
    return {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}


def summarise(keys, limit: int = 12) -> str:
    """At most ``limit`` of ``keys``, sorted and comma-separated, with a count of the rest."""
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype == np.dtype(ml_dtypes.bfloat16)


def check_state_dict(
    state: Mapping[str, np.ndarray], rules: Mapping[str, Rule], what: str, hint: str = ""
) -> None:
    """Raise :class:`ConversionError` listing every missing key, extra key and wrong shape of
    ``state`` against ``rules`` (``what`` names the architecture, ``hint`` is appended), then any
    non-floating-point or non-finite tensor."""
    missing = set(rules) - set(state)
    extra = set(state) - set(rules)
    wrong = [
        f"{k}: {tuple(np.shape(state[k]))} (expected {rules[k][0]})"
        for k in sorted(set(rules) & set(state))
        if tuple(np.shape(state[k])) != rules[k][0]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {summarise(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s): {summarise(extra)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): " + "; ".join(wrong[:12]))
    if problems:
        raise ConversionError(
            f"state dict does not match a {what}:\n  " + "\n  ".join(problems) + hint
        )
    bad = [k for k, w in state.items() if not _is_float(np.asarray(w).dtype)]
    if bad:
        raise ConversionError(f"non-floating-point tensors where weights belong: {summarise(bad)}")
    nonfinite = [k for k, w in state.items() if not np.all(np.isfinite(np.float32(w)))]
    if nonfinite:
        raise ConversionError(f"non-finite values (NaN/inf) in: {summarise(nonfinite)}")


def load_into(model: nnx.Module, state: Mapping[str, np.ndarray], rules: Mapping[str, Rule]):
    """Write ``state`` into ``model``'s parameters (and BatchNorm running statistics) in place as
    ``rules`` say (keys and shapes already checked by :func:`check_state_dict`); they keep their
    float32 dtype.

    Raises:
      ConversionError: a rule targets a parameter the model lacks or with another shape, two
        keys write one parameter, or a parameter is left unwritten.
    """
    targets = {path: v for path, v in nnx.to_flat_state(nnx.state(model, WEIGHTS))}
    written: dict[Path, str] = {}
    for key, (_, assignments) in rules.items():
        w = np.asarray(state[key], np.float32)
        for path, transform in assignments:
            if path not in targets:
                raise ConversionError(f"{key} maps to {path}, which the model does not have")
            value = transform(w)
            if value.shape != targets[path].shape:
                raise ConversionError(
                    f"{key} → {path}: shape {value.shape}, the model wants {targets[path].shape}"
                )
            if path in written:
                raise ConversionError(f"{path} written by both {written[path]} and {key}")
            written[path] = key
            targets[path][...] = jnp.asarray(value, targets[path].dtype)
    unwritten = set(targets) - set(written)
    if unwritten:
        raise ConversionError(
            f"model parameters with no checkpoint tensor: {summarise(map(str, unwritten))}"
        )
    return model

"""Released PyTorch CLIP / DiffCLIP checkpoints → diffjax parameters, without torch.

    state = read_state_dict("checkpoint_best.pt")          # {torch key: np.ndarray}
    model = convert_state_dict(state, clip_preset("diffclip_b16"))
    save_model("models/diffclip_cc3m", model)              # diffjax.checkpoint, orbax

A ``torch.save`` file (torch ≥ 1.6) is a zip archive holding ``<name>/data.pkl`` (the pickled
object, tensors as references to storages) and ``<name>/data/<key>`` (each storage's raw bytes).
:func:`read_state_dict` unpickles ``data.pkl`` with a restricted unpickler that knows only the few
torch globals a tensor needs; every other global (``argparse.Namespace``, paths, numpy scalars of
the training ``args``) becomes an inert placeholder, so nothing from the file is executed. Only the
storages of the model's state dict are read: optimizer moments and the AMP scaler state are
skipped.

Key conventions are those of da-spec §3.2 (DiffCLIP: timm ``DifferentialVisionTransformer`` + the
``DiffCLIP`` text tower) and §3.3 (baseline CLIP: timm ViT with fused ``qkv`` + OpenAI text tower
with ``nn.MultiheadAttention`` ``in_proj``). Conversion is strict: every expected key must be
present with its exact shape, no unexpected key may remain, and every diffjax parameter must be
written exactly once.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from tqdm import tqdm

from diffjax.checkpoint import CheckpointError
from diffjax.clip.config import CLIPConfig
from diffjax.clip.model import CLIP

# Top-level entries of a training checkpoint that can hold the model's state dict.
STATE_DICT_ENTRIES = ("state_dict", "model", "model_state_dict")
DDP_PREFIX = "module."

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
    """A PyTorch checkpoint that cannot be read or does not match the target architecture."""


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
    pickles = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ConversionError(
            f"{path}: expected one '<name>/data.pkl' in the torch archive, found {pickles}"
        )
    return pickles[0][: -len("data.pkl")]


def _materialize(
    zf: zipfile.ZipFile, prefix: str, t: _LazyTensor, byteorder: str, cache: dict, path
) -> np.ndarray:
    s = t.storage
    if s.key not in cache:
        name = f"{prefix}data/{s.key}"
        try:
            raw = zf.read(name)
        except KeyError as e:
            raise ConversionError(f"{path}: storage {name} is missing from the archive") from e
        except (zipfile.BadZipFile, OSError) as e:
            raise ConversionError(f"{path}: cannot read storage {name}: {e}") from e
        if len(raw) != s.numel * s.dtype.itemsize:
            raise ConversionError(
                f"{path}: storage {name} holds {len(raw)} bytes, expected "
                f"{s.numel} × {s.dtype.itemsize} (truncated or corrupt)"
            )
        order = "<" if byteorder == "little" else ">"
        cache[s.key] = np.frombuffer(raw, s.dtype.newbyteorder(order))
    flat = cache[s.key]
    if any(n == 0 for n in t.size):
        return np.zeros(t.size, s.dtype)
    last = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride, strict=True))
    if t.offset < 0 or any(st < 0 for st in t.stride) or last >= flat.size:
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

    Raises:
      ConversionError: not a torch ≥ 1.6 zip archive, corrupt or truncated data, no state dict,
        non-tensor entries in it, or keys that collide after stripping ``module.``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ConversionError(
            f"{path} is not a torch zip archive (torch >= 1.6 format); legacy tar/pickle "
            "checkpoints are not supported: re-save it with torch.save in torch >= 1.6"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            prefix = _archive_prefix(zf, path)
            names = set(zf.namelist())
            byteorder = "little"
            if f"{prefix}byteorder" in names:
                byteorder = zf.read(f"{prefix}byteorder").decode().strip()
            with zf.open(f"{prefix}data.pkl") as f:
                obj = _TorchUnpickler(f).load()
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
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as e:
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
# Torch keys → diffjax parameter paths

Path = tuple[Any, ...]
# torch key → (expected torch shape, [(diffjax path, transform of the torch array)])
_Rule = tuple[tuple[int, ...], list[tuple[Path, Callable[[np.ndarray], np.ndarray]]]]


def _identity(w: np.ndarray) -> np.ndarray:
    return w


def _transpose(w: np.ndarray) -> np.ndarray:
    return w.T


def _rows(i: int, n: int):
    """The i-th of n equal row blocks of a fused [q; k; v] weight, as a Dense kernel/bias."""

    def take(w: np.ndarray) -> np.ndarray:
        block = np.split(w, n, axis=0)[i]
        return block.T if block.ndim == 2 else block

    return take


def _conv_to_dense(w: np.ndarray) -> np.ndarray:
    # Conv (O, I, kh, kw) → (kh, kw, I, O) → patch rows in (kh, kw, I) order, as ViT.embed uses.
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _linear_rules(prefix: str, target: Path, n_in: int, n_out: int) -> dict[str, _Rule]:
    return {
        f"{prefix}.weight": ((n_out, n_in), [(target + ("kernel",), _transpose)]),
        f"{prefix}.bias": ((n_out,), [(target + ("bias",), _identity)]),
    }


def _norm_rules(prefix: str, target: Path, width: int) -> dict[str, _Rule]:
    return {
        f"{prefix}.weight": ((width,), [(target + ("scale",), _identity)]),
        f"{prefix}.bias": ((width,), [(target + ("bias",), _identity)]),
    }


def _attention_rules(
    prefix: str, target: Path, width: int, heads: int, diff: bool, fused: tuple[str, str, str]
) -> dict[str, _Rule]:
    """Attention keys. ``fused`` names the baseline's (qkv weight, qkv bias, out projection)."""
    rules: dict[str, _Rule] = {}
    if diff:
        for name, ours in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "out")):
            rules.update(_linear_rules(f"{prefix}.{name}", target + (ours,), width, width))
        d = width // heads
        rules[f"{prefix}.diff_norm.weight"] = ((2 * d,), [(target + ("subln_scale",), _identity)])
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            rules[f"{prefix}.{name}"] = ((d,), [(target + (name,), _identity)])
        return rules
    qkv_weight, qkv_bias, out = fused
    qkv = ("q", "k", "v")
    rules[f"{prefix}.{qkv_weight}"] = (
        (3 * width, width),
        [(target + (n, "kernel"), _rows(i, 3)) for i, n in enumerate(qkv)],
    )
    rules[f"{prefix}.{qkv_bias}"] = (
        (3 * width,),
        [(target + (n, "bias"), _rows(i, 3)) for i, n in enumerate(qkv)],
    )
    rules.update(_linear_rules(f"{prefix}.{out}", target + ("out",), width, width))
    return rules


def conversion_rules(config: CLIPConfig) -> dict[str, _Rule]:
    """For every torch key of the release format: its shape and where it goes in diffjax."""
    c = config
    diff = c.attention == "diff"
    vw, tw, p = c.vision_width, c.text_width, c.patch_size
    vhidden = int(round(vw * c.vision_mlp_ratio))
    thidden = int(round(tw * c.text_mlp_ratio))
    num_tokens = (c.image_size // p) ** 2 + 1
    v: Path = ("visual",)
    rules: dict[str, _Rule] = {
        "visual.cls_token": ((1, 1, vw), [(v + ("cls_token",), _identity)]),
        "visual.pos_embed": ((1, num_tokens, vw), [(v + ("pos_embed",), _identity)]),
        "visual.patch_embed.proj.weight": (
            (vw, c.channels, p, p),
            [(v + ("patch_embed", "kernel"), _conv_to_dense)],
        ),
        "visual.patch_embed.proj.bias": ((vw,), [(v + ("patch_embed", "bias"), _identity)]),
        "image_projection": ((vw, c.embed_dim), [(v + ("head", "kernel"), _identity)]),
        "token_embedding.weight": (
            (c.vocab_size, tw),
            [(("text", "token_embedding", "embedding"), _identity)],
        ),
        "positional_embedding": (
            (c.context_length, tw),
            [(("text", "positional_embedding"), _identity)],
        ),
        "text_projection": ((tw, c.embed_dim), [(("text", "projection"), _identity)]),
        "logit_scale": ((), [(("logit_scale",), _identity)]),
    }
    rules.update(_norm_rules("visual.norm", v + ("norm",), vw))
    rules.update(_norm_rules("ln_final", ("text", "ln_final"), tw))
    for i in range(c.vision_layers):
        src, dst = f"visual.blocks.{i}", v + ("blocks", i)
        rules.update(_norm_rules(f"{src}.norm1", dst + ("norm1",), vw))
        rules.update(_norm_rules(f"{src}.norm2", dst + ("norm2",), vw))
        rules.update(
            _attention_rules(
                f"{src}.attn",
                dst + ("attn",),
                vw,
                c.vision_heads,
                diff,
                ("qkv.weight", "qkv.bias", "proj"),
            )
        )
        rules.update(_linear_rules(f"{src}.mlp.fc1", dst + ("fc1",), vw, vhidden))
        rules.update(_linear_rules(f"{src}.mlp.fc2", dst + ("fc2",), vhidden, vw))
    for i in range(c.text_layers):
        src, dst = f"transformer.resblocks.{i}", ("text", "blocks", i)
        rules.update(_norm_rules(f"{src}.ln_1", dst + ("ln_1",), tw))
        rules.update(_norm_rules(f"{src}.ln_2", dst + ("ln_2",), tw))
        rules.update(
            _attention_rules(
                f"{src}.attn",
                dst + ("attn",),
                tw,
                c.text_heads,
                diff,
                ("in_proj_weight", "in_proj_bias", "out_proj"),
            )
        )
        rules.update(_linear_rules(f"{src}.mlp.c_fc", dst + ("c_fc",), tw, thidden))
        rules.update(_linear_rules(f"{src}.mlp.c_proj", dst + ("c_proj",), thidden, tw))
    return rules


def _summarise(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype == np.dtype(ml_dtypes.bfloat16)


def check_state_dict(state: Mapping[str, np.ndarray], config: CLIPConfig) -> None:
    """Raise :class:`ConversionError` listing every missing key, extra key and wrong shape."""
    rules = conversion_rules(config)
    missing = set(rules) - set(state)
    extra = set(state) - set(rules)
    wrong = [
        f"{k}: {tuple(np.shape(state[k]))} (expected {rules[k][0]})"
        for k in sorted(set(rules) & set(state))
        if tuple(np.shape(state[k])) != rules[k][0]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_summarise(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s): {_summarise(extra)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): " + "; ".join(wrong[:12]))
    if problems:
        kind = "DiffCLIP" if config.attention == "diff" else "CLIP"
        raise ConversionError(
            f"state dict does not match a {kind} model of this config:\n  "
            + "\n  ".join(problems)
            + f"\n  config: {config}"
        )
    bad = [k for k, w in state.items() if not _is_float(np.asarray(w).dtype)]
    if bad:
        raise ConversionError(f"non-floating-point tensors where weights belong: {_summarise(bad)}")
    nonfinite = [k for k, w in state.items() if not np.all(np.isfinite(np.float32(w)))]
    if nonfinite:
        raise ConversionError(f"non-finite values (NaN/inf) in: {_summarise(nonfinite)}")


def convert_state_dict(state: Mapping[str, np.ndarray], config: CLIPConfig, seed: int = 0) -> CLIP:
    """A :class:`CLIP` of ``config`` holding the weights of a (prefix-free) torch state dict.

    Linear weights (out, in) become Dense kernels (in, out); the patch-embedding convolution
    becomes the patch Dense in (kh, kw, C) order; fused baseline ``qkv`` / ``in_proj`` rows
    [q; k; v] are split; ``image_projection`` and ``text_projection`` are used as x @ W and are
    not transposed; parameters stay float32. λ_init, eps values, masks and activations are not
    in the checkpoint: they come from ``config``.

    Raises:
      ConversionError: keys or shapes do not match (see :func:`check_state_dict`).
    """
    check_state_dict(state, config)
    model = CLIP(config, rngs=nnx.Rngs(seed))
    targets = {path: v for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    written: dict[Path, str] = {}
    for key, (_, assignments) in conversion_rules(config).items():
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
            f"model parameters with no checkpoint tensor: {_summarise(map(str, unwritten))}"
        )
    return model


def convert_checkpoint(path: str | os.PathLike, config: CLIPConfig, progress: bool = False) -> CLIP:
    """:func:`read_state_dict` then :func:`convert_state_dict`."""
    return convert_state_dict(read_state_dict(path, progress=progress), config)


def detect_attention(state: Mapping[str, np.ndarray]) -> str:
    """``"diff"`` if the state dict has Differential Attention tensors, else ``"softmax"``."""
    return "diff" if any(k.endswith(".attn.diff_norm.weight") for k in state) else "softmax"

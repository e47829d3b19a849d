"""Model and training configuration: frozen, validated dataclasses and the named presets.

Standard library only: the command line builds and checks every config before it imports JAX
(``diffjax SUBCOMMAND --help`` and a bad config field answer at once).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, Literal

from diffjax.attack_config import check_eps

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP's image statistics (also open_clip's default).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The Inception / Hugging Face ViT statistics: [0, 1] pixels mapped to [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "silu", "relu")
POOLS = ("cls", "mean", "map")
NORMS = ("layernorm", "batchnorm")
# Attention implementations (diffjax.attention): the same function, computed three ways.
IMPLS = ("reference", "fused", "fused_xla")


def lambda_init_schedule(layer: int) -> float:
    """λ_init of the official Diff Transformer schedule, 0.8 − 0.6·exp(−0.3·l), l 0-based."""
    if layer < 0:
        raise ValueError(f"layer index must be >= 0, got {layer}")
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


def check_number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a finite real number (not a bool)
    in [low, high], with either end open if asked."""
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low < value if low_open else low <= value)
        and (value < high if high_open else value <= high)
    )
    if not ok and low == 0 and low_open and high == math.inf:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    if not ok:
        ends = []
        if low > -math.inf:
            ends.append(f"{'>' if low_open else '>='} {low:g}")
        if high < math.inf:
            ends.append(f"{'<' if high_open else '<='} {high:g}")
        raise ValueError(f"{name} must be a finite number {' and '.join(ends)}, got {value!r}")


def check_int(name: str, value: Any, minimum: int) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an integer (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_lambda_init(value) -> None:
    """λ_init is ``"schedule"`` (the depth schedule) or a finite number in [0, 1)."""
    if isinstance(value, str):
        if value != "schedule":
            raise ValueError(f"lambda_init must be 'schedule' or a float, got {value!r}")
    else:
        check_number("lambda_init", value, 0, 1, high_open=True)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A ViT / DiffViT classifier.

    Attributes:
      image_size: input height = width, pixels.
      patch_size: square patch side, pixels; must divide ``image_size``.
      channels: input channels.
      num_classes: classifier outputs; 0: no head, the model outputs the pooled features
        ([B, width], timm's ``num_classes=0``, a Hugging Face ``Dinov2Model``'s pooler output).
      width: token width D.
      depth: number of blocks.
      num_heads: heads of the softmax model, H_base. DA layers use H_base / 2 DIFF heads with
        sub-head dim D / H_base (parameter-matched), so H_base must be even when any layer is DA.
      mlp_ratio: MLP hidden width / D.
      attention: ``"softmax"`` (ViT) or ``"diff"`` (DiffViT).
      diff_layers: 0-based indices of the layers that use DA when ``attention == "diff"``;
        ``None`` means all layers.
      lambda_init: ``"schedule"`` for 0.8 − 0.6·exp(−0.3·l), or a constant float for every layer,
        finite and in [0, 1) (λ_init = 1 would cancel the two maps entirely at initialisation).
      qkv_bias: biases on the q/k/v projections (and on the output projection unless
        ``proj_bias`` says otherwise).
      proj_bias: a bias on the attention's output projection; ``None``: as ``qkv_bias``.
      layer_norm_eps: LayerNorm epsilon (timm ViT: 1e-6; DiffCLIP: 1e-5).
      dropout: dropout rate after attention and MLP (0 = off; always off in eval mode).
      mean, std: per-channel normalisation applied inside the model to [0, 1] pixels.
      dtype: compute dtype of matmuls: ``"float32"``, ``"bfloat16"`` (accelerators; parameters,
        softmax, λ, norms and the residual stream stay float32) or ``"float64"`` (exact analyses;
        needs ``jax_enable_x64``).
      attention_impl: ``"reference"`` (einsums and a materialised softmax: the exact path of the
        analyses and the float64 checks), ``"fused"`` (cuDNN's ``jax.nn.dot_product_attention``
        on a GPU in bf16/fp16, the reference formulation elsewhere; for training and attacks)
        or ``"fused_xla"`` (the fused formulation through XLA on any backend: tests and
        benchmarks); :mod:`diffjax.attention`. Anything that asks for the maps
        (``capture=True``, ``return_maps=True``) runs the reference path either way.
      scan_layers: run the blocks as one ``nnx.scan`` over stacked parameters (compile time
        independent of depth; for training and attacks). Needs identical layers: every layer
        softmax, or every layer DA with one constant ``lambda_init``. Per-layer analysis needs
        the loop model: :func:`diffjax.vit.unscan` (``load_model`` returns it by default).
      remat: recompute each block's activations in the backward pass instead of storing them
        (``nnx.remat``): less memory, about one more forward pass of compute.
      activation: MLP activation: ``"gelu"`` (exact, x·Φ(x)), ``"gelu_tanh"`` (the tanh
        approximation), ``"quick_gelu"`` (x·sigmoid(1.702x), OpenAI CLIP), ``"silu"``
        (x·sigmoid(x); with ``mlp_gate`` the SwiGLU MLP) or ``"relu"`` (max(x, 0), the
        certified-training literature's).
      ln_pre: a LayerNorm on the embedded tokens before the first block (CLIP's ``ln_pre``,
        timm's ``norm_pre``); h_0 is its output.
      patch_bias: a bias on the patch embedding (OpenAI CLIP's ``conv1`` has none).
      pool: what the head reads: ``"cls"`` (LN(h_L)[CLS]), ``"mean"`` (LN of the mean of the
        patch tokens, timm's ``global_pool="avg"`` with ``fc_norm``) or ``"map"`` (timm's
        multi-head attention pooling ``global_pool="map"``: one learnt latent query attends
        over the patch tokens of LN(h_L), then a residual MLP; SigLIP).
      distillation: DeiT's distillation token after CLS (tokens [CLS, DIST, patches]) and a second
        head on it; the logits are the mean of the two heads (timm's inference output).
      class_token: a CLS token before the patches (timm's ``class_token=False``: none).
      num_registers: register tokens after CLS (DINOv2 ``*_reg4_*``: 4), learnt, never read
        by the head (Darcet et al. 2023).
      pos_embed_prefix: the position embeddings have rows for the prefix tokens (CLS, DIST,
        registers) too; ``False``: only the patches get positions and the prefix is prepended
        after (timm's ``no_embed_class=True``, DINOv2 with registers).
      layer_scale: LayerScale: each branch's output multiplied by a learnt per-channel γ before
        the residual sum, h + γ₁·Attn(LN(h)) (timm ``init_values``, DINOv2, DeiT-III).
      qk_norm: a LayerNorm (eps ``layer_norm_eps``) over the head dim of every query and key
        head before the logits (timm ``qk_norm=True``).
      mlp_gate: a gated MLP (GLU): fc1 gives [gate | value], each ``width·mlp_ratio`` wide, and
        fc2 reads act(gate)·value; with ``activation="silu"`` the SwiGLU of DINOv2-g (timm
        ``SwiGLUPacked``, Hugging Face ``use_swiglu_ffn``).
      norm: the token normalisation of the blocks, ``ln_pre`` and the final norm:
        ``"layernorm"`` (per token) or ``"batchnorm"`` (per feature over the batch and the
        tokens, ``nnx.BatchNorm``: batch statistics in training, running statistics, i.e. a
        fixed affine map, in evaluation; the verification-friendly ViT of certified training).
        BatchNorm's epsilon is ``layer_norm_eps``.
      rope_base: θ of the 2-D rotary position embeddings of the patch tokens' queries and keys
        (timm EVA-02's ``RotaryEmbeddingCat``, its ``rope_temperature``, 10,000); ``None``:
        none. The head dim d splits into d/2 interleaved pairs; pair j < d/4 turns by the
        patch row r times θ^(−j/(d/4)), pair d/4 + j by the column c times the same
        frequency; the prefix tokens (CLS, registers) are not turned. Softmax attention
        only; d must be a multiple of 4.
      rope_ref_grid: EVA's ``ref_feat_shape``: the patch coordinates (r, c) are scaled by
        ``rope_ref_grid / grid`` (grid = ``image_size / patch_size``), the pretraining grid's
        positions; ``None``: unscaled. Needs ``rope_base``.
      mlp_norm: a LayerNorm (eps ``layer_norm_eps``) on the MLP's hidden activations before fc2
        (timm EVA-02's ``scale_mlp``, the inner norm of its ``SwiGLU``).

    Fields added after runs were recorded (:data:`OPTIONAL_VIT_FIELDS`) are serialised
    (:meth:`to_dict`) only when they differ from their defaults, so the config files and run
    hashes of models that do not use them are unchanged.
    """

    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    num_classes: int = 10
    width: int = 192
    depth: int = 6
    num_heads: int = 6
    mlp_ratio: float = 2.0
    attention: Literal["softmax", "diff"] = "softmax"
    diff_layers: tuple[int, ...] | None = None
    lambda_init: str | float = 0.8
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    dtype: str = "float32"
    attention_impl: Literal["reference", "fused", "fused_xla"] = "reference"
    scan_layers: bool = False
    remat: bool = False
    activation: Literal["gelu", "gelu_tanh", "quick_gelu", "relu"] = "gelu"
    ln_pre: bool = False
    patch_bias: bool = True
    pool: Literal["cls", "mean"] = "cls"
    distillation: bool = False
    class_token: bool = True
    num_registers: int = 0
    pos_embed_prefix: bool = True
    layer_scale: bool = False
    qk_norm: bool = False
    proj_bias: bool | None = None
    mlp_gate: bool = False
    norm: Literal["layernorm", "batchnorm"] = "layernorm"
    rope_base: float | None = None
    rope_ref_grid: int | None = None
    mlp_norm: bool = False

    def __post_init__(self):
        for name in ("image_size", "patch_size", "channels", "width", "depth"):
            check_int(name, getattr(self, name), 1)
        check_int("num_classes", self.num_classes, 0)
        check_int("num_registers", self.num_registers, 0)
        check_int("num_heads", self.num_heads, 1)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size {self.patch_size} does not divide image_size {self.image_size}"
            )
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.attention not in ("softmax", "diff"):
            raise ValueError(f"attention must be 'softmax' or 'diff', got {self.attention!r}")
        if self.attention == "diff" and self.num_heads % 2:
            raise ValueError(
                f"DiffViT needs an even num_heads (DA heads = num_heads / 2), got {self.num_heads}"
            )
        if self.diff_layers is not None:
            if self.attention != "diff":
                raise ValueError("diff_layers is only meaningful with attention='diff'")
            if not isinstance(self.diff_layers, tuple):
                raise ValueError(f"diff_layers must be a tuple, got {self.diff_layers!r}")
            bad = [
                i
                for i in self.diff_layers
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.depth
            ]
            if bad:
                raise ValueError(f"diff_layers {bad} outside 0..{self.depth - 1}")
        check_lambda_init(self.lambda_init)
        check_number("mlp_ratio", self.mlp_ratio, 0, low_open=True)
        check_bool("qkv_bias", self.qkv_bias)
        check_number("layer_norm_eps", self.layer_norm_eps, 0, low_open=True)
        check_number("dropout", self.dropout, 0, 1, high_open=True)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one entry per channel")
        for i, (m, sd) in enumerate(zip(self.mean, self.std, strict=True)):
            check_number(f"mean[{i}]", m)
            check_number(f"std[{i}]", sd, 0, low_open=True)
        if self.dtype not in ("float32", "bfloat16", "float64"):
            raise ValueError(
                f"dtype must be 'float32', 'bfloat16' or 'float64', got {self.dtype!r}"
            )
        if self.attention_impl not in IMPLS:
            raise ValueError(f"attention_impl must be one of {IMPLS}, got {self.attention_impl!r}")
        if self.attention_impl != "reference" and self.dtype == "float64":
            raise ValueError(
                f"attention_impl={self.attention_impl!r} computes its softmax in float32; "
                "float64 (exact) models need attention_impl='reference'"
            )
        for name in (
            "scan_layers",
            "remat",
            "ln_pre",
            "patch_bias",
            "distillation",
            "class_token",
            "pos_embed_prefix",
            "layer_scale",
            "qk_norm",
            "mlp_gate",
            "mlp_norm",
        ):
            check_bool(name, getattr(self, name))  # fmt: skip
        if self.proj_bias is not None:
            check_bool("proj_bias", self.proj_bias)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.distillation and (self.pool != "cls" or self.num_registers or not self.num_classes):
            raise ValueError(
                "distillation=True reads the CLS and DIST tokens into two heads (DeiT): it needs "
                "pool='cls', no register tokens and num_classes >= 1"
            )
        if self.pool == "cls" and not self.class_token:
            raise ValueError("pool='cls' reads the class token: class_token=False needs "
                             "pool='mean' or 'map'")  # fmt: skip
        if not self.pos_embed_prefix and not self.num_prefix_tokens:
            raise ValueError("pos_embed_prefix=False says the prefix tokens have no positions, "
                             "but there are none (no CLS, DIST or register tokens)")  # fmt: skip
        if self.attention == "diff" and (self.qk_norm or self.proj_bias is not None):
            raise ValueError("qk_norm and proj_bias are softmax-attention switches (imported "
                             "ViTs); Differential Attention has neither")  # fmt: skip
        self._check_rope()
        if self.mlp_norm and self.norm != "layernorm":
            raise ValueError("mlp_norm is the LayerNorm inside timm EVA-02's MLP: it needs "
                             "norm='layernorm'")  # fmt: skip
        if self.scan_layers and self.attention == "diff":
            if self.diff_layers is not None and len(set(self.diff_layers)) < self.depth:
                raise ValueError(
                    "scan_layers=True needs identical layers; diff_layers "
                    f"{self.diff_layers} mixes softmax and DA layers"
                )
            if self.lambda_init == "schedule":
                raise ValueError(
                    "scan_layers=True needs identical layers; lambda_init='schedule' gives each "
                    "layer its own λ_init (use a constant lambda_init, or scan_layers=False)"
                )

    def _check_rope(self) -> None:
        if self.rope_base is None:
            if self.rope_ref_grid is not None:
                raise ValueError("rope_ref_grid scales the 2-D rotary positions: needs rope_base")
            return
        check_number("rope_base", self.rope_base, 1, low_open=True)
        if self.rope_ref_grid is not None:
            check_int("rope_ref_grid", self.rope_ref_grid, 1)
        if self.attention != "softmax":
            raise ValueError("rope_base (2-D rotary positions, EVA-02) is a softmax-attention "
                             "switch; Differential Attention has none")  # fmt: skip
        if (self.width // self.num_heads) % 4:
            raise ValueError(f"rope_base needs a head dim divisible by 4 (two axes of "
                             f"interleaved pairs), got {self.width // self.num_heads}")  # fmt: skip

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: CLS, DIST with ``distillation``, the registers."""
        return int(self.class_token) + int(self.distillation) + self.num_registers

    @property
    def num_positions(self) -> int:
        """Rows of the position embeddings: every token, or only the patches without
        ``pos_embed_prefix``."""
        return self.num_tokens if self.pos_embed_prefix else self.num_patches

    @property
    def out_bias(self) -> bool:
        """Whether the attention's output projection has a bias."""
        return self.qkv_bias if self.proj_bias is None else self.proj_bias

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width (of each half, gate and value, with ``mlp_gate``)."""
        return int(round(self.width * self.mlp_ratio))

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict; the fields of :data:`OPTIONAL_VIT_FIELDS` only where
        they differ from their defaults, so the configs and run hashes written before those
        fields existed stay valid."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items()
                if k not in OPTIONAL_VIT_FIELDS or v != OPTIONAL_VIT_FIELDS[k]}  # fmt: skip

    @property
    def num_tokens(self) -> int:
        """Patches plus the prefix tokens."""
        return self.num_patches + self.num_prefix_tokens

    @property
    def accum_dtype(self) -> str:
        """Dtype of residual stream, norms and softmaxes: float64 in float64 mode, else float32."""
        return "float64" if self.dtype == "float64" else "float32"

    def is_diff_layer(self, layer: int) -> bool:
        if self.attention != "diff":
            return False
        return self.diff_layers is None or layer in self.diff_layers

    def layer_lambda_init(self, layer: int) -> float:
        """λ_init of 0-based ``layer``."""
        if self.lambda_init == "schedule":
            return lambda_init_schedule(layer)
        return float(self.lambda_init)

    def replace(self, **changes) -> ViTConfig:
        return dataclasses.replace(self, **changes)


# ViTConfig fields added after run hashes were first published (imported-model switches), with
# their defaults: ViTConfig.to_dict leaves them out at these values.
OPTIONAL_VIT_FIELDS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(ViTConfig)
    if f.name in ("class_token", "num_registers", "pos_embed_prefix", "layer_scale", "qk_norm",
                  "proj_bias", "mlp_gate", "norm", "rope_base", "rope_ref_grid", "mlp_norm")
}  # fmt: skip


# Model sizes, big_vision style: name → (width D, default depth, softmax heads H_base, MLP ratio).
# A variant "SIZE/PATCH" is a size at a patch side, on 32 px images unless changed. "S" is the
# paper's CIFAR ViT; "Nano" the 2-core-CPU model; "Pico" the smallest (the mini presets); "B" the
# ViT-B shape of the CLIP image towers.
SIZES: dict[str, tuple[int, int, int, float]] = {
    "Pico": (16, 2, 2, 2.0),
    "Nano": (64, 4, 4, 2.0),
    "S": (192, 6, 6, 2.0),
    "B": (768, 12, 12, 4.0),
}


# Fields that say where the work runs, not what it computes: left out of a run's identity.
NOT_IDENTITY = ("resident_data",)
# TrainConfig fields added after the first release: serialised only when they differ from their
# defaults, so the configs (and zoo hashes) of runs that do not use them are unchanged.
OPTIONAL_FIELDS = (
    "noise_sigma", "lipschitz_penalty", "lipschitz_iters", "lipschitz_examples",
    "robust_training", "robust_eps", "robust_warmup_epochs", "robust_ramp_epochs",
    "robust_kappa_start", "robust_kappa_end", "pgd_steps", "pgd_step_size",
)  # fmt: skip
# TrainConfig.robust_training: natural, adversarial (Madry et al. 2018) or certified training
# (Gowal et al. 2018's IBP, Zhang et al. 2020's CROWN-IBP).
ROBUST_TRAINING = ("none", "pgd", "ibp", "crown-ibp")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (together with the data).

    Attributes:
      model: the ViT / DiffViT to train; ``model.dtype="bfloat16"`` computes matmuls in bf16.
      dataset: a :func:`diffjax.data.load_dataset` name.
      epochs: passes over the training set.
      batch_size: global batch size (all devices, all hosts); a multiple of the device count.
      learning_rate: peak learning rate, reached after the warmup.
      end_learning_rate: learning rate at the last step (cosine decay from the peak).
      warmup_epochs: linear warmup from 0, in epochs (fractions allowed).
      weight_decay: AdamW decoupled weight decay, applied to weight matrices only (not to
        biases, norms, embeddings of position/CLS, or the DA λ vectors).
      adam_b1, adam_b2: Adam moment decay rates.
      label_smoothing: mass spread uniformly over all classes in the training targets.
      grad_clip: clip the global gradient norm to this value; ``None`` disables.
      crop_padding: zero padding (pixels) of the random crop; 0 disables cropping.
      flip: random horizontal flips.
      seed: parameter initialisation, data order, augmentation and dropout.
      train_examples: train on the first n training examples only (``None``: all).
      test_examples: evaluate on the first n test examples only (``None``: all).
      eval_batch_size: evaluation batch size; a multiple of the device count.
      eval_every_epochs: evaluate (and save a checkpoint with the test metrics) every n epochs;
        the last step is always evaluated.
      checkpoint_every_steps: also save a checkpoint every n steps (0: only at evaluations).
      keep_checkpoints: keep this many latest checkpoints, plus the best by test accuracy.
      log_every_steps: record the training metrics every n steps.
      resident_data: keep the training set on the device(s) and gather batches inside the
        step (``True``), feed every batch from the host (``False``), or ``None``: resident when
        it fits :data:`diffjax.train.RESIDENT_DATA_BYTES` per device
        (:func:`diffjax.train.uses_resident_data`). Both give the same numbers, so it is not
        part of the run's identity (:meth:`to_dict`).
      noise_sigma: Gaussian-noise training (Cohen et al. 2019): N(0, σ²) added to the
        unit-range images (after augmentation, before the pixel normalisation), drawn from the
        step's key and *not* clipped to [0, 1] — the base classifier that
        :func:`diffjax.analysis.smoothing.certify` smooths sees exactly such inputs. 0 disables.
      lipschitz_penalty: weight β of the Lipschitz penalty: the objective is the
        cross-entropy plus β × the mean, over attention layers and the first
        ``lipschitz_examples`` images of the batch, of σmax(∂Attn_l/∂u) at u = LN1(h_l)
        (:func:`diffjax.train.attention_sigmas`). 0 disables. Needs ``model.scan_layers=False`` and
        ``model.attention_impl="reference"``.
      lipschitz_iters: power-iteration steps per penalised Jacobian (start vector re-drawn
        from the step's key every step; the vector used has ``lipschitz_iters − 1``
        refinements).
      lipschitz_examples: images of the batch whose layers are penalised (≤ batch_size).
      robust_training: ``"none"``; ``"pgd"`` (Madry et al. 2018: the robust logits are the
        model's at the PGD example of :func:`diffjax.attacks.pgd`, random start, cross-entropy
        loss); ``"ibp"`` (Gowal et al. 2018) or ``"crown-ibp"`` (Zhang et al. 2020): the robust
        logits are −(lower bounds of z_c − z_j) over the ℓ∞ ball ∩ [0, 1]^d (0 at the label),
        from :func:`diffjax.verify.training_margins` on the model in evaluation mode (BatchNorm's
        running statistics), differentiated through. The loss is
        κ·CE(natural logits) + (1 − κ)·CE(robust logits) (both with ``label_smoothing``).
        The bounds need a model the verifier models (ReLU, BatchNorm and mean pooling keep them
        tight: LayerNorm's 1/σ is unbounded near σ = 0) and the per-layer layout.
      robust_eps: the ℓ∞ radius trained for, on the [0, 1] pixel scale (≤ 1: 2/255, not 2).
      robust_warmup_epochs: epochs at ε = 0 first (natural training, the step of
        ``robust_training="none"`` exactly).
      robust_ramp_epochs: then ε grows linearly from 0 to ``robust_eps`` over these epochs
        (κ from ``robust_kappa_start`` to ``robust_kappa_end`` and CROWN-IBP's β from 1 to 0
        alongside, as in Zhang et al. 2020), and stays there to the end. The step's ε, κ and β
        are functions of the step number (:func:`diffjax.train.robust_schedule`).
      robust_kappa_start, robust_kappa_end: the natural loss's weight κ in [0, 1] before and
        after the ramp (Gowal et al.: 1 → 0.5; Zhang et al.: 1 → 0 (CIFAR-10)).
      pgd_steps: PGD steps per training example (``robust_training="pgd"``).
      pgd_step_size: PGD's step α; ``None``: 2.5·ε/steps at the step's ε (Madry et al.).

    Fields added after the first release (``noise_sigma``, the ``lipschitz_*``, ``robust_*``
    and ``pgd_*`` ones, :data:`OPTIONAL_FIELDS`) are left out of :meth:`to_dict` while at
    their defaults, so a config that does not use them serialises, and hashes
    (``experiments/zoo.py``), exactly as before they existed, and old ``config.json`` files
    load.
    """

    model: ViTConfig = ViTConfig()
    dataset: str = "cifar10"
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    end_learning_rate: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0
    crop_padding: int = 4
    flip: bool = True
    seed: int = 0
    train_examples: int | None = None
    test_examples: int | None = None
    eval_batch_size: int = 500
    eval_every_epochs: int = 1
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    log_every_steps: int = 50
    resident_data: bool | None = None
    noise_sigma: float = 0.0
    lipschitz_penalty: float = 0.0
    lipschitz_iters: int = 3
    lipschitz_examples: int = 4
    robust_training: str = "none"
    robust_eps: float = 0.0
    robust_warmup_epochs: float = 0.0
    robust_ramp_epochs: float = 0.0
    robust_kappa_start: float = 1.0
    robust_kappa_end: float = 0.0
    pgd_steps: int = 10
    pgd_step_size: float | None = None

    def __post_init__(self):
        if not isinstance(self.model, ViTConfig):
            raise TypeError(f"model must be a ViTConfig, got {type(self.model).__name__}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset must be a dataset name, got {self.dataset!r}")
        for name in (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "eval_every_epochs",
            "keep_checkpoints",
            "log_every_steps",
            "lipschitz_iters",
            "lipschitz_examples",
        ):
            check_int(name, getattr(self, name), 1)
        for name in ("train_examples", "test_examples"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        check_int("checkpoint_every_steps", self.checkpoint_every_steps, 0)
        check_int("crop_padding", self.crop_padding, 0)
        check_int("seed", self.seed, 0)
        check_bool("flip", self.flip)
        if self.resident_data is not None:
            check_bool("resident_data", self.resident_data)
        check_number("learning_rate", self.learning_rate, 0, low_open=True)
        check_number("end_learning_rate", self.end_learning_rate, 0, self.learning_rate)
        check_number("warmup_epochs", self.warmup_epochs, 0, self.epochs)
        check_number("weight_decay", self.weight_decay, 0)
        check_number("adam_b1", self.adam_b1, 0, 1, high_open=True)
        check_number("adam_b2", self.adam_b2, 0, 1, high_open=True)
        check_number("label_smoothing", self.label_smoothing, 0, 1, high_open=True)
        if self.grad_clip is not None:
            check_number("grad_clip", self.grad_clip, 0, low_open=True)
        check_number("noise_sigma", self.noise_sigma, 0)
        check_number("lipschitz_penalty", self.lipschitz_penalty, 0)
        if self.lipschitz_penalty > 0:
            if self.lipschitz_examples > self.batch_size:
                raise ValueError(
                    f"lipschitz_examples ({self.lipschitz_examples}) exceeds batch_size "
                    f"({self.batch_size})"
                )
            if self.model.scan_layers:
                raise ValueError(
                    "lipschitz_penalty needs the per-layer model (model.scan_layers=False): the "
                    "penalty differentiates each attention layer on its own input"
                )
            if self.model.attention_impl != "reference":
                # cuDNN's fused kernel has a custom VJP only: the power iteration's JVPs fail.
                raise ValueError(
                    "lipschitz_penalty needs model.attention_impl='reference': the power "
                    "iteration differentiates attention forward-mode, which the fused kernel "
                    f"does not support (got {self.model.attention_impl!r})"
                )
            if self.model.norm != "layernorm":
                # Each penalised layer is run again on a few images: in training mode that
                # would update BatchNorm's running statistics from those images a second time.
                raise ValueError(
                    "lipschitz_penalty needs model.norm='layernorm' (got "
                    f"{self.model.norm!r}): BatchNorm's batch statistics couple the penalised "
                    "images and its running statistics would be updated twice per step"
                )
        self._check_robust()

    def _check_robust(self) -> None:
        if self.robust_training not in ROBUST_TRAINING:
            raise ValueError(
                f"robust_training must be one of {ROBUST_TRAINING}, got {self.robust_training!r}"
            )
        check_number("robust_eps", self.robust_eps, 0)
        try:
            check_eps(self.robust_eps, "linf")
        except ValueError as e:  # its message names ε, not the field
            raise ValueError(f"robust_eps: {e}") from None
        check_number("robust_warmup_epochs", self.robust_warmup_epochs, 0, self.epochs)
        check_number("robust_ramp_epochs", self.robust_ramp_epochs, 0)
        if self.robust_warmup_epochs + self.robust_ramp_epochs > self.epochs:
            raise ValueError(
                f"robust_warmup_epochs + robust_ramp_epochs ({self.robust_warmup_epochs} + "
                f"{self.robust_ramp_epochs}) exceed epochs ({self.epochs}): the ramp would not "
                "reach robust_eps"
            )
        check_number("robust_kappa_start", self.robust_kappa_start, 0, 1)
        check_number("robust_kappa_end", self.robust_kappa_end, 0, 1)
        check_int("pgd_steps", self.pgd_steps, 1)
        if self.pgd_step_size is not None:
            check_number("pgd_step_size", self.pgd_step_size, 0, low_open=True)
        if self.robust_training == "none":
            if self.robust_eps > 0:
                raise ValueError(
                    f"robust_eps={self.robust_eps} with robust_training='none' would be ignored: "
                    "choose 'pgd', 'ibp' or 'crown-ibp', or leave robust_eps at 0"
                )
            return
        if self.noise_sigma > 0:
            raise ValueError(
                f"robust_training={self.robust_training!r} trains for the ε-ball ∩ [0, 1]^d "
                "around each image; noise_sigma > 0 moves the images out of [0, 1]: use one"
            )
        if self.robust_training in ("ibp", "crown-ibp") and (
            self.model.scan_layers or self.model.remat
        ):
            raise ValueError(
                f"robust_training={self.robust_training!r} bounds the per-layer model without "
                "remat (the verifier traces it): set model.scan_layers=False and "
                "model.remat=False"
            )

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready dict of the run's identity; ``"model"`` holds the ViT config.

        The fields of :data:`NOT_IDENTITY` (``resident_data``) are left out: where the training
        set is kept changes no number (the resident and the host-fed step see the same batches
        and run the same arithmetic; ``tests/test_train.py`` checks the parameters bit for bit),
        so a run may resume with either placement. :data:`OPTIONAL_FIELDS` are left out while at
        their defaults. Either way the ``config.json`` of run directories and the experiments'
        config hashes (run names) written before these fields existed stay valid.
        """
        d = json.loads(json.dumps(dataclasses.asdict(self) | {"model": self.model.to_dict()}))
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {
            k: v
            for k, v in d.items()
            if k not in NOT_IDENTITY and (k not in OPTIONAL_FIELDS or v != defaults[k])
        }

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict` (the :data:`NOT_IDENTITY` fields at their defaults)."""
        # The checkpoint module imports JAX: only reading a run's config.json needs it.
        from diffjax.checkpoint import config_from_dict

        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown training config fields {sorted(unknown)}")
        return cls(**{**d, "model": config_from_dict(d["model"])})


def variant(name: str, **changes) -> ViTConfig:
    """The model ``"SIZE/PATCH"`` (e.g. ``"S/4"``, ``"Nano/4"``), with field overrides.

    Raises:
      ValueError: naming the malformed variant or the unknown size.
    """
    size, sep, patch = name.partition("/")
    if not sep or not patch.isdigit():
        raise ValueError(f"model variant must look like 'SIZE/PATCH' (e.g. 'S/4'), got {name!r}")
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r} in {name!r}; choose from {sorted(SIZES)}")
    width, depth, heads, mlp_ratio = SIZES[size]
    base = dict(width=width, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                patch_size=int(patch))  # fmt: skip
    return ViTConfig(**{**base, **changes})


PRESETS: dict[str, ViTConfig] = {
    # Milliseconds per forward pass: used by the tests.
    "tiny": ViTConfig(image_size=8, patch_size=4, width=16, depth=2, num_heads=4, mlp_ratio=2.0),
    # The CIFAR default of this project: the paper's model (docs/decisions.md).
    "cifar": variant("S/4"),
    # The ViT-B/16 shape (CLIP towers).
    "vit_b16": variant(
        "B/16", image_size=224, num_classes=1000, mean=IMAGENET_MEAN, std=IMAGENET_STD
    ),
}


def preset(name: str, **changes) -> ViTConfig:
    """A named preset (``tiny``, ``cifar``, ``vit_b16``) with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes)

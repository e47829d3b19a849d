"""Language-model configuration: the model, the retrieval task and the training run.

Frozen, validated dataclasses on the standard library and NumPy only, so that the command line
checks a language experiment's config before it imports JAX. The model is
:class:`diffjax.lm.LM`, the task :func:`diffjax.data.text.retrieval_batch`, the training
:func:`diffjax.lm_train.train_lm`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import numpy as np

from diffjax.config import (
    IMPLS,
    check_bool,
    check_int,
    check_lambda_init,
    check_number,
    lambda_init_schedule,
)

VOCAB_SIZE = 256
CORPORA = ("python-docs",)
KEY_BYTES = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
VALUE_BYTES = np.frombuffer(b"0123456789", np.uint8)


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """A causal language model.

    Attributes:
      attention: ``"diff"`` (Differential Transformer) or ``"softmax"`` (baseline).
      vocab_size: token ids 0..V−1 (the byte tokenizer: 256).
      width: model width D.
      depth: number of blocks.
      num_heads: heads of the softmax baseline, H_base (even); the DA model has H_base / 2 DIFF
        heads of sub-head dim d = D / H_base and value width 2d (parameter-matched).
      ffn_hidden: SwiGLU inner width; ``None`` for round(8/3·D) (the paper's choice).
      max_len: longest sequence the model accepts (RoPE has no table; this bounds inputs).
      rotary_base: RoPE base θ (10,000, the RoFormer/LLaMA default; the paper does not state its
        pre-extension value).
      lambda_init: ``"schedule"`` (0.8 − 0.6·exp(−0.3·l)) or a constant in [0, 1).
      rms_eps: epsilon of the pre-norm and final RMSNorms (the per-head DA norm uses 1e-5).
      dtype: ``"float32"`` or ``"float64"`` (exact analyses; needs ``jax_enable_x64``).
      attention_impl: ``"reference"``, ``"fused"`` or ``"fused_xla"`` (:mod:`diffjax.attention`).
      rotary_half: the half-split rotary pairing (x[i], x[i + d/2]) of GPT-NeoX and Hugging
        Face LLaMA (``rotate_half``) instead of the interleaved (x[2i], x[2i+1]) (softmax only).
      num_kv_heads: grouped-query attention (softmax only): k and v have this many heads, each
        read by ``num_heads / num_kv_heads`` consecutive query heads; ``None``: ``num_heads``.
      tie_embeddings: the output head is the token embedding, logits = RMSNorm(h_L) Eᵀ.
    """

    attention: Literal["softmax", "diff"] = "diff"
    vocab_size: int = 256
    width: int = 128
    depth: int = 4
    num_heads: int = 8
    ffn_hidden: int | None = None
    max_len: int = 256
    rotary_base: float = 10000.0
    lambda_init: str | float = "schedule"
    rms_eps: float = 1e-5
    dtype: str = "float32"
    attention_impl: Literal["reference", "fused", "fused_xla"] = "reference"
    rotary_half: bool = False
    num_kv_heads: int | None = None
    tie_embeddings: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "width", "depth", "num_heads", "max_len"):
            check_int(name, getattr(self, name), 1)
        if self.attention not in ("softmax", "diff"):
            raise ValueError(f"attention must be 'softmax' or 'diff', got {self.attention!r}")
        if self.num_heads % 2 or self.width % self.num_heads:
            raise ValueError(
                f"num_heads must be even and divide width: got {self.num_heads} heads, "
                f"width {self.width}"
            )
        if (self.width // self.num_heads) % 2:
            raise ValueError(
                f"rotary embeddings need an even head dim, width / num_heads = "
                f"{self.width // self.num_heads}"
            )
        if self.ffn_hidden is not None:
            check_int("ffn_hidden", self.ffn_hidden, 1)
        check_number("rotary_base", self.rotary_base, 1, low_open=True)
        check_lambda_init(self.lambda_init)
        check_number("rms_eps", self.rms_eps, 0, low_open=True)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.attention_impl not in IMPLS:
            raise ValueError(f"attention_impl must be one of {IMPLS}, got {self.attention_impl!r}")
        if self.attention_impl != "reference" and self.dtype == "float64":
            raise ValueError("float64 (exact) models need attention_impl='reference'")
        check_bool("rotary_half", self.rotary_half)
        check_bool("tie_embeddings", self.tie_embeddings)
        if self.num_kv_heads is not None:
            check_int("num_kv_heads", self.num_kv_heads, 1)
            if self.num_heads % self.num_kv_heads:
                raise ValueError(f"num_kv_heads {self.num_kv_heads} does not divide num_heads "
                                 f"{self.num_heads}")  # fmt: skip
        if self.attention != "softmax" and (self.num_kv_heads is not None or self.rotary_half):
            raise ValueError("num_kv_heads and rotary_half (imported LLaMA-style checkpoints) "
                             "are for softmax models")  # fmt: skip

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict; the imported-model fields (:data:`OPTIONAL_LM_FIELDS`)
        only where they differ from their defaults, so earlier configs and hashes stay valid."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        return {k: v for k, v in d.items()
                if k not in OPTIONAL_LM_FIELDS or v != OPTIONAL_LM_FIELDS[k]}  # fmt: skip

    @property
    def hidden(self) -> int:
        """The SwiGLU inner width."""
        return self.ffn_hidden if self.ffn_hidden is not None else round(8 * self.width / 3)

    @property
    def accum_dtype(self) -> str:
        return self.dtype

    def is_diff_layer(self, layer: int) -> bool:
        return self.attention == "diff"

    def layer_lambda_init(self, layer: int) -> float:
        """λ_init of 0-based ``layer``."""
        if self.lambda_init == "schedule":
            return lambda_init_schedule(layer)
        return float(self.lambda_init)

    def replace(self, **changes) -> LMConfig:
        return dataclasses.replace(self, **changes)


# LMConfig fields added for imported checkpoints, with their defaults (left out of to_dict there).
OPTIONAL_LM_FIELDS = {"rotary_half": False, "num_kv_heads": None, "tie_embeddings": False}


@dataclasses.dataclass(frozen=True)
class RetrievalTask:
    """Key–value retrieval from a long context.

    Attributes:
      pairs: key–value pairs in the context (distinct keys; 1 to 26).
      filler: corpus bytes before each pair (the haystack between needles).

    A sequence is ``pairs`` times [filler bytes, k, ":", v, ";"], then "|", k*, ":", v*; its
    length is :attr:`length`. The model must predict v* at :attr:`answer_position` − 1.
    """

    pairs: int = 4
    filler: int = 8

    def __post_init__(self):
        check_int("pairs", self.pairs, 1)
        if self.pairs > KEY_BYTES.size:
            raise ValueError(f"pairs must be <= {KEY_BYTES.size} (distinct letter keys)")
        check_int("filler", self.filler, 0)

    @property
    def length(self) -> int:
        return self.pairs * (self.filler + 4) + 4

    @property
    def answer_position(self) -> int:
        """Index of the answer byte v* (the last byte)."""
        return self.length - 1


@dataclasses.dataclass(frozen=True)
class LMTrainConfig:
    """Everything that determines a language-model training run.

    Attributes:
      model: the LM.
      corpus: a :data:`diffjax.data.CORPORA` name.
      val_fraction: held-out tail of the corpus (validation and retrieval filler).
      seq_len: corpus windows are ``seq_len + 1`` bytes (inputs and shifted targets).
      retrieval: the retrieval task; its sequences must fit ``model.max_len``.
      retrieval_fraction: share of each batch's rows that are retrieval sequences (0: none).
      answer_weight: weight of the answer position in the retrieval rows' loss (1: plain
        next-token loss; larger values make the skill learnable in a short CPU budget).
      steps, batch_size: optimizer steps and rows per step.
      learning_rate, end_learning_rate, warmup_steps: the schedule.
      weight_decay, adam_b1, adam_b2, grad_clip: AdamW and clipping (``None``: no clipping).
      seed: initialisation and every batch.
      eval_every_steps: evaluate (and save a checkpoint) every n steps and at the end.
      eval_windows: held-out corpus windows per evaluation (``seq_len + 1`` bytes each).
      eval_retrieval: retrieval sequences per evaluation.
      checkpoint_every_steps: also save every n steps (0: only at evaluations).
      keep_checkpoints: latest checkpoints kept, plus the best.
      log_every_steps: record the training metrics every n steps.
    """

    model: LMConfig = LMConfig()
    corpus: str = "python-docs"
    val_fraction: float = 0.1
    seq_len: int = 64
    retrieval: RetrievalTask = RetrievalTask()
    retrieval_fraction: float = 0.5
    answer_weight: float = 1.0
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 2e-3
    end_learning_rate: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    adam_b1: float = 0.9
    adam_b2: float = 0.98
    grad_clip: float | None = 1.0
    seed: int = 0
    eval_every_steps: int = 500
    eval_windows: int = 256
    eval_retrieval: int = 256
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    log_every_steps: int = 50

    def __post_init__(self):
        if not isinstance(self.model, LMConfig):
            raise TypeError(f"model must be an LMConfig, got {type(self.model).__name__}")
        if not isinstance(self.retrieval, RetrievalTask):
            raise TypeError(f"retrieval must be a RetrievalTask, got {self.retrieval!r}")
        if self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; choose from {CORPORA}")
        for name in ("seq_len", "steps", "batch_size", "eval_every_steps", "eval_windows",
                     "eval_retrieval", "keep_checkpoints", "log_every_steps"):  # fmt: skip
            check_int(name, getattr(self, name), 1)
        check_int("checkpoint_every_steps", self.checkpoint_every_steps, 0)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_int("seed", self.seed, 0)
        check_number("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        check_number("retrieval_fraction", self.retrieval_fraction, 0, 1)
        check_number("answer_weight", self.answer_weight, 0, low_open=True)
        check_number("learning_rate", self.learning_rate, 0, low_open=True)
        check_number("end_learning_rate", self.end_learning_rate, 0, self.learning_rate)
        check_number("weight_decay", self.weight_decay, 0)
        check_number("adam_b1", self.adam_b1, 0, 1, high_open=True)
        check_number("adam_b2", self.adam_b2, 0, 1, high_open=True)
        if self.grad_clip is not None:
            check_number("grad_clip", self.grad_clip, 0, low_open=True)
        longest = max(self.seq_len, self.retrieval.length)
        if longest > self.model.max_len:
            raise ValueError(
                f"sequences of {longest} tokens (seq_len {self.seq_len}, retrieval "
                f"{self.retrieval.length}) exceed model.max_len {self.model.max_len}"
            )
        if self.model.vocab_size < VOCAB_SIZE:
            raise ValueError(f"the byte tokenizer needs vocab_size >= {VOCAB_SIZE}")

    @property
    def retrieval_rows(self) -> int:
        return int(round(self.batch_size * self.retrieval_fraction))

    def replace(self, **changes) -> LMTrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self) | {"model": self.model.to_dict()}
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> LMTrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown LM training config fields {sorted(unknown)}")
        return cls(**{**d, "model": LMConfig(**d["model"]),
                      "retrieval": RetrievalTask(**d["retrieval"])})  # fmt: skip

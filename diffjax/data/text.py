"""Text for the language models: an offline corpus, a byte-level tokenizer, a retrieval task.

    corpus = load_corpus("python-docs")          # uint8 [n] bytes of real English prose
    train, val = split_corpus(corpus, 0.1)
    tokens = encode("The magic number")           # int32 ids 0..255, decode(tokens) inverts

Corpus ``"python-docs"``: the help topics of the Python documentation that CPython ships as
``pydoc_data.topics`` (the text behind ``help("assert")``; ~0.46 MB of English prose with code
examples; PSF License, see docs/language.md). Every Python installation has it, so no
download and no extra dependency; the text depends on the Python version, so its sha256 is
recorded with results (:func:`corpus_digest`).

Tokenizer: UTF-8 bytes, vocabulary 256, no special tokens (the paper's cl100k_base needs a
network download and a 100k-row embedding; bytes keep substitution attacks exact, since every
id sequence decodes and re-encodes to itself).

Retrieval task (:func:`retrieval_batch`): key–value pairs ``"k:v;"`` (k a distinct lowercase
letter, v a digit) scattered in corpus filler, then the query ``"|k:"``; the answer is v. A
small offline version of the Differential Transformer paper's multi-needle retrieval, to measure
attention's selectivity (the answer is one byte at one position).
"""

from __future__ import annotations

import hashlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.lm_config import (  # noqa: F401 (re-exported: the task's public names)
    CORPORA,
    KEY_BYTES,
    VALUE_BYTES,
    VOCAB_SIZE,
    RetrievalTask,
)

SEPARATOR, ASSIGN, QUERY = ord(";"), ord(":"), ord("|")


def encode(text: str) -> np.ndarray:
    """UTF-8 bytes of ``text`` as int32 token ids [n]."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(tokens) -> str:
    """Inverse of :func:`encode`; invalid UTF-8 (a byte-level edit can make some) is shown as
    U+FFFD."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
        raise ValueError(
            f"byte tokens must lie in [0, {VOCAB_SIZE}), got {tokens.min()}..{tokens.max()}"
        )
    return bytes(tokens.astype(np.uint8).tolist()).decode("utf-8", errors="replace")


def load_corpus(name: str = "python-docs") -> np.ndarray:
    """The corpus ``name`` as bytes, uint8 [n] (topics in sorted order, blank-line separated)."""
    if name != "python-docs":
        raise ValueError(f"unknown corpus {name!r}; choose from {CORPORA}")
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return np.frombuffer(text.encode("utf-8"), np.uint8).copy()


def corpus_digest(corpus: np.ndarray) -> dict:
    """Provenance of a loaded corpus: bytes, sha256 and the Python that shipped it."""
    return {
        "bytes": int(corpus.size),
        "sha256": hashlib.sha256(corpus.tobytes()).hexdigest(),
        "python": sys.version.split()[0],
    }


def split_corpus(corpus: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the last ``val_fraction`` of the bytes is held out."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    cut = int(round(corpus.size * (1 - val_fraction)))
    return corpus[:cut], corpus[cut:]


def windows(key: jax.Array, corpus: jax.Array, batch: int, length: int) -> jax.Array:
    """``batch`` random windows of ``length`` bytes of ``corpus`` [n]: int32 [batch, length]."""
    if corpus.shape[0] < length:
        raise ValueError(f"corpus of {corpus.shape[0]} bytes is shorter than a window ({length})")
    starts = jax.random.randint(key, (batch,), 0, corpus.shape[0] - length + 1)
    idx = starts[:, None] + jnp.arange(length)
    return corpus[idx].astype(jnp.int32)


def retrieval_batch(
    key: jax.Array, corpus: jax.Array, task: RetrievalTask, batch: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``batch`` retrieval sequences drawn on the device.

    Returns:
      (tokens int32 [batch, length], answers int32 [batch] (= tokens[:, -1]), needle index int32
      [batch]: which pair holds the answer, 0 = earliest in the context).
    """
    k_keys, k_vals, k_query, k_fill = jax.random.split(key, 4)
    keys = jax.vmap(lambda k: jax.random.permutation(k, KEY_BYTES.size)[: task.pairs])(
        jax.random.split(k_keys, batch)
    )
    keys = jnp.asarray(KEY_BYTES)[keys].astype(jnp.int32)
    vals = jnp.asarray(VALUE_BYTES)[
        jax.random.randint(k_vals, (batch, task.pairs), 0, VALUE_BYTES.size)
    ].astype(jnp.int32)
    fill = windows(k_fill, corpus, batch * task.pairs, task.filler).reshape(
        batch, task.pairs, task.filler
    )
    sep = lambda c: jnp.full((batch, task.pairs, 1), c, jnp.int32)  # noqa: E731
    records = jnp.concatenate(
        [fill, keys[..., None], sep(ASSIGN), vals[..., None], sep(SEPARATOR)], axis=-1
    ).reshape(batch, -1)
    which = jax.random.randint(k_query, (batch,), 0, task.pairs)
    rows = jnp.arange(batch)
    query = jnp.stack(
        [
            jnp.full((batch,), QUERY),
            keys[rows, which],
            jnp.full((batch,), ASSIGN),
            vals[rows, which],
        ],
        axis=1,
    ).astype(jnp.int32)
    return jnp.concatenate([records, query], axis=1), vals[rows, which], which.astype(jnp.int32)

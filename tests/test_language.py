"""The text data, LM training conventions (exact resume, refused config changes) and the
`language` command's configs."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.checkpoint import CheckpointError
from diffjax.data import text
from diffjax.lm import LMConfig
from diffjax.lm_train import LMTrainConfig, load_lm, train_lm
from tests.commandline import diffjax_error


def test_bytes_corpus_and_retrieval_task():
    assert text.decode(text.encode("λ = 0.8")) == "λ = 0.8"
    corpus = text.load_corpus()
    assert corpus.size > 100_000 and b"assert" in corpus.tobytes()
    assert text.corpus_digest(corpus)["sha256"] == text.corpus_digest(text.load_corpus())["sha256"]
    task = text.RetrievalTask(pairs=5, filler=3)
    tokens, answers, which = text.retrieval_batch(jax.random.key(0), jnp.asarray(corpus), task, 16)
    assert tokens.shape == (16, task.length)
    for seq, ans, w in zip(np.asarray(tokens), np.asarray(answers), np.asarray(which), strict=True):
        s = bytes(seq.astype(np.uint8).tolist())
        records = [s[i * 7 + 3 : i * 7 + 7] for i in range(5)]  # filler 3, then b"k:v;"
        keys = [r[0] for r in records]
        assert len(set(keys)) == 5 and all(r[1:2] == b":" and r[3:4] == b";" for r in records)
        query = s[-4:]
        assert query[:1] == b"|" and query[2:3] == b":" and query[1] == keys[w]
        assert ans == query[3] == records[w][2] and chr(ans).isdigit()
    with pytest.raises(ValueError, match="pairs"):
        text.RetrievalTask(pairs=27)
    with pytest.raises(ValueError, match="unknown corpus"):
        text.load_corpus("wikipedia")


def _tiny(**kw):
    return LMTrainConfig(model=LMConfig(width=16, depth=1, num_heads=2, max_len=32), seq_len=16,
                         retrieval=text.RetrievalTask(pairs=2, filler=3), steps=4, batch_size=4,
                         warmup_steps=1, eval_every_steps=2, eval_windows=8, eval_retrieval=8,
                         log_every_steps=2, **kw)  # fmt: skip


def test_training_resumes_exactly_and_refuses_another_config(tmp_path):
    config = _tiny()
    _, full = train_lm(config, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")  # killed after step 2's checkpoint
    _, resumed = train_lm(config, tmp_path / "b")
    assert resumed["resumed_from_step"] == 2 and resumed["final"] == full["final"]
    a, _ = load_lm(tmp_path / "a", step=4)
    b, _ = load_lm(tmp_path / "b", step=4)
    for x, y in zip(
        jax.tree.leaves(a.embedding[...]), jax.tree.leaves(b.embedding[...]), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(CheckpointError, match="different config"):
        train_lm(_tiny(answer_weight=2.0), tmp_path / "a")
    with pytest.raises(ValueError, match="max_len"):
        _tiny().replace(seq_len=64)


def test_language_presets_convert_to_validated_training_configs():
    from diffjax.experiments import configs
    from diffjax.experiments.configs import recipes

    for preset in ("mini", "cpu", "paper", "gpu"):
        config = recipes.lm_train_config(configs.load(f"language:{preset}").lm_train)
        assert isinstance(config, LMTrainConfig) and config.model.attention == "diff"


def test_language_command_rejects_bad_configs(capsys):
    assert "language takes one of" in diffjax_error(capsys, "run", "language",
                                                    "--config=language:tiny")  # fmt: skip
    err = diffjax_error(capsys, "run", "language", "--config=language:mini",
                        "--config.lm_train.retrieval.pairs=30",
                        "--workdir", "/tmp/unused")  # fmt: skip
    assert "pairs must be <= 26" in err

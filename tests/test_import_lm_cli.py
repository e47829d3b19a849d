"""``diffjax import-lm`` as a user runs it, on tiny random ``LlamaForCausalLM`` checkpoints written
by ``save_pretrained`` (grouped-query attention, tied and untied embeddings, one file and
shards) with a ``tokenizers`` tokenizer.json: next-token logits against transformers in float32
and float64, ``diffjax analyse`` on the imported model against torch autograd of transformers'
attention maps, and the refusals (one line each).

The float64 reference evaluates transformers' float32 islands (RoPE angles, RMSNorm, the eager
softmax) in float64, as in tests/test_lm_import.py.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffjax.attacks import text as ta  # noqa: E402
from diffjax.checkpoint import load_lm_model  # noqa: E402
from tests.commandline import diffjax, diffjax_error  # noqa: E402
from tests.test_lm_import import _float64_islands, _reference, assert_logits_match  # noqa: E402

WORDS = "the a cat dog sat ran on under mat rug and then slept ate fish quietly".split()
LINES = ["the cat sat on the mat and then slept quietly",
         "a dog ran under the rug and ate the fish then slept"]  # fmt: skip
N = 7  # text_tokens


def _tokenizer(vocab_words=WORDS):
    """A word-level tokenizer ([UNK] 0, then the words), as ``tokenizers`` saves it."""
    vocab = {"[UNK]": 0} | {w: i + 1 for i, w in enumerate(vocab_words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return tok


def _checkpoint(path, tie: bool, shards: bool = False, attention: str = "sdpa"):
    """A random LLaMA saved by save_pretrained in ``path`` with a tokenizer.json; the model."""
    ref = _reference(tie, attention)
    ref.save_pretrained(path, **({"max_shard_size": "12KB"} if shards else {}))
    _tokenizer().save(str(path / "tokenizer.json"))
    return ref


@pytest.mark.parametrize("tie, shards", [(False, True), (True, False)])
def test_import_lm_logits_match_transformers(tie, shards, tmp_path, monkeypatch):
    ref = _checkpoint(tmp_path / "hf", tie, shards)
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file() == shards
    record = diffjax("import-lm", str(tmp_path / "hf"), str(tmp_path / "out"))
    assert record["config"]["num_kv_heads"] == 2 and record["tokenizer_vocab"] == len(WORDS) + 1
    weights = sorted(p.name for p in (tmp_path / "hf").glob("model*.safetensors*"))
    assert len(weights) > (2 if shards else 0)  # the index and several shards
    assert sorted(record["source_sha256"]) == sorted(["config.json", "tokenizer.json", *weights])
    model = load_lm_model(tmp_path / "out")
    assert (model.head is None) == tie
    tokens = np.random.default_rng(0).integers(0, 50, (2, 9))
    with torch.no_grad():
        want32 = ref(torch.from_numpy(tokens)).logits.numpy()
        want64 = _float64_islands(ref, monkeypatch)(torch.from_numpy(tokens)).logits.numpy()
    got32 = assert_logits_match(model, tokens, want32, want64)
    # The text attacks take the loaded model: HotFlip's returned tokens re-scored by torch.
    labels = jnp.argmax(got32[:, -1], -1)
    result = ta.hotflip(ta.text_model(model), tokens.astype(np.int32), np.ones((2, 9), bool),
                        np.full(2, 8), labels, jax.random.key(0),
                        ta.HotFlipConfig(budget=2, candidates=4))  # fmt: skip
    with torch.no_grad():
        adv = ref(torch.from_numpy(np.asarray(result.tokens, np.int64))).logits[:, -1].numpy()
    np.testing.assert_array_equal(np.asarray(result.success), adv.argmax(-1) != labels)


def test_analyse_of_imported_lm_matches_torch_autograd(tmp_path, monkeypatch):
    """``diffjax analyse`` on the imported model: cos θ of every (head pair, query row) of each
    layer, from the example files, against torch autograd (w.r.t. the input embeddings) of the
    eager attention maps of transformers on the same tokens."""
    ref = _checkpoint(tmp_path / "hf", tie=False, attention="eager")
    diffjax("import-lm", str(tmp_path / "hf"), str(tmp_path / "out"))
    text = tmp_path / "prompts.txt"
    text.write_text("\n".join(LINES) + "\n\n")
    summary = diffjax("analyse", "--config.checkpoint=" + str(tmp_path / "out"),
                      f"--config.text={text}", f"--config.text_tokens={N}",
                      "--config.num_examples=2", "--config.wrt=embeddings",
                      "--config.skip=lipschitz,empirical,depth", "--workdir",
                      str(tmp_path / "an"))  # fmt: skip
    assert summary["num_examples"] == 2 and len(summary["layers"]) == 2
    ref = _float64_islands(ref, monkeypatch)
    tok = _tokenizer()
    for i, line in enumerate(LINES):
        ids = tok.encode(line).ids
        rec = json.loads((tmp_path / "an" / "examples" / f"{i:06d}.json").read_text())
        assert rec["label"] == ids[N]
        with torch.no_grad():
            emb = ref.model.embed_tokens(torch.tensor(ids[:N]))
            next_token = ref(torch.tensor([ids[:N]])).logits[0, -1].argmax().item()
        assert rec["prediction"] == next_token
        for layer in range(2):
            jac = torch.autograd.functional.jacobian(
                lambda x, layer=layer: ref(inputs_embeds=x[None],
                                           output_attentions=True).attentions[layer][0],
                emb,
            ).numpy().reshape(4, N, -1)  # fmt: skip
            even, odd = jac[0::2], jac[1::2]
            with np.errstate(invalid="ignore"):  # row 0 attends to itself only: 0 / 0
                want = np.sum(even * odd, -1) / np.sqrt(np.sum(even**2, -1) * np.sum(odd**2, -1))
            got = np.array(rec["layers"][layer]["cos"], dtype=np.float64)  # None → NaN
            assert got.shape == (2, N) and np.all(np.isnan(got[:, 0]))
            np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=0, atol=1e-12)


def test_import_lm_refusals(tmp_path, capsys):
    hf, out = tmp_path / "hf", str(tmp_path / "out")
    _checkpoint(hf, tie=False, shards=True)
    shard = sorted(hf.glob("model-*.safetensors"))[0]
    shard.rename(tmp_path / "moved")
    assert f"weights file {shard} does not exist" in diffjax_error(capsys, "import-lm", str(hf),
                                                                   out)  # fmt: skip
    (tmp_path / "moved").rename(shard)
    (hf / "model.safetensors.index.json").unlink()
    assert "has neither model.safetensors nor" in diffjax_error(capsys, "import-lm", str(hf), out)
    _checkpoint(hf, tie=False)
    _tokenizer(WORDS + [f"w{i}" for i in range(40)]).save(str(hf / "tokenizer.json"))
    assert "57 tokens, more than the model's vocab_size 50" in diffjax_error(
        capsys, "import-lm", str(hf), out)  # fmt: skip
    (hf / "tokenizer.json").unlink()
    assert "has no tokenizer.json" in diffjax_error(capsys, "import-lm", str(hf), out)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(config | {"attention_bias": True}))
    assert "attention_bias True" in diffjax_error(capsys, "import-lm", str(hf), out)


def test_analyse_refuses_what_it_does_not_run_on_an_lm(tmp_path, capsys):
    _checkpoint(tmp_path / "hf", tie=True)
    diffjax("import-lm", str(tmp_path / "hf"), str(tmp_path / "out"))
    text = tmp_path / "prompts.txt"
    text.write_text("the cat\n")
    base = ["analyse", "--config.checkpoint=" + str(tmp_path / "out"), f"--config.text={text}",
            "--config.num_examples=1", "--workdir", str(tmp_path / "an")]  # fmt: skip
    skip = "--config.skip=lipschitz,empirical,depth"
    assert "tokens are not differentiable" in diffjax_error(capsys, *base, skip)
    assert "alignment part only: add --config.skip=depth,empirical,lipschitz" in diffjax_error(
        capsys, *base, "--config.wrt=embeddings")  # fmt: skip
    assert "line 0 has 2 tokens, fewer than text_tokens 16" in diffjax_error(
        capsys, *base, skip, "--config.wrt=embeddings")  # fmt: skip

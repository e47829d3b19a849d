"""Text attacks against closed forms (a model linear in its embeddings) and exhaustive search."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffjax.attacks import text as ta
from diffjax.lm import LM, LMConfig

N, D = 4, 3


def _linear_model(key):
    """Two-token vocabulary; logit of token 1 at every position = ⟨W, h⟩ + c, token 0 = 0."""
    kw, ke = jax.random.split(key)
    w = jax.random.normal(kw, (N, D))
    emb = jax.random.normal(ke, (2, D))

    def forward(w, c, h):
        z = jnp.einsum("bnd,nd->b", h, w) + c
        return jnp.stack([jnp.zeros_like(z), z], -1)[:, None].repeat(h.shape[1], 1)

    return w, emb, forward


@pytest.mark.parametrize(
    ("norm", "scope"), [("linf", "token"), ("l2", "token"), ("l2", "sequence")]
)
def test_embedding_pgd_reaches_the_minimal_perturbation_of_a_linear_model(norm, scope):
    w, emb, forward = _linear_model(jax.random.key(0))
    tokens = jnp.array([[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 1]])
    editable = jnp.array([[True, True, False, True]] * 3)
    h = np.asarray(emb)[np.asarray(tokens)]
    raw = np.einsum("bnd,nd->b", h, np.asarray(w))
    c = jnp.asarray(-raw - np.array([0.7, 1.3, 2.0]))  # margins 0.7, 1.3, 2.0 for label 0
    we = np.asarray(w)[np.asarray(editable[0])]
    size = {"linf": np.abs(we).sum(), "l2token": np.linalg.norm(we, axis=1).sum(),
            "l2sequence": np.linalg.norm(we)}[norm + ("" if norm == "linf" else scope)]  # fmt: skip
    minimal = np.array([0.7, 1.3, 2.0]) / size
    labels, pos = jnp.zeros(3, jnp.int32), jnp.full(3, N - 1)
    for factor, expect in ((1.02, True), (0.98, False)):
        for i, m in enumerate(minimal):
            cfg = ta.EmbeddingPGDConfig(eps=float(factor * m), norm=norm, scope=scope, steps=40)
            model = ta.TextModel(jax.tree_util.Partial(forward, w, c[i : i + 1]), emb)
            r = ta.embedding_pgd(model, tokens[i : i + 1], editable[i : i + 1], pos[:1],
                                 labels[:1], jax.random.key(1), cfg)  # fmt: skip
            assert bool(r.success[0]) is expect and bool(r.claimed[0]) is expect
            measured = {"linf": r.linf, "l2": r.l2_token if scope == "token" else r.l2}[norm]
            assert float(measured[0]) <= factor * m * (1 + 1e-5)
            if expect:  # a flip needs at least the minimal perturbation
                assert float(measured[0]) >= m * (1 - 1e-5)
            assert np.all(np.asarray(r.delta)[0, ~np.asarray(editable[0])] == 0)


def _tiny_lm():
    config = LMConfig(attention="diff", vocab_size=5, width=8, depth=1, num_heads=2, max_len=8)
    return LM(config, rngs=nnx.Rngs(7))


def _exhaustive(lm, tokens, editable, labels):
    """Per sequence, the fewest substitutions (1, 2, or 3 = none within 2) that flip the
    argmax at the last position, by trying every 1- and 2-token substitution."""
    positions = np.flatnonzero(editable)
    fewest = np.full(len(tokens), 3)
    for k in (2, 1):
        edits = [(where, new) for where in itertools.combinations(positions, k)
                 for new in itertools.product(range(5), repeat=k)]  # fmt: skip
        variants, owner = [], []
        for i, seq in enumerate(tokens):
            for where, new in edits:
                if all(seq[p] != t for p, t in zip(where, new, strict=True)):
                    v = seq.copy()
                    v[list(where)] = new
                    variants.append(v)
                    owner.append(i)
        pred = np.asarray(jax.jit(lm)(jnp.asarray(np.stack(variants)))[:, -1].argmax(-1))
        flips = np.bincount(np.asarray(owner)[pred != labels[owner]], minlength=len(tokens))
        fewest[flips > 0] = k
    return fewest


def test_token_attacks_against_exhaustive_search(record_property):
    lm = _tiny_lm()
    model = ta.text_model(lm)
    tokens = np.asarray(jax.random.randint(jax.random.key(3), (40, 6), 0, 5))
    editable = np.array([False, True, True, True, False, False])
    labels = np.asarray(lm(jnp.asarray(tokens))[:, -1].argmax(-1))  # every clean one "correct"
    fewest = _exhaustive(lm, tokens, editable, labels)
    assert 0 < np.sum(fewest == 1) and 0 < np.sum(fewest == 2)  # a non-trivial oracle
    args = (jnp.asarray(tokens), jnp.broadcast_to(editable, tokens.shape), jnp.full(40, 5),
            jnp.asarray(labels), jax.random.key(0))  # fmt: skip
    runs = {
        "hotflip1": (ta.hotflip(model, *args, ta.HotFlipConfig(budget=1, candidates=4)), 1),
        "hotflip2": (ta.hotflip(model, *args, ta.HotFlipConfig(budget=2, candidates=4)), 2),
        "gcg1": (
            ta.gcg(model, *args, ta.GCGConfig(steps=1, top_k=4, search_width=64, targeted=False)),
            1,
        ),  # fmt: skip
        "gcg2": (
            ta.gcg(model, *args, ta.GCGConfig(steps=2, top_k=4, search_width=64, targeted=False)),
            2,
        ),  # fmt: skip
    }
    for name, (r, budget) in runs.items():
        success = np.asarray(r.success)
        # the re-check: a fresh forward of the returned tokens, here in the test
        rescored = np.asarray(lm(r.tokens)[:, -1].argmax(-1)) != labels
        np.testing.assert_array_equal(success, rescored)
        np.testing.assert_array_equal(np.asarray(r.claimed), success)
        assert np.all(np.asarray(r.changed) <= budget)
        assert np.all(np.asarray(r.tokens)[:, ~editable] == tokens[:, ~editable])
        assert not np.any(success & (fewest > budget))  # never a flip that does not exist
        rate = success[fewest <= budget].mean()
        record_property(f"{name}_find_rate", float(rate))
        print(f"{name}: found {success.sum()} of {(fewest <= budget).sum()} flips ({rate:.2f})")
    # GCG with top_k = V − 1 and a wide search evaluates every single swap exactly
    assert np.asarray(runs["gcg1"][0].success)[fewest == 1].all()
    s = ta.summarize_text(runs["gcg2"][0], labels)
    assert s.clean_correct == 40 and s.fooled == int(np.asarray(runs["gcg2"][0].success).sum())


def test_targeted_gcg_and_bad_inputs():
    lm = _tiny_lm()
    model = ta.text_model(lm)
    tokens = jnp.asarray(jax.random.randint(jax.random.key(5), (8, 6), 0, 5))
    editable = jnp.ones((8, 6), bool)
    labels = lm(tokens)[:, -1].argmax(-1).astype(jnp.int32)
    targets = (labels + 1) % 5
    pos = jnp.full(8, 5)
    r = ta.gcg(model, tokens, editable, pos, labels, jax.random.key(0),
               ta.GCGConfig(steps=6, top_k=4, search_width=24), targets=targets)  # fmt: skip
    hit = np.asarray(lm(r.tokens)[:, -1].argmax(-1)) == np.asarray(targets)
    np.testing.assert_array_equal(np.asarray(r.success), hit)
    assert hit.mean() > 0
    with pytest.raises(ValueError, match="needs targets"):
        ta.gcg(model, tokens, editable, pos, labels, jax.random.key(0), ta.GCGConfig())
    with pytest.raises(ValueError, match="vocabulary"):
        ta.hotflip(model, tokens + 5, editable, pos, labels, jax.random.key(0), ta.HotFlipConfig())
    with pytest.raises(ValueError, match="editable position"):
        ta.hotflip(model, tokens, ~editable, pos, labels, jax.random.key(0), ta.HotFlipConfig())
    with pytest.raises(ValueError, match="eps"):
        ta.EmbeddingPGDConfig(eps=-1.0)
    with pytest.raises(ValueError, match="scope"):
        ta.EmbeddingPGDConfig(eps=1.0, scope="word")

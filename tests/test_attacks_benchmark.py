"""The RobustBench-style benchmark: robust accuracy over all examples, the per-attack breakdown,
and the JSON fields, checked against the per-example records."""

import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax import attacks
from diffjax import data as djdata


@pytest.fixture(scope="module")
def setup():
    model = dj.ViT(dj.preset("tiny"), rngs=nnx.Rngs(0))
    model_fn = attacks.model_function(model)
    data = djdata.synthetic(12, image_size=8, seed=3)
    # Labels: the model's own predictions for 8 examples, wrong ones for 4 (not robust).
    pred = np.asarray(model_fn(data.images.astype(np.float32) / 255)).argmax(1)
    labels = np.where(np.arange(12) < 8, pred, (pred + 1) % 10).astype(np.int32)
    return model_fn, djdata.Dataset(data.images, labels, data.class_names, "synthetic-test")


def test_benchmark_reports_robust_accuracy_over_all_examples(setup):
    model_fn, data = setup
    config = attacks.AutoAttackConfig(2 / 255, steps=3, num_targets=3, square_queries=20)
    result = attacks.benchmark(model_fn, data, eps=2 / 255, n_examples=12, config=config,
                               batch_size=12, model_name="tiny", architecture="ViT")  # fmt: skip
    r = result.records
    correct = r["clean_pred"] == r["label"]
    robust = correct & (r["adv_pred"] == r["label"])
    assert result.n_examples == 12 and correct.sum() == 8
    assert result.clean_accuracy == 8 / 12
    assert result.robust_accuracy == robust.sum() / 12
    # ASR is over the 8 correct ones: robust = clean × (1 − ASR).
    assert result.robust_accuracy == pytest.approx(result.clean_accuracy * (1 - result.summary.asr))
    fooled = [a["fooled"] for a in result.per_attack]
    assert [a["attack"] for a in result.per_attack] == list(config.sequence)
    assert sum(fooled) == correct.sum() - robust.sum()
    assert result.per_attack[-1]["robust_accuracy_after"] == result.robust_accuracy
    entry = result.robustbench_json()
    assert entry["eps"] == "2/255" and entry["threat_model"] == "Linf"
    assert entry["clean_acc"] == f"{100 * 8 / 12:.2f}" and entry["dataset"] == "synthetic-test"
    assert entry["autoattack_acc"] == f"{100 * result.robust_accuracy:.2f}"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(threat_model="L1"), "threat_model"),
        (dict(n_examples=0), "n_examples"),
        (dict(eps=4 / 255, config=attacks.AutoAttackConfig(8 / 255)), "eps"),
    ],
)
def test_benchmark_rejects_bad_arguments(setup, kwargs, match):
    model_fn, data = setup
    with pytest.raises(ValueError, match=match):
        attacks.benchmark(model_fn, data, **kwargs)


def test_eps_strings():
    from diffjax.attacks.robustbench import eps_string

    assert eps_string(8 / 255) == "8/255" and eps_string(0.5) == "0.5"

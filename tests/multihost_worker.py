"""One process of the multi-host test (``tests/test_multihost.py``), or the in-process reference.

    JAX_COORDINATOR_ADDRESS=127.0.0.1:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \\
        python -m tests.multihost_worker --devices 2 --workdir RUN --out RESULT.npz

With ``JAX_COORDINATOR_ADDRESS`` set it joins the others through
``diffjax.sharding.initialize_distributed`` (what ``diffjax --distributed`` calls).

Trains the ``mini`` recipe data-parallel over every device of every process
(:func:`diffjax.train.train`, resuming when ``RUN`` holds checkpoints), attacks a batch of
training images sharded over all devices (:func:`diffjax.attacks.attack_dataset`, PGD), and
writes (process 0) the final parameters and the attack records to ``RESULT.npz``.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np

ATTACK_IMAGES = 16


def flat_params(model) -> dict[str, np.ndarray]:
    """Every parameter of ``model`` as a host array, keyed by its path."""
    from flax import nnx

    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]
    return {"param:" + jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def run(workdir) -> dict[str, np.ndarray]:
    """Train the mini recipe into ``workdir``, attack a sharded batch; params and records.

    When ``workdir`` already holds checkpoints, the latest is first loaded with
    :func:`diffjax.checkpoint.load_model` (keys ``loaded:…``) and training resumes from it.
    """
    import pathlib

    from diffjax import attacks
    from diffjax.checkpoint import CHECKPOINTS_DIR, load_model
    from diffjax.data import load_dataset
    from diffjax.experiments.configs import recipes
    from diffjax.train import train

    out = {}
    found = pathlib.Path(workdir).glob(f"{CHECKPOINTS_DIR}/[0-9]*")
    steps = sorted(found, key=lambda p: int(p.name))
    if steps:
        loaded = flat_params(load_model(steps[-1]))
        out.update({"loaded:" + k: v for k, v in loaded.items()})
    config = recipes.train_config(recipes.training("mini"))
    model, summary = train(config, workdir)
    data = load_dataset(config.dataset, "train")
    records = attacks.attack_dataset(
        attacks.pgd,
        attacks.model_function(model),
        data.images[:ATTACK_IMAGES],
        data.labels[:ATTACK_IMAGES],
        jax.random.key(0),
        attacks.PGDConfig(eps=8 / 255, steps=3),
        batch_size=ATTACK_IMAGES,
    )
    out.update(flat_params(model))
    out.update({"attack:" + k: np.asarray(v) for k, v in records.items()})
    out["test_accuracy"] = np.asarray(summary["final"]["test_accuracy"])
    out["resumed_from_step"] = np.asarray(summary["resumed_from_step"])
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, required=True, help="CPU devices of this process")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    jax.config.update("jax_num_cpu_devices", args.devices)
    from diffjax import sharding

    sharding.initialize_distributed("JAX_COORDINATOR_ADDRESS" in os.environ)
    result = run(args.workdir)
    if jax.process_index() == 0:
        np.savez(args.out, **result)


if __name__ == "__main__":
    main()

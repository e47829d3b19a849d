"""The main job: build ViT and DiffViT; print parameter counts, λ_init per layer, a forward pass."""

from __future__ import annotations

import argparse

import jax
import numpy as np
from flax import nnx

import diffjax as dj


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cifar", choices=sorted(dj.PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=4, help="images in the forward pass")
    args = parser.parse_args(argv)

    images = jax.random.uniform(jax.random.key(args.seed + 1), (args.images, 32, 32, 3))
    print(f"devices: {jax.devices()}")
    for attention in ("softmax", "diff"):
        config = dj.preset(args.preset, attention=attention)
        model = dj.ViT(config, rngs=nnx.Rngs(args.seed))
        name = "DiffViT" if attention == "diff" else "ViT"
        print(f"\n{name}: {dj.count_params(model):,} parameters, {config}")
        if attention == "diff":
            table = [config.layer_lambda_init(i) for i in range(config.depth)]
            print("lambda_init per layer:", np.round(table, 4).tolist())
        x = (
            images
            if config.image_size == 32
            else jax.image.resize(
                images, (args.images, config.image_size, config.image_size, 3), "linear"
            )
        )
        logits = jax.jit(lambda m, x: m(x))(model, x)
        print("logits[0]:", np.round(np.asarray(logits[0]), 4).tolist())


if __name__ == "__main__":
    main()

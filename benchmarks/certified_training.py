"""Certified training, measured: a depth-2 ViT and its parameter-matched DiffViT trained with
IBP (``TrainConfig.robust_training``), then their certified accuracy by the verifier.

Both models: width 32, patch 8 (16 patches + CLS on CIFAR-10), 4 heads (DiffViT: 2 DIFF heads),
ReLU, BatchNorm, mean pooling — the verification-friendly ViT. Training: ``--epochs`` over the
first ``--train-examples`` images, ε = 0 for ``--warmup`` epochs, then a linear ramp to
``--train-eps`` over ``--ramp`` epochs, κ from 1 to ``--kappa-end`` (Gowal et al. 2018). Each
model is then evaluated on the first ``--certify`` test images at ℓ∞ ``--eps``:

* ``clean``: accuracy; ``pgd``: accuracy under PGD (20 steps, 1 restart, an upper bound of the
  robust accuracy);
* ``certified``: the fraction with every margin lower bound > 0 by
  :func:`diffjax.verify.margin_lower_bounds` (``--method``, float64, rounding-sound): a lower
  bound of the robust accuracy. Wilson 95 % intervals.

    python -m benchmarks.certified_training --data-dir ~/cifar [--epochs 6] [--out run.json]

Without ``--data-dir`` it trains on the embedded CIFAR-10 sample (5,000 train, 1,000 test).
Training runs under ``--workdir`` (resumed when run again with the same settings).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="holds cifar-10-batches-py (else: embedded)")
    p.add_argument("--workdir", default="/tmp/diffjax_certified_training")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-examples", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--train-eps", type=float, default=2 / 255)
    # No natural warmup: the IBP bounds of a naturally trained depth-2 DiffViT overflow at the
    # ramp's first ε (its per-head RMSNorm), so the ramp starts at the first step.
    p.add_argument("--warmup", type=float, default=0.0, help="epochs at ε = 0")
    p.add_argument("--ramp", type=float, default=3.0, help="epochs of the ε ramp")
    p.add_argument("--kappa-end", type=float, default=0.5)
    p.add_argument("--robust-training", default="ibp", choices=["ibp", "crown-ibp"])
    p.add_argument("--certify-method", default="crown", choices=["ibp", "crown-ibp", "crown"])
    p.add_argument("--eps", type=float, default=1 / 255, help="ℓ∞ radius certified")
    p.add_argument("--certify", type=int, default=200, help="test images certified")
    p.add_argument("--chunk", type=int, default=2, help="images per verifier call (memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def run(attention: str, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffjax import attacks, verify
    from diffjax.analysis import with_dtype
    from diffjax.attack_config import PGDConfig
    from diffjax.attacks.accounting import wilson_interval
    from diffjax.config import TrainConfig, ViTConfig
    from diffjax.data import load_dataset
    from diffjax.train import train

    dataset = "cifar10" if args.data_dir else "embedded"
    model = ViTConfig(width=32, depth=2, num_heads=4, patch_size=8, attention=attention,
                      activation="relu", norm="batchnorm", pool="mean")  # fmt: skip
    config = TrainConfig(
        model=model, dataset=dataset, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_epochs=min(1.0, args.epochs),
        label_smoothing=0.0, train_examples=args.train_examples, test_examples=1000,
        eval_batch_size=500, log_every_steps=20, seed=args.seed,
        robust_training=args.robust_training, robust_eps=args.train_eps,
        robust_warmup_epochs=args.warmup, robust_ramp_epochs=args.ramp,
        robust_kappa_start=1.0, robust_kappa_end=args.kappa_end,
    )  # fmt: skip
    run_dir = pathlib.Path(args.workdir) / f"{attention}_{args.robust_training}_s{args.seed}"
    t0 = time.perf_counter()
    trained, summary = train(config, run_dir, data_dir=args.data_dir)
    train_s = time.perf_counter() - t0

    test = load_dataset(dataset, "test", args.data_dir).take(args.certify)
    x = jnp.asarray(test.images, jnp.float32) / 255
    y = jnp.asarray(test.labels)
    pgd = attacks.pgd(attacks.model_function(trained), x, y, jax.random.key(args.seed),
                      PGDConfig(eps=args.eps, steps=20))  # fmt: skip
    t0 = time.perf_counter()
    with jax.enable_x64():
        m64 = with_dtype(trained, "float64")
        low = np.asarray(verify.margin_lower_bounds(m64, x.astype(jnp.float64), y, args.eps,
                                                    "linf", args.certify_method,
                                                    batch_size=args.chunk))  # fmt: skip
    certify_s = time.perf_counter() - t0
    n = len(y)
    certified = int(np.sum(np.all((low > 0) | (np.arange(low.shape[1]) == np.asarray(y)[:, None]),
                                  axis=1)))  # fmt: skip
    clean = int(np.sum(np.argmax(np.asarray(pgd.clean_logits), -1) == np.asarray(y)))
    robust = int(np.sum(~np.asarray(pgd.success)))
    return {
        "attention": attention,
        "robust_training": args.robust_training,
        "train_eps": args.train_eps,
        "eps": args.eps,
        "certify_method": args.certify_method,
        "n": n,
        "test_accuracy_1000": summary["final"]["test_accuracy"],
        "clean": clean / n,
        "clean_ci": wilson_interval(clean, n),
        "pgd": robust / n,
        "pgd_ci": wilson_interval(robust, n),
        "certified": certified / n,
        "certified_ci": wilson_interval(certified, n),
        "lambda": [lam for lam in trained.lambdas() if lam is not None],
        "train_s": train_s,
        "certify_s": certify_s,
        "config": config.to_dict(),
    }


def _share(r: dict, key: str) -> str:
    lo, hi = r[f"{key}_ci"]
    return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def format_row(r: dict) -> str:
    """One model's line of the printed table (docs/certified.md quotes these lines)."""
    name = {"softmax": "ViT", "diff": "DiffViT"}[r["attention"]]
    return (f"{name:8s} clean {_share(r, 'clean')}  PGD {_share(r, 'pgd')}  certified "
            f"({r['certify_method']}) {_share(r, 'certified')}  n={r['n']}")  # fmt: skip


def main(argv=None) -> None:
    args = parse(argv)
    rows = []
    for attention in ("softmax", "diff"):
        rows.append(run(attention, args))
        r = rows[-1]
        print(f"{format_row(r)}  train {r['train_s']:.0f} s  certify {r['certify_s']:.0f} s",
              flush=True)  # fmt: skip
    vit, diff = rows
    print(f"DiffViT / ViT: clean {diff['clean'] / max(vit['clean'], 1e-9):.2f}×  certified "
          f"{diff['certified'] / max(vit['certified'], 1e-9):.2f}×")  # fmt: skip
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

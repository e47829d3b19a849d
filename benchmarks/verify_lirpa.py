"""diffjax's verifier against auto_LiRPA: certified radius and time per image, the same weights.

For ViT and the parameter-matched DiffViT at each depth (width 32, 4 heads, 32×32 images in
8×8 patches: 17 tokens), trained briefly with diffjax's own recipe (``embedded``: the CIFAR-10
sample shipped with the package, or real CIFAR-10 with ``--data-dir``), and the first ``--n``
test images the float64 model classifies correctly, it finds per image the largest certified
radius ε of B_norm(x, ε) ∩ [0, 1]^d (ℓ∞ and ℓ2) by the same bisection on both sides: ``--steps``
halvings of [0, ``--hi``], ε certified iff every margin z_c − z_j (j ≠ c) has a positive lower
bound over the ball. Contenders:

* auto_LiRPA ``IBP``, ``CROWN``, ``alpha-CROWN`` (``compute_bounds(method=..., C=margins)``) on
  a PyTorch twin of the model (:mod:`benchmarks.torch_reference`, float64, checked equal to
  diffjax's logits before anything is bounded). Its ℓ∞ ball is given as the per-image box
  x_L = max(x − ε, 0), x_U = min(x + ε, 1); its ℓ2 ball cannot be intersected with the pixel box
  (auto_LiRPA concretises ℓp balls by the dual norm alone), so its ℓ2 radii are for the ball
  only, which is a larger set: still a valid certificate of the intersection.
* diffjax ``interval`` (:mod:`diffjax.analysis.certified`: value and Jacobian enclosures, the
  margin or mean-value certificate at ε) and ``diffjax.verify``'s ``ibp``, ``crown-ibp``,
  ``crown``, ``crown-full`` (CROWN with ``intermediate="full"``: every intermediate pass back
  to the input, as auto_LiRPA's CROWN), ``alpha-crown`` (``verify.certified_radius``, one
  jitted call for all images).

Time per image is the wall time of the whole bisection of all ``--n`` images divided by ``--n``:
*cold* includes diffjax's compilation (the first call) and auto_LiRPA's ``BoundedModule``
construction (its graph tracing); *warm* is diffjax's second call and auto_LiRPA's bisection
alone; every entry also saves the 1-minute load average over its run (the machine is shared).
PyTorch runs with one thread per core. diffjax bounds all images of a bisection step in one call;
auto_LiRPA ``--lirpa-batch`` images per call for ℓ∞ (per-image boxes), one for ℓ2 (its ℓ2 radius
is one number per call).

auto_LiRPA's CROWN computes every intermediate bound a relaxation needs by a backward pass from
that node to the input with an identity specification over the node's neurons (1,156 rows for
the 4×17×17 attention logits of a depth-1 model), and its bilinear rule for QKᵀ and A·V forms a
[rows, batch, heads, 17, 8, 17] tensor per pass: profiled (cProfile) on one depth-1 ViT image,
most of a ``compute_bounds(method="CROWN")`` is that rule, and its memory grows with ε (more
unstable neurons) until the bisection's larger ε are killed for memory on a shared 23 GB machine.
``--crown-batch`` sets its ``crown_batch_size`` (rows per backward pass), trading memory for
passes; the time is inherent to the relaxation.

Raw per-image results go to ``--out`` (one JSON file per model and norm, filled in method by
method, so an interrupted run resumes where it stopped and a rerun only computes what is
missing); the Markdown table (:func:`render`) is printed and is what docs/certified.md shows.

auto_LiRPA is not a diffjax dependency. Install it in its own virtual environment that reuses
this project's packages (torch, numpy, jax), from a checkout of its repository
(https://github.com/Verified-Intelligence/auto_LiRPA), then run this script with that
environment's Python from the repository root::

    python3 -m venv lirpa-venv
    python3 -c "import site; print(site.getsitepackages()[0])" \\
        > lirpa-venv/lib/python3.11/site-packages/project.pth   # with the project's venv active
    lirpa-venv/bin/pip install --no-deps ./auto_LiRPA appdirs sortedcontainers graphviz
    lirpa-venv/bin/pip install --no-deps -e .   # diffjax, with its experiments package
    lirpa-venv/bin/python -m benchmarks.verify_lirpa [--depths 1 2] [--n 10] [--norms linf l2]
    python -m benchmarks.verify_lirpa --render [--docs]  # the saved results' table [into the docs]

Without auto_LiRPA the script says so and exits 0 (``--render`` needs neither it nor torch).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

LIRPA_METHODS = ("IBP", "CROWN", "alpha-CROWN")
# diffjax.verify.radii.METHODS (not imported: --render needs no JAX), and "crown-full": CROWN
# with every intermediate pass back to the input (``intermediate="full"``), as auto_LiRPA's.
DIFFJAX_METHODS = ("interval", "ibp", "crown-ibp", "crown", "crown-full", "alpha-crown")
NORMS = ("linf", "l2")
ATTENTIONS = ("softmax", "diff")
MODEL_NAMES = {"softmax": "ViT", "diff": "DiffViT"}
# The twin must compute diffjax's function: max |Δ logit| allowed in float64.
TWIN_TOLERANCE = 1e-10
DEFAULT_OUT = pathlib.Path("results/verify_lirpa")


# ---------------------------------------------------------------------------------------------
# The table, from the saved results alone (no JAX, no torch).


def load_results(out: str | os.PathLike) -> list[dict]:
    """Every saved result file under ``out``, in a stable order (attention, depth, norm)."""
    rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(out).glob("*.json"))]
    order = {a: i for i, a in enumerate(ATTENTIONS)}
    return sorted(rows, key=lambda r: (r["depth"], order[r["attention"]], NORMS.index(r["norm"])))


def _ok(entry: dict | None) -> bool:
    return entry is not None and entry.get("error") is None


def lirpa_best(result: dict) -> str | None:
    """auto_LiRPA's method with the largest median radius (ties: the faster), or None."""
    done = [m for m in LIRPA_METHODS if _ok(result["methods"].get(f"auto_LiRPA {m}"))]
    if not done:
        return None

    def key(m):
        e = result["methods"][f"auto_LiRPA {m}"]
        return (statistics.median(e["radii"]), -e["warm_s"])

    return max(done, key=key)


def _g(x: float) -> str:
    return f"{x:.3g}"


def _ratios(num: list[float], den: list[float]) -> str:
    """median [min, max] of num_i / den_i over the images where den_i > 0."""
    r = [a / b for a, b in zip(num, den, strict=True) if b > 0]
    if not r:
        return "—"
    return f"{_g(statistics.median(r))} [{_g(min(r))}, {_g(max(r))}]"


def render(results: list[dict]) -> str:
    """The Markdown tables of the saved results.

    The first table: per model and norm, for each diffjax method, the certified radius over
    auto_LiRPA's best method's (median [range] over images; > 1 means diffjax certifies more)
    and auto_LiRPA's warm time per image over diffjax's (> 1 means diffjax is faster). The
    second: every method's median radius and cold/warm time per image (s).
    """
    if not results:
        return "(no saved results)\n"
    dj_cols = [m for m in DIFFJAX_METHODS if any(f"diffjax {m}" in r["methods"] for r in results)]
    head = [
        "model",
        "norm",
        "images",
        "auto_LiRPA best",
        *(f"{m}: radius ×, speed ×" for m in dj_cols),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        best = lirpa_best(r)
        cells = [
            f"{MODEL_NAMES[r['attention']]} depth {r['depth']}",
            r["norm"],
            str(len(r["images"])),
        ]
        cells.append("—" if best is None else best)
        for m in dj_cols:
            e = r["methods"].get(f"diffjax {m}")
            if not _ok(e):
                cells.append("—" if e is None else "error")
            elif best is None:
                cells.append("—")
            else:
                b = r["methods"][f"auto_LiRPA {best}"]
                cells.append(f"{_ratios(e['radii'], b['radii'])}, {_g(b['warm_s'] / e['warm_s'])}")
        lines.append("| " + " | ".join(cells) + " |")

    names = [f"auto_LiRPA {m}" for m in LIRPA_METHODS] + [f"diffjax {m}" for m in dj_cols]
    head = ["model", "norm", *names]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [f"{MODEL_NAMES[r['attention']]} depth {r['depth']}", r["norm"]]
        for name in names:
            e = r["methods"].get(name)
            if e is None:
                cells.append("—")
            elif e.get("error") is not None:
                cells.append("fails")
            else:
                load = f", load {e['load']:.1f}" if "load" in e else ""
                failed = f", {e['failed_calls']} bounds failed" if e.get("failed_calls") else ""
                cells.append(
                    f"{_g(statistics.median(e['radii']))} "
                    f"({_g(e['cold_s'])} / {_g(e['warm_s'])} s{load}{failed})"
                )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DOCS = pathlib.Path("docs/certified.md")
MARKERS = ("<!-- verify_lirpa table -->\n", "<!-- /verify_lirpa table -->")


def write_docs(table: str, path: str | os.PathLike = DOCS) -> None:
    """Put ``table`` between the markers of ``path`` (docs/certified.md, "Against auto_LiRPA")."""
    path = pathlib.Path(path)
    text = path.read_text()
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        raise ValueError(f"{path} lacks the markers {MARKERS} around the generated table")
    path.write_text(text[: start + len(MARKERS[0])] + table + text[end:])


# ---------------------------------------------------------------------------------------------
# The bisection both sides share.


def bisect(certified, n: int, hi: float, steps: int):
    """Per example, the largest ε on the grid of [0, hi] that ``steps`` halvings reach.

    ``certified(eps)`` takes eps [n] (float64 NumPy) and returns [n] booleans: example i is
    certified on its ball of radius eps[i]. All examples move in lockstep, one batched call per
    step; then, as ``diffjax.verify.certified_radius`` does, ε = hi is taken where hi itself is
    certified and 0 where ε = 0 is not. Returns the certified radii [n].
    """
    import numpy as np

    def check(eps):
        return np.asarray(certified(eps), bool)

    lo, up = np.zeros(n), np.full(n, float(hi))
    for _ in range(steps):
        mid = (lo + up) / 2
        ok = check(mid)
        lo, up = np.where(ok, mid, lo), np.where(ok, up, mid)
    best = np.where(check(np.full(n, float(hi))), float(hi), lo)
    return np.where(check(np.zeros(n)), best, 0.0)


# ---------------------------------------------------------------------------------------------
# Models and images.


def model_name(attention: str, depth: int) -> str:
    return f"{MODEL_NAMES[attention].lower()}-d{depth}"


def train_or_load(attention: str, depth: int, args):
    """The model, trained with the ``embedded`` recipe once and then read from ``--out``."""
    from diffjax import checkpoint
    from diffjax.experiments.configs import recipes
    from diffjax.train import train

    saved = args.out / "models" / model_name(attention, depth)
    if checkpoint.has_manifest(saved):
        return checkpoint.load_model(saved)
    cd = recipes.training("embedded", epochs=args.epochs)
    if args.data_dir is not None:
        cd.dataset = "cifar10"
    m = cd.model
    m.image_size, m.patch_size, m.width, m.num_heads = 32, 8, 32, 4
    m.depth, m.attention = depth, attention
    config = recipes.train_config(cd)
    print(f"training {model_name(attention, depth)} ({config.epochs} epochs)", flush=True)
    model, summary = train(config, args.runs / model_name(attention, depth), data_dir=args.data_dir)
    print(f"  test accuracy {summary['final']['test_accuracy']:.3f}", flush=True)
    checkpoint.save_model(saved, model)
    return model


def first_correct(model, images, labels, n: int):
    """Indices of the first ``n`` images the (float64) model classifies correctly."""
    import numpy as np

    pred = np.concatenate(
        [np.asarray(model(images[i : i + 500])).argmax(-1) for i in range(0, len(images), 500)]
    )
    idx = np.flatnonzero(pred == labels)[:n]
    if len(idx) < n:
        raise ValueError(f"only {len(idx)} test images are classified correctly, asked for {n}")
    return idx


# ---------------------------------------------------------------------------------------------
# The two sides.


def margin_spec(labels, num_classes: int):
    """C [B, K − 1, K]: rows e_c − e_j over j ≠ c, the margins auto_LiRPA bounds."""
    import torch

    b = len(labels)
    spec = torch.zeros(b, num_classes - 1, num_classes, dtype=torch.float64)
    for i, c in enumerate(labels.tolist()):
        others = [j for j in range(num_classes) if j != c]
        spec[i, :, c] = 1.0
        spec[i, torch.arange(num_classes - 1), others] = -1.0
    return spec


def twin(model):
    """The float64 PyTorch twin that auto_LiRPA traces, its GELU auto_LiRPA's own op."""
    from auto_LiRPA.operators.gelu import GELU

    from benchmarks.torch_reference import from_diffjax

    ref = from_diffjax(model).double().eval()
    for block in ref.blocks:
        block.act = GELU()  # torch's erf GELU, as one traceable node (auto_LiRPA has no Erf)
    return ref


def lirpa_radii(bounded, images, labels, norm: str, method: str, args):
    """auto_LiRPA's certified radii [n] by :func:`bisect`, the bisection's wall time and the
    number of (image, ε) bounds it could not compute (its assertion: not certified there)."""
    import numpy as np
    import torch
    from auto_LiRPA import BoundedTensor, PerturbationLpNorm

    x = torch.from_numpy(np.asarray(images))
    spec = margin_spec(labels, args.num_classes)

    failed = []

    def positive(xs, ptb, c):
        try:
            lb, _ = bounded.compute_bounds(
                x=(BoundedTensor(xs, ptb),), C=c, method=method, bound_upper=False
            )
        except AssertionError:
            # Its sqrt relaxation asserts that the input's lower bound is ≥ 0 (RMSNorm's and
            # LayerNorm's mean of squares, whose linear lower bound goes negative at larger ε):
            # no bound at this ε, so nothing is certified there; the bisection goes on below.
            failed.append(len(xs))
            return np.zeros(len(xs), bool)
        return (lb > 0).all(1).numpy()

    def ptb(i, j, eps):
        if norm == "linf":  # per-image boxes
            e = torch.from_numpy(eps[i:j]).reshape(-1, 1, 1, 1)
            xs = x[i:j]
            return PerturbationLpNorm(
                norm=np.inf, x_L=(xs - e).clamp(0, 1), x_U=(xs + e).clamp(0, 1)
            )
        return PerturbationLpNorm(norm=2, eps=float(eps[i]))

    # ℓ∞: --lirpa-batch images per call (its CROWN's float64 coefficient tensors grow with the
    # batch). ℓ2: the radius is one number per call (auto_LiRPA's interval rules
    # broadcast it over the batch), so one image per call.
    batch = args.lirpa_batch if norm == "linf" else 1

    def certified(eps):
        return np.concatenate([
            positive(x[i : i + batch], ptb(i, i + batch, eps), spec[i : i + batch])
            for i in range(0, len(x), batch)
        ])  # fmt: skip

    t0 = time.perf_counter()
    radii = bisect(certified, len(x), args.hi, args.steps)
    return radii, time.perf_counter() - t0, sum(failed)


# ---------------------------------------------------------------------------------------------
# The driver.


def _save(path: pathlib.Path, result: dict) -> None:
    from diffjax.checkpoint import write_json_atomic

    write_json_atomic(path, result)


def _entry(radii, cold: float, warm: float, n: int, load: float) -> dict:
    """A method's saved result; ``load``: the 1-minute load average over its run (the machine
    is shared, so every time is quoted with it)."""
    return {
        "radii": [float(r) for r in radii],
        "cold_s": cold / n,
        "warm_s": warm / n,
        "load": load,
        "error": None,
    }


def _load(start: float) -> float:
    """The mean of the 1-minute load average at the start of a run and now."""
    return (start + os.getloadavg()[0]) / 2


def run_model(model, attention: str, depth: int, test, args) -> None:
    import numpy as np
    import torch

    from diffjax import analysis as an
    from diffjax.verify.radii import certified_radii

    model = an.with_dtype(model, "float64")
    images = np.asarray(test.images, np.float64) / 255.0
    idx = first_correct(model, images, test.labels, args.n)
    x, y = images[idx], np.asarray(test.labels[idx], np.int32)
    ref = twin(model)
    with torch.no_grad():
        gap = float(np.abs(ref(torch.from_numpy(x)).numpy() - np.asarray(model(x))).max())
    if not gap <= TWIN_TOLERANCE:
        raise RuntimeError(f"the PyTorch twin differs from diffjax by {gap:.3g} > {TWIN_TOLERANCE}")
    bounded, build_s = None, 0.0
    for norm in args.norms:
        path = args.out / f"{model_name(attention, depth)}-{norm}.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        setting = (idx.tolist(), args.hi, args.steps)
        if (result.get("images"), result.get("hi"), result.get("steps")) != setting:
            result = {
                "attention": attention, "depth": depth, "norm": norm, "images": idx.tolist(),
                "labels": y.tolist(), "hi": args.hi, "steps": args.steps, "methods": {},
            }  # fmt: skip
        result["twin_max_abs_diff"] = gap
        for method in args.lirpa_methods:
            name = f"auto_LiRPA {method}"
            if name in result["methods"] and not args.force:
                continue
            if bounded is None:
                from auto_LiRPA import BoundedModule

                t0 = time.perf_counter()
                bounded = BoundedModule(
                    ref, torch.from_numpy(x), device="cpu",
                    bound_opts={"optimize_bound_args": {"iteration": args.alpha_iterations},
                                # crown_batch_size needs this too (a GPU-only setting).
                                "crown_batch_size": args.crown_batch,
                                "batched_crown_max_vram_ratio": 0.9},
                )  # fmt: skip
                build_s = time.perf_counter() - t0
            try:
                load = os.getloadavg()[0]
                radii, wall, failed = lirpa_radii(bounded, x, y, norm, method, args)
                entry = _entry(radii, build_s + wall, wall, len(x), _load(load))
                result["methods"][name] = {**entry, "failed_calls": failed}
            except Exception as e:  # auto_LiRPA's own failures are results, recorded as such
                result["methods"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"{path.stem} {name}: {result['methods'][name]}", flush=True)
            _save(path, result)
        for method in args.diffjax_methods:
            name = f"diffjax {method}"
            if name in result["methods"] and not args.force:
                continue
            times, radii, load = [], None, os.getloadavg()[0]
            for _ in range(2):  # cold, then warm
                t0 = time.perf_counter()
                full = method == "crown-full"
                radii = certified_radii(model, x, y, norm=norm, hi=args.hi, steps=args.steps,
                                        method="crown" if full else method,
                                        intermediate="full" if full else "checkpoint")  # fmt: skip
                times.append(time.perf_counter() - t0)
            result["methods"][name] = _entry(radii, times[0], times[1], len(x), _load(load))
            print(f"{path.stem} {name}: {result['methods'][name]}", flush=True)
            _save(path, result)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", nargs="+", type=int, default=[1, 2, 3, 4])
    p.add_argument("--attentions", nargs="+", default=list(ATTENTIONS), choices=ATTENTIONS)
    p.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    p.add_argument("--n", type=int, default=10, help="images per model")
    p.add_argument("--hi", type=float, default=0.05, help="bisection interval [0, hi], pixels")
    p.add_argument("--steps", type=int, default=10, help="bisection halvings")
    p.add_argument("--lirpa-methods", nargs="*", default=list(LIRPA_METHODS), choices=LIRPA_METHODS)
    p.add_argument(
        "--diffjax-methods", nargs="*", default=list(DIFFJAX_METHODS), choices=DIFFJAX_METHODS
    )
    p.add_argument("--lirpa-batch", type=int, default=1,
                   help="images per auto_LiRPA call (ℓ∞; its CROWN is memory-hungry)")  # fmt: skip
    p.add_argument("--alpha-iterations", type=int, default=20, help="auto_LiRPA α-CROWN steps")
    p.add_argument("--crown-batch", type=int, default=256,
                   help="auto_LiRPA's crown_batch_size: intermediate-bound rows per backward "
                        "pass (all at once needs > 8 GB for one depth-1 image)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=12, help="epochs of a model not yet trained")
    p.add_argument("--data-dir", default=None, help="train and test on CIFAR-10 from here")
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    p.add_argument("--runs", type=pathlib.Path, default=pathlib.Path("runs/verify_lirpa"),
                   help="training run directories")  # fmt: skip
    p.add_argument("--force", action="store_true", help="recompute methods already saved")
    p.add_argument("--render", action="store_true", help="only print the saved results' table")
    p.add_argument("--docs", action="store_true",
                   help=f"with --render: also write the table into {DOCS}")  # fmt: skip
    args = p.parse_args(argv)
    if min(args.n, args.steps, args.lirpa_batch, args.crown_batch, *args.depths) < 1 or not (
        args.hi > 0
    ):
        p.error("--n, --steps, --lirpa-batch, --crown-batch, --depths must be >= 1 and --hi > 0")
    if args.render:
        table = render(load_results(args.out))
        print(table, end="")
        if args.docs:
            write_docs(table)
        return 0
    try:
        import auto_LiRPA  # noqa: F401
    except ImportError:
        print("auto_LiRPA is not importable: nothing to compare (install it as the module "
              "docstring says); skipping.")  # fmt: skip
        return 0
    import logging

    import jax
    import torch

    from diffjax.data import load_dataset

    logging.getLogger().setLevel(logging.WARNING)  # auto_LiRPA turns on everyone's INFO logs

    torch.set_num_threads(os.cpu_count())
    torch.set_default_dtype(torch.float64)
    args.num_classes = 10
    # Training runs in float32 (the recipe's dtype); the bounds in float64.
    models = {(a, d): train_or_load(a, d, args) for d in args.depths for a in args.attentions}
    with jax.enable_x64(True):
        test = load_dataset("cifar10" if args.data_dir else "embedded", "test", args.data_dir)
        for (attention, depth), model in models.items():
            run_model(model, attention, depth, test, args)
    print(render(load_results(args.out)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

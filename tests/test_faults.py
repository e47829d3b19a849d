"""Fault injection: kill -9, flipped bits, truncations, full disks, NaNs, hostile files.

Each test injects one kind of fault and checks that it is either recovered exactly (a rerun
gives what an uninterrupted run gives, bit for bit) or stopped by a clear error that names the
file or field, never a silent wrong result or lost data. The tries per kind are recorded in
``outcome`` for the table of docs/reliability.md (``tests/fault_table.py``). The points of the
kills and of the flipped bits come from fixed seeds. Training and attacks are killed in a
subprocess (``python -c``) that kills itself at the chosen point with SIGKILL, exactly what
``kill -9`` does, and are resumed in this process.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import pathlib
import pickle
import random
import shutil
import subprocess
import sys
import tarfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffjax import attacks, records, sharding
from diffjax.analysis.lipschitz import exact_local_lipschitz
from diffjax.analysis.summary import layer_summary
from diffjax.attacks import APGDConfig, CWConfig, PGDConfig, SquareConfig
from diffjax.attacks import interface as itf
from diffjax.checkpoint import (
    MANIFEST_FILE,
    CheckpointError,
    TrainCheckpoints,
    load_model,
    restore_params,
    save_model,
    write_json_atomic,
)
from diffjax.clip.config import CLIPConfig
from diffjax.config import ViTConfig, preset
from diffjax.data import DatasetFormatError, cifar, synthetic
from diffjax.data.download import extract
from diffjax.train import TrainConfig, evaluate, init_state, train
from diffjax.vit import ViT
from tests.fault_table import Outcomes, table_fixture
from tests.test_data import cifar_files, write_folder

ROOT = pathlib.Path(__file__).resolve().parents[1]

# 8 steps (4 per epoch), a checkpoint every 2, evaluations at 4 and 8, two kept: saves, evals
# and deletions of old steps all happen, in 8 steps. One compilation for the whole module.
CONFIG = TrainConfig(
    model=preset("tiny", attention="diff"),
    dataset="synthetic",
    epochs=2,
    batch_size=16,
    eval_batch_size=16,
    warmup_epochs=0.5,
    log_every_steps=1,
    checkpoint_every_steps=2,
    keep_checkpoints=2,
)
SAVE_STEPS = (2, 4, 6, 8)


def data():
    return synthetic(64, image_size=8, seed=0), synthetic(16, image_size=8, seed=1)


def initial_model():
    """A ViT of ``CONFIG.model`` with initial parameters, built without compiling each
    initialiser (``init_state`` is compiled once for the module)."""
    vit = nnx.eval_shape(lambda: ViT(CONFIG.model, rngs=nnx.Rngs(0)))
    nnx.update(vit, init_state(config=CONFIG, steps_per_epoch=4).params)
    return vit


def one_device():
    # one data-parallel device here and in the killed subprocess: the same computation
    return jax.devices()[:1]


outcome = Outcomes()
fault_table = table_fixture(outcome, "test_faults")


# ---------------------------------------------------------------------------------------------
# kill -9


CHILD = """
import json, os, sys
import jax
jax.config.update("jax_num_cpu_devices", int(os.environ.get("DIFFJAX_TEST_DEVICES", "4")))
jax.config.update("jax_default_matmul_precision", "highest")
# compiled programs are shared between the killed runs (a cache hit gives the same program)
jax.config.update("jax_compilation_cache_dir", os.environ["FAULTS_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
from tests import test_faults
getattr(test_faults, sys.argv[1])(**json.loads(sys.argv[2]))
"""


def run_killed(function: str, cache: pathlib.Path, calls: list[dict]) -> None:
    """Run ``function(**kwargs)`` of this module for each ``kwargs`` in ``calls``, each in its
    own subprocess (all at once), each of which must die by SIGKILL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAULTS_JAX_CACHE": str(cache)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, function, json.dumps(kwargs)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for kwargs in calls
    ]
    for kwargs, proc in zip(calls, procs, strict=True):
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == -9, f"{kwargs}: the child was not killed:\n{output}"


def die() -> None:
    os.kill(os.getpid(), 9)


def killed_training(run_dir: str, mode: str, step: int) -> None:
    """Train ``CONFIG`` into ``run_dir`` and SIGKILL this process at ``step`` (see MODES)."""
    import orbax.checkpoint._src.path.atomicity as atomicity

    from diffjax import checkpoint

    saving = []
    save = checkpoint.TrainCheckpoints.save

    def tracked_save(self, at, *args, **kwargs):
        saving[:] = [at]
        return save(self, at, *args, **kwargs)

    checkpoint.TrainCheckpoints.save = tracked_save

    def kill_in_save(original):
        def wrapped(*args, **kwargs):
            if saving == [step]:
                die()
            return original(*args, **kwargs)

        return wrapped

    if mode == "before_rename":  # orbax wrote the step into its temporary folder
        for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
            finalize = cls.finalize

            async def killing_finalize(self, *args, _finalize=finalize, **kwargs):
                if saving == [step]:
                    die()
                return await _finalize(self, *args, **kwargs)

            cls.finalize = killing_finalize
    elif mode == "before_manifest":  # orbax renamed the step; the manifest is not written
        checkpoint.write_manifest = kill_in_save(checkpoint.write_manifest)
    elif mode == "mid_prune":  # an old step renamed away, not yet deleted
        checkpoint.shutil.rmtree = kill_in_save(checkpoint.shutil.rmtree)

    def progress(record):
        if mode == "after_step" and record.get("step") == step and record["kind"] == "train":
            die()

    train_data, test_data = data()
    train(
        CONFIG,
        run_dir,
        train_data=train_data,
        test_data=test_data,
        devices=one_device(),
        progress=progress,
    )


MODES = ("after_step", "before_rename", "before_manifest", "mid_prune")


def kill_points(seed: int = 16) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [
        ("after_step", rng.randint(1, 7)),
        ("before_rename", rng.choice(SAVE_STEPS)),
        ("before_manifest", rng.choice(SAVE_STEPS)),
        # the one deletion certain to happen: step 2 at the third save (step 8 may be the best)
        ("mid_prune", 6),
    ]


def comparable(run_dir: pathlib.Path):
    """A run's records without the wall-clock fields."""
    metrics = [
        {k: v for k, v in json.loads(line).items() if k != "img_per_s"}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    result = json.loads((run_dir / "results.json").read_text())
    for k in ("train_img_per_s", "resumed_from_step"):
        result.pop(k)
    return metrics, result, sorted(p.name for p in (run_dir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: (run directory, final parameters)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train_data, test_data = data()
    model, _ = train(
        CONFIG, run_dir, train_data=train_data, test_data=test_data, devices=one_device()
    )
    return run_dir, jax.device_get(nnx.state(model, nnx.Param))


def assert_same_run(run_dir, model, reference):
    ref_dir, ref_params = reference
    assert comparable(run_dir) == comparable(ref_dir)
    params = jax.device_get(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_killed_at_random_points_resumes_exactly(reference, tmp_path):
    calls = [
        {"run_dir": str(tmp_path / f"{mode}_{step}"), "mode": mode, "step": step}
        for mode, step in kill_points()
    ]
    # the first child fills the compilation cache, the others then run side by side
    run_killed("killed_training", tmp_path / "jax_cache", calls[:1])
    run_killed("killed_training", tmp_path / "jax_cache", calls[1:])
    for call in calls:
        run_dir, mode, step = pathlib.Path(call["run_dir"]), call["mode"], call["step"]
        names = [p.name for p in (run_dir / "checkpoints").iterdir()]
        leftovers = [n for n in names if ".orbax-checkpoint-tmp" in n]
        unsealed = [
            n
            for n in names
            if n.isdigit() and not (run_dir / "checkpoints" / n / MANIFEST_FILE).is_file()
        ]
        # the fault hit where it was aimed: each mode leaves its own kind of unfinished save
        assert bool(leftovers) == (mode in ("before_rename", "mid_prune")), (mode, names)
        assert unsealed == ([str(step)] if mode == "before_manifest" else []), (mode, names)
        train_data, test_data = data()
        model, summary = train(
            CONFIG, run_dir, train_data=train_data, test_data=test_data, devices=one_device()
        )
        assert summary["resumed_from_step"] < 8
        assert_same_run(run_dir, model, reference)
        outcome("kill -9 during training", recovered=True)


def linear(w, images):
    return images.reshape(len(images), -1) @ w


def attack_parts(out_dir: str, kill_at: int | None = None) -> list:
    """PGD on 24 examples in three resumable parts; SIGKILL when part ``kill_at`` starts."""
    # a linear classifier: what is under test is the resume, not the model (cheap to compile)
    w = jax.random.normal(jax.random.key(0), (8 * 8 * 3, 10))
    model_fn = jax.tree_util.Partial(linear, w)
    ds = synthetic(24, image_size=8, seed=2)
    config = PGDConfig(eps=8 / 255, steps=3)

    def part(i):
        if i == kill_at:
            die()
        rows = slice(8 * i, 8 * i + 8)
        out = attacks.attack_dataset(
            attacks.pgd,
            model_fn,
            ds.images[rows],
            ds.labels[rows],
            jax.random.key(i),
            config,
            batch_size=8,
        )
        return {name: v.tolist() for name, v in out.items()}

    out = pathlib.Path(out_dir)
    return [records.cached(out / f"part{i}.json", lambda i=i: part(i)) for i in range(3)]


def test_attack_killed_mid_run_resumes_exactly(tmp_path):
    kill_at = random.Random(17).randint(1, 2)
    run_killed(
        "attack_parts",
        tmp_path / "jax_cache",
        [{"out_dir": str(tmp_path / "a"), "kill_at": kill_at}],
    )
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        f"part{i}.json" for i in range(kill_at)
    ]  # finished parts kept, no temporary file
    assert attack_parts(str(tmp_path / "a")) == attack_parts(str(tmp_path / "b"))
    outcome("kill -9 during an attack", recovered=True)


# ---------------------------------------------------------------------------------------------
# Bit flips and truncations


def faults_of(path: pathlib.Path, rng: random.Random):
    """(description, corrupted bytes): one flipped bit and one truncation of a file."""
    raw = path.read_bytes()
    flipped = bytearray(raw)
    if raw:
        bit = rng.randrange(8 * len(raw))
        flipped[bit // 8] ^= 1 << (bit % 8)
        yield "bit flip", bytes(flipped)
    yield "truncation", raw[: rng.randrange(len(raw))] if raw else b"\n"


def corrupt_each_file(directory: pathlib.Path, files, check, kind: str, rng) -> None:
    """Corrupt every file in turn, check that ``check()`` raises naming it, and restore it."""
    for file in files:
        raw = file.read_bytes()
        for fault, corrupted in faults_of(file, rng):
            file.write_bytes(corrupted)
            try:
                with pytest.raises((CheckpointError, ValueError)) as error:
                    check()
                named = str(file.relative_to(directory)) in str(error.value)
                # a damaged manifest is named by path; any other file's own path is named
                assert named or file.name == MANIFEST_FILE, (fault, file, error.value)
                assert str(directory) in str(error.value)
            finally:
                file.write_bytes(raw)
            outcome(f"{fault} in a {kind}", recovered=False)


def test_bit_flips_and_truncations_in_every_checkpoint_file(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    step_dir = run_dir / "checkpoints" / "8"
    state = init_state(config=CONFIG, steps_per_epoch=4)  # the restore target

    def restore():
        with TrainCheckpoints(run_dir) as ckpts:
            ckpts.restore(8, state.params, state.opt_state)

    files = sorted(f for f in step_dir.rglob("*") if f.is_file()) + [run_dir / "config.json"]
    assert len(files) > 20 and any(f.parent.name == "metrics" for f in files)
    corrupt_each_file(run_dir, files, restore, "training checkpoint", random.Random(1))
    restore()  # every file restored: the checkpoint reads again


def test_bit_flips_and_truncations_in_every_model_file(tmp_path):
    directory = save_model(tmp_path / "model", initial_model())
    files = sorted(f for f in directory.rglob("*") if f.is_file())
    assert (directory / "config.json") in files and (directory / MANIFEST_FILE) in files
    target = nnx.eval_shape(lambda: ViT(CONFIG.model, rngs=nnx.Rngs(0)))  # what load_model builds
    corrupt_each_file(
        directory,
        files,
        lambda: restore_params(directory / "params", target),
        "saved model",
        random.Random(2),
    )
    assert load_model(directory).config == CONFIG.model


def test_bit_flips_and_truncations_in_a_results_part(tmp_path):
    path = tmp_path / "parts" / "pgd.json"
    value = {"asr": 0.25, "l2": [1e-5, 0.5, math.pi], "name": "diffvit_s0", "n": 12}
    records.cached(path, lambda: value)
    raw = path.read_bytes()
    rng = random.Random(3)
    for _ in range(40):  # more tries than files: a part is one small file
        for fault, corrupted in faults_of(path, rng):
            path.write_bytes(corrupted)
            with pytest.raises(ValueError, match=f"corrupt result file {path}"):
                records.cached(path, lambda: pytest.fail("a corrupt part was recomputed"))
            path.write_bytes(raw)
            outcome(f"{fault} in a results part", recovered=False)
    assert records.cached(path, lambda: pytest.fail("recomputed")) == value


# ---------------------------------------------------------------------------------------------
# Full disk (finding 4)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1.2 MB tmpfs (needs root); skipped where it cannot be mounted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    yield mount
    # Lazily: a run directory's lock is held for the life of the process that trained in it
    # (diffjax.locking), so the mount is still in use here.
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def blocks(directory: pathlib.Path) -> int:
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in directory.rglob("*") if f.is_file())


def fill(disk: pathlib.Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` free bytes."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    (disk / "filler").write_bytes(b"\0" * max(free - leave, 0))


# tensorstore's failed writes leave callbacks to a closed event loop, collected (and reported by
# pytest as unraisable) later; they are not errors of this test
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_full_disk_stops_training_at_once_keeps_checkpoints_and_resumes_exactly(
    reference, tiny_disk, tmp_path
):
    step_bytes = blocks(reference[0] / "checkpoints" / "8")
    # room for the run directory's lock file and the first checkpoint, not the second
    fill(tiny_disk, leave=3 * step_bytes // 2 + 4096)
    run_dir = tiny_disk / "run"
    seen = []
    train_data, test_data = data()
    with pytest.raises(CheckpointError) as error:
        train(
            CONFIG,
            run_dir,
            train_data=train_data,
            test_data=test_data,
            devices=one_device(),
            progress=seen.append,
        )
    message = str(error.value)
    assert f"saving checkpoint {run_dir}/checkpoints/4 failed" in message
    assert "No space left on device" in message or "ENOSPC" in message, message
    assert "earlier checkpoints (steps [2]) are kept" in message
    # stopped at once: nothing was trained after the failed save
    assert max(r["step"] for r in seen if "step" in r) == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2"]
    assert not [p for p in run_dir.rglob("*") if "tmp" in p.name]  # nothing half-written
    outcome("full disk during a checkpoint save", recovered=False)

    moved = tmp_path / "run"  # the run, moved to a disk with room, resumes exactly
    shutil.copytree(run_dir, moved)
    model, summary = train(
        CONFIG, moved, train_data=train_data, test_data=test_data, devices=one_device()
    )
    assert summary["resumed_from_step"] == 2
    assert_same_run(moved, model, reference)
    outcome("full disk during a checkpoint save, then resumed", recovered=True)


def test_full_disk_json_write_names_the_file_and_leaves_no_temporary_file(tiny_disk):
    fill(tiny_disk, leave=0)
    with pytest.raises(OSError, match=f"cannot write {tiny_disk}/results.json"):
        write_json_atomic(tiny_disk / "results.json", {"x": list(range(10_000))})
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]
    outcome("full disk during a JSON write", recovered=False)


# ---------------------------------------------------------------------------------------------
# Finding 1: a flipped byte in the optimizer state restored silently


def test_flipped_byte_in_optimizer_state_data_is_refused(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    chunks = sorted(
        (run_dir / "checkpoints" / "8" / "opt_state" / "ocdbt.process_0" / "d").iterdir()
    )
    target = max(chunks, key=lambda f: f.stat().st_size)  # an array data chunk
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    train_data, test_data = data()
    with pytest.raises(CheckpointError, match=f"corrupt checkpoint file {target}"):
        train(CONFIG, run_dir, train_data=train_data, test_data=test_data, devices=one_device())


# ---------------------------------------------------------------------------------------------
# Finding 2: NaN logits must not give numbers


def nan_model(images):
    return jnp.full((images.shape[0], 10), jnp.nan)


NAN_ATTACKS = [
    (attacks.pgd, PGDConfig(eps=4 / 255, steps=2)),
    (attacks.apgd, APGDConfig(eps=4 / 255, steps=2, loss="ce")),
    (attacks.cw_l2, CWConfig(binary_search_steps=1, max_iterations=2)),
    (attacks.square, SquareConfig(eps=4 / 255, queries=2)),
]


@pytest.mark.parametrize(("attack", "config"), NAN_ATTACKS, ids=["pgd", "apgd", "cw_l2", "square"])
def test_attacks_refuse_nan_logits(attack, config):
    images = jnp.full((4, 8, 8, 3), 0.5)
    with pytest.raises(ValueError, match="NaN or infinite logits on the clean images"):
        attack(nan_model, images, jnp.arange(4), jax.random.key(0), config)
    outcome("NaN logits in an attack", recovered=False)


def test_nan_at_adversarial_points_is_invalid_never_fooled():
    # finite on the clean images (all 0.5), NaN beyond 0.52: the argmax of NaN logits is class
    # 0, so before the guards every example with a label other than 0 counted as fooled
    w = jax.random.normal(jax.random.key(0), (8 * 8 * 3, 10))

    def model_fn(x):
        x = x.reshape(len(x), -1)
        return jnp.where(jnp.max(x, axis=1, keepdims=True) > 0.52, jnp.nan, (x - 0.5) @ w)

    def step_up(model, x0, label, target, key, config):  # an attack that lands on the NaNs
        adv = x0 + 0.03
        return adv, model(adv), model(x0), jnp.int32(1), {}

    attack = functools.partial(itf.run_attack, step_up)
    images = np.full((8, 8, 8, 3), 0.5, np.float32)
    labels = np.arange(8)
    config = PGDConfig(eps=0.05)
    result = attack(model_fn, images, labels, jax.random.key(1), config)
    assert not np.any(result.success)
    s = attacks.summarize_result(result, labels)
    assert (s.invalid, s.fooled, s.robust, s.clean_correct, s.asr) == (8, 0, 0, 0, None)
    rec = attacks.attack_dataset(
        attack, model_fn, images, labels, jax.random.key(1), config, batch_size=8
    )
    assert not rec["valid"].any()
    assert attacks.summarize_records(rec) == s
    with pytest.raises(attacks.AttackCheckError, match="disagree"):  # a NaN claimed as success
        attacks.recheck(model_fn, images, images + 0.03, labels, np.ones(8, bool))
    outcome("NaN logits at adversarial points (counted invalid)", recovered=False)


def nan_model_of(config: ViTConfig) -> ViT:
    """A ViT whose parameters are all NaN (nothing to initialise, nothing to compile)."""
    vit = nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0)))
    nan = jax.tree.map(lambda p: jnp.full(p.shape, jnp.nan, p.dtype), nnx.state(vit, nnx.Param))
    nnx.update(vit, nan)
    return vit


def test_evaluate_refuses_a_model_with_nan_weights():
    vit = nan_model_of(CONFIG.model)
    _, test_data = data()
    with pytest.raises(FloatingPointError, match="NaN or infinite on 16 of 16 examples"):
        evaluate(vit, test_data, batch_size=16, mesh=sharding.data_mesh(one_device()))
    outcome("NaN weights in evaluate", recovered=False)


def test_analyses_give_no_bound_next_to_nan_and_refuse_to_summarise():
    nan_svd = exact_local_lipschitz(lambda x: x * jnp.nan, jnp.ones(3), method="svd")
    assert math.isnan(nan_svd.value) and math.isnan(nan_svd.bound)  # not "bound 0.0"
    finite = exact_local_lipschitz(lambda x: 2 * x, jnp.ones(3), method="svd")
    assert float(finite.value) == pytest.approx(2.0) and float(finite.bound) == 0.0
    model = nan_model_of(preset("tiny", depth=1))
    with pytest.raises(FloatingPointError, match="layer 0: sigma is NaN or infinite"):
        layer_summary(
            model,
            np.full((1, 8, 8, 3), 0.5, np.float32),
            key=jax.random.key(0),
            batch_size=4,
            max_iters=2,
        )
    outcome("NaN weights in an analysis", recovered=False)


# ---------------------------------------------------------------------------------------------
# Finding 3: config validation names the field


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ViTConfig(lambda_init=math.nan), "lambda_init"),
        (lambda: ViTConfig(lambda_init=1.5), "lambda_init"),
        (lambda: ViTConfig(lambda_init=-0.1), "lambda_init"),
        (lambda: ViTConfig(layer_norm_eps=math.nan), "layer_norm_eps"),
        (lambda: ViTConfig(std=(0.2, math.nan, 0.2)), r"std\[1\]"),
        (lambda: ViTConfig(mlp_ratio=math.inf), "mlp_ratio"),
        (lambda: PGDConfig(eps=0.1, steps=0), "steps"),
        (lambda: PGDConfig(eps=math.nan), "eps"),
        (lambda: PGDConfig(eps=0.1, random_start=1), "random_start"),
        (lambda: CWConfig(confidence=-1), "confidence"),
        (lambda: APGDConfig(eps=0.1, rho=math.nan), "rho"),
        (lambda: APGDConfig(eps=0.1, momentum=0), "momentum"),
        (lambda: SquareConfig(eps=0.1, p_init=1.5), "p_init"),
        (lambda: attacks.FABConfig(eps=0.1, beta=0), "beta"),
        (lambda: attacks.AutoAttackConfig(eps=0.1, steps=0), "steps"),
        (lambda: TrainConfig(weight_decay=math.nan), "weight_decay"),
        (lambda: TrainConfig(learning_rate=math.inf), "learning_rate"),
        (lambda: TrainConfig(seed=-1), "seed"),
        (lambda: TrainConfig(epochs=True), "epochs"),
        (lambda: CLIPConfig(text_ln_eps=math.nan), "text_ln_eps"),
        (lambda: CLIPConfig(lambda_init=1.0), "lambda_init"),
    ],
)
def test_every_config_field_is_range_checked_by_name(make, field):
    with pytest.raises(ValueError, match=rf"^{field} must"):
        make()
    outcome("out-of-range config field", recovered=False)


# ---------------------------------------------------------------------------------------------
# Finding 5: leftovers and unclear errors


def test_stale_orbax_temporary_folders_are_swept_at_start(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    stale = run_dir / "checkpoints" / "10.orbax-checkpoint-tmp-1234567"
    (stale / "params").mkdir(parents=True)
    (stale / "params" / "half").write_bytes(b"\0" * 100)
    kept = sorted(int(p.name) for p in (reference[0] / "checkpoints").iterdir())
    with TrainCheckpoints(run_dir) as ckpts:
        assert ckpts.steps() == kept
    assert not stale.exists()
    outcome("stale temporary checkpoint folder", recovered=True)


def test_corrupt_checkpoint_metrics_name_the_file(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    metrics = run_dir / "checkpoints" / "8" / "metrics" / "metrics"
    metrics.write_text(metrics.read_text()[:-3])
    with pytest.raises(CheckpointError, match=f"corrupt checkpoint file {metrics}"):
        load_model(run_dir)  # reads every step's metrics to find the best one


def test_attack_dataset_takes_a_plain_function():
    w = jax.random.normal(jax.random.key(0), (8 * 8 * 3, 10))
    images = np.full((4, 8, 8, 3), 0.5, np.float32)
    labels = np.arange(4)
    rec = attacks.attack_dataset(
        attacks.pgd,
        functools.partial(linear, w),
        images,
        labels,
        jax.random.key(0),
        PGDConfig(eps=0.1, steps=2),
        batch_size=4,
    )
    assert rec["valid"].all() and len(rec["adv_pred"]) == 4


# ---------------------------------------------------------------------------------------------
# Hostile dataset files


def test_malicious_pickle_in_a_cifar_batch_does_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    files, _ = cifar_files("cifar10")
    files["data_batch_3"] = pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2)
    folder = write_folder(tmp_path, "cifar-10-batches-py", files)
    with pytest.raises(DatasetFormatError, match="data_batch_3.*refusing to load"):
        cifar.read_cifar(folder, "cifar10", "train")
    assert not marker.exists()
    outcome("malicious pickle in a CIFAR batch", recovered=False)


def test_truncated_cifar_batches_raise_naming_the_file(tmp_path):
    files, _ = cifar_files("cifar10")
    rng = random.Random(4)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        raw = files[name]
        cut = dict(files, **{name: raw[: rng.randrange(1, len(raw))]})
        folder = write_folder(tmp_path / name, "cifar-10-batches-py", cut)
        split = "test" if name == "test_batch" else "train"
        with pytest.raises(DatasetFormatError, match=name):
            cifar.read_cifar(folder, "cifar10", split)
        outcome("truncated CIFAR batch", recovered=False)


@pytest.mark.parametrize("member", ["cifar-10-batches-py/../../escaped", "/tmp/escaped-abs"])
@pytest.mark.parametrize("form", ["tar", "zip"])
def test_archive_members_cannot_escape_the_target_folder(tmp_path, member, form):
    archive = tmp_path / f"evil.{form}"
    if form == "tar":
        with tarfile.open(archive, "w:gz") as t:
            for name, payload in (("cifar-10-batches-py/test_batch", b"ok"), (member, b"evil")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
    else:
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("cifar-10-batches-py/test_batch", b"ok")
            z.writestr(member, b"evil")
    target = tmp_path / "data" / "inner"
    target.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(DatasetFormatError, match=f"{archive}"):
        extract(archive, target, "cifar-10-batches-py")
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not pathlib.Path("/tmp/escaped-abs").exists()
    outcome("archive member outside the target folder", recovered=False)

"""The ``diffjax`` command line: one entry point, a subcommand per task.

    diffjax run main                                       # the main job (embedded default)
    diffjax run asr_table --config=asr_table:cpu --config.seeds='(0,)' --workdir out
    diffjax train --config=train:cpu --config.train.model.attention=diff --workdir runs/dvit
    diffjax attack --config=attack:autoattack --config.checkpoint=runs/dvit --workdir out/aa
    diffjax analyse --config=analyse --config.checkpoint=runs/dvit --workdir out/analysis
    diffjax figures --workdir .
    diffjax convert-clip checkpoint_best.pt models/diffclip_cc3m
    diffjax import-vit model.safetensors models/vit --num-heads 12
    diffjax import-lm checkpoints/llama models/llama

``--config`` takes a file of ``experiments/configs`` by name (``asr_table:cpu``) or any config
file path (``path/to/file.py:ARG``); ``--config.FIELD=VALUE`` overrides one field. ``diffjax
SUBCOMMAND --help`` lists every option and every config field with its default.

Arguments are parsed before anything imports JAX: ``diffjax --help`` and a mistyped subcommand
answer at once; a subcommand's own help and config are loaded only for that subcommand.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import pathlib
import sys

EXPERIMENTS = ("main", "asr_table", "alignment", "lipschitz", "depth", "lambda_sweep",
               "lambda_training", "clip_compare", "language", "certified")  # fmt: skip
# Subcommands that take a config, with the config (name:arg) they use without --config.
CONFIGURED = {"train": "train:cpu", "attack": "attack:pgd", "analyse": "analyse"}


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "diffjax" / "jax"


def _common(p: argparse.ArgumentParser, workdir_help: str) -> None:
    p.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("."), help=workdir_help)
    p.add_argument("--data-dir", default=None,
                   help="dataset folder (default: $DIFFJAX_DATA_DIR, else ~/.cache/diffjax)")
    p.add_argument("--offline", action="store_true",
                   help="never download a missing dataset; say which file to put where")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--compilation-cache", type=pathlib.Path, default=_cache_dir(),
                   help="JAX persistent compilation cache: a second process with the same "
                   "shapes does not recompile")
    p.add_argument("--no-compilation-cache", action="store_true",
                   help="compile from scratch, write no cache")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host runs)")


def _config_epilog(default_spec: str) -> str:
    from diffjax.experiments import configs

    try:
        fields = configs.flat(configs.load(default_spec))
    except configs.ConfigError as e:
        return f"(config fields unavailable: {e})"
    lines = [f"config fields of {default_spec} (override with --config.FIELD=VALUE):"]
    lines += [f"  --config.{k}={v!r}" for k, v in fields]
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose config-field listing (``config_spec``) is built only when its
    help is printed: listing the fields loads the config file (ml_collections, no JAX)."""

    config_spec: str | None = None

    def format_help(self) -> str:
        if self.config_spec is not None:
            self.epilog = _config_epilog(self.config_spec)
        return super().format_help()


def _with_config(p: Parser, default_spec: str) -> None:
    p.add_argument("--config", default=default_spec,
                   help="config: a name in experiments/configs or a .py path, ':ARG' for its "
                   "preset")
    p.config_spec = default_spec


# Subcommands whose arguments their own module adds (imported only when the subcommand runs).
MODULES = {"convert-clip": "convert_clip", "import-vit": "import_vit", "import-lm": "import_lm",
           "make-sample": "make_embedded_sample"}  # fmt: skip


def build_parser(command: str | None = None) -> Parser:
    """The whole command line; only ``command``'s module-defined arguments are added (the
    other subcommands of :data:`MODULES` get their description alone)."""
    fmt = argparse.ArgumentDefaultsHelpFormatter

    class Formatter(fmt, argparse.RawDescriptionHelpFormatter):
        pass

    parser = Parser(prog="diffjax", description=__doc__, formatter_class=Formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    run = sub.add_parser("run", help="run one experiment (the main job or a paper result)",
                         description="Run one experiment: outputs under --workdir in runs/, "
                         "results/<experiment>/<preset>/ and figures/.", formatter_class=Formatter)
    experiments = run.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name in EXPERIMENTS:
        e = experiments.add_parser(name, help=_first_line(name), formatter_class=Formatter,
                                   description=_doc(name))  # fmt: skip
        _with_config(e, name)
        _common(e, "root of runs/, results/ and figures/")

    helps = {"train": ("train one ViT or DiffViT", "the run directory"),
             "attack": ("attack a saved model", "where attack.json goes"),
             "analyse": ("exact sensitivity analysis of a saved model",
                         "where the analysis files go")}  # fmt: skip
    for name, spec in CONFIGURED.items():
        s = sub.add_parser(name, help=helps[name][0], description=_doc(name),
                           formatter_class=Formatter)  # fmt: skip
        _with_config(s, spec)
        _common(s, helps[name][1])
        if name == "attack":
            s.add_argument("--resume", action="store_true",
                           help="continue a partial attack.json of the same settings")
            s.add_argument("--overwrite", action="store_true", help="replace attack.json")

    f = sub.add_parser("figures", help="redraw figures from saved results (no model is run)",
                       formatter_class=Formatter)  # fmt: skip
    f.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("."),
                   help="root of results/ (read) and figures/ (written)")
    f.add_argument("--experiment", choices=EXPERIMENTS, help="only this experiment")
    f.add_argument("--preset", help="only this preset")

    helps = {"convert-clip": "convert a released CLIP/DiffCLIP checkpoint",
             "import-vit": "import a timm / Hugging Face ViT checkpoint",
             "import-lm": "import a Hugging Face LLaMA-style language model",
             "make-sample": "build the embedded CIFAR-10 sample (developers)"}  # fmt: skip
    for name, module in MODULES.items():
        s = sub.add_parser(name, help=helps[name], description=_doc(module),
                           formatter_class=Formatter)  # fmt: skip
        if name == command:
            _module(module).add_arguments(s)
    return parser


def _module(name: str):
    return importlib.import_module(f"diffjax.experiments.{name}")


def _doc(name: str) -> str:
    """The docstring of ``experiments/<name>.py``, read from its source (not imported)."""
    path = importlib.util.find_spec(f"diffjax.experiments.{name}").origin
    return ast.get_docstring(ast.parse(pathlib.Path(path).read_text())) or ""


def _first_line(name: str) -> str:
    return _doc(name).strip().splitlines()[0]


def _setup_jax(args: argparse.Namespace) -> None:
    import jax

    from diffjax import sharding

    sharding.initialize_distributed(args.distributed)
    if not args.no_compilation_cache:
        jax.config.update("jax_compilation_cache_dir", str(args.compilation_cache))
        # Attacks and analyses compile many small pieces: cache them all, not only slow ones.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _dispatch(args: argparse.Namespace, config):
    from diffjax.experiments import common

    if args.command == "figures":
        from diffjax.experiments import figures

        written = figures.make_figures(args.workdir / "results", args.workdir / "figures",
                                       experiment=args.experiment, preset=args.preset)  # fmt: skip
        print("\n".join(written) if written else f"no results under {args.workdir / 'results'}")
        return written
    if args.command in MODULES:
        return _module(MODULES[args.command]).run(args)
    want = args.experiment if args.command == "run" else args.command
    _setup_jax(args)
    ctx = common.Context(workdir=args.workdir, data_dir=args.data_dir, offline=args.offline,
                         quiet=args.quiet)  # fmt: skip
    from diffjax.locking import exclusive

    # one process writes a workdir: a second one stops here, naming the first
    with exclusive(ctx.workdir, f"workdir of diffjax {args.command}"):
        if args.command == "attack":
            return _module("attack").run(config, ctx, resume=args.resume,
                                          overwrite=args.overwrite)  # fmt: skip
        result = _module(want).run(config, ctx)
        if args.command == "run":
            from diffjax.experiments import figures

            for path in figures.make_figures(ctx.workdir / "results", ctx.figures,
                                             experiment=want, preset=config.preset):  # fmt: skip
                print(f"figure: {path}")
        return result


def parse(argv: list[str]):
    """``(args, config)`` of ``argv``: the arguments parsed and the config (``None`` for the
    subcommands without one) loaded with its overrides and checked against the subcommand.
    Everything that needs no data, model or computation is checked here; the subcommand's
    own work (and JAX) comes after.

    Raises:
      SystemExit: status 2 with argparse's message on bad arguments (0 after ``--help``).
      configs.ConfigError: naming the bad config, field or value.
    """
    argv = list(argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    plain = [a for a in argv if not a.startswith("--config.")]
    parser = build_parser(plain[0] if plain else None)
    args = parser.parse_args(plain)
    from diffjax.experiments import configs  # ml_collections: not needed for --help

    if not hasattr(args, "config"):
        if overrides:
            parser.error(f"diffjax {args.command} takes no config overrides: {overrides[0]}")
        return args, None
    config = configs.load(args.config, overrides)
    from diffjax.experiments.configs import recipes

    recipes.check(config)
    from diffjax.experiments.configs import recipes

    recipes.check(config)
    want = args.experiment if args.command == "run" else args.command
    if config.get("experiment") != want:
        raise configs.ConfigError(
            f"{args.config} is a config of {config.get('experiment')!r}, not of {want!r}")
    return args, config


def run(argv: list[str]):
    """Parse ``argv``, run the subcommand, return its result (results dict, summary, paths).

    Bad configs, data, checkpoints and settings exit with status 2 and one line naming the
    cause, not a traceback.
    """
    argv = list(argv)
    try:
        args, config = parse(argv)
        return _dispatch(args, config)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        _fail(argv, e)
    except Exception as e:
        # The library's own errors; imported here, after the work began (they import JAX).
        from diffjax.checkpoint import CheckpointError
        from diffjax.experiments.zoo import DataError
        from diffjax.locking import LockedError

        if not isinstance(e, DataError | CheckpointError | LockedError):
            raise
        _fail(argv, e)


def _fail(argv: list[str], error: Exception):
    print(f"diffjax {argv[0]}: error: {error}", file=sys.stderr)
    raise SystemExit(2) from None


def main() -> int:
    """The console script: ``diffjax SUBCOMMAND …``.

    Exit status 0; 2 on a bad input or a failed save; 130 / 143 on SIGINT / SIGTERM, once the
    checkpoint being saved is sealed or abandoned. A failure ends with one line on stderr.
    """
    from diffjax import stopping

    stopping.install()
    try:
        run(sys.argv[1:])
    except stopping.Stopped as e:
        message = (f"diffjax: {e}; what was sealed is kept: run the same command again to "
                   "resume")  # fmt: skip
        _exit_quietly(e.exit_code, message)
    except SystemExit as e:
        if e.code in (None, 0):
            raise
        code, message = (e.code, None) if isinstance(e.code, int) else (1, str(e.code))
        _exit_quietly(code, message)
    return 0


def _exit_quietly(code: int, message: str | None) -> None:
    """Exit with ``code`` after printing ``message``, with nothing after it: the background
    threads of orbax and tensorstore report a failed or interrupted save again, in hundreds of
    lines of tracebacks, while the interpreter shuts down."""
    if message:
        print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stderr.fileno())
    sys.stderr = open(os.devnull, "w")  # open until the process ends
    raise SystemExit(code)


if __name__ == "__main__":
    sys.exit(main())

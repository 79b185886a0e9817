"""The ``oialr`` command: ``train`` one run, ``study run|list|show|best|export|delete``.

Errors a user can cause print one line and exit 2; an interrupt exits 130 after the running
trial or run has been recorded, so running the same command again continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomllib

try:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
except ImportError:  # the library was installed without its command line's extra
    print(
        "oialr's command line needs the studio extra: pip install 'oialr[studio]'", file=sys.stderr
    )
    raise SystemExit(2) from None

from .errors import ConfigError, Interrupted, OIALRError
from .options import add_flags
from .vocab import OBJECTIVES_ATTR, TrialAttr, mask_url, resolve_storage, sqlite_file

_logger = logging.getLogger("oialr")
console = Console(stderr=True)
out = Console()


# -- train ---------------------------------------------------------------------------------------
def _run_config_from_args(args: argparse.Namespace):
    """The RunConfig of ``--config FILE`` (if given) with the flags over it."""
    from .options import flag_for, values_from_flags
    from .run_config import RunConfig

    base: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            base = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"--config {path}: no such file") from None
        except IsADirectoryError:
            raise ConfigError(f"--config {path}: a folder; give a TOML file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--config {path}: not a text file; give a TOML file") from None
        except OSError as err:
            raise ConfigError(f"--config {path}: cannot be read ({err.strerror})") from None
        except (tomllib.TOMLDecodeError, RecursionError) as err:
            raise ConfigError(f"--config {path}: not valid TOML ({err})") from None
    try:
        return RunConfig.build(**values_from_flags(args, base))
    except ConfigError as err:  # name the flag the user typed, not the field behind it
        flag = flag_for(err.field)
        if flag is None:
            raise
        raise ConfigError(f"{flag}: {str(err).split(': ', 1)[-1]}", field=err.field) from None


class ProgressRecorder:
    """A rich progress bar over epochs: loss while it trains, accuracy and rank after each."""

    run_id = None

    def __init__(self):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} epochs"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = None

    def start(self, config):
        self.progress.start()
        self.task = self.progress.add_task(config.run_name, total=config.epochs, status="")

    def step(self, step, loss, lr, step_time):
        self.progress.update(self.task, status=f"step {step} · loss {loss:.4f}")

    def epoch(self, m):
        rank = f" · mean rank {m['mean_rank']:.1f}" if m.get("mean_rank") else ""
        status = (
            f"loss {m['train_loss']:.4f} · val acc {m['val_acc']:.4f}{rank}"
            f" · trainable {m['trainable_fraction']:.3f}"
        )
        self.progress.update(self.task, completed=m["epoch"], status=status)

    def layers(self, records):
        pass

    def finish(self, status, result, error):
        self.progress.stop()


def cmd_train(args: argparse.Namespace) -> int:
    from .metrics_store import MetricsStore
    from .recorders import Recorders, StoreRecorder
    from .storage_checks import check_writable
    from .train import fit, preflight

    cfg = _run_config_from_args(args)
    if cfg.checkpoint_dir is None:
        cfg = cfg.model_copy(update={"checkpoint_dir": str(Path("checkpoints") / cfg.run_name)})
    preflight(cfg, resume=args.resume)  # a bad model, device, data: here, before the store
    store = None
    if not args.no_store:
        url = resolve_storage(args.storage)
        check_writable(url, args.allow_foreign_database)
        store = MetricsStore(url)
    recorders = Recorders(
        StoreRecorder(store) if store else None,
        None if args.quiet or args.json else ProgressRecorder(),
    )
    try:
        result = fit(cfg, recorders, resume=args.resume)
    finally:
        if store:
            store.close()
    if args.json:
        out.print_json(json.dumps(result.to_dict()))
        return 0
    table = Table(title=f"{cfg.run_name} ({cfg.mode})", show_header=False)
    for key, value in result.to_dict().items():
        if key == "ranks":
            value = ", ".join(f"{k}:{v}" for k, v in value.items()) or "-"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        table.add_row(key.replace("_", " "), str(value))
    out.print(table)
    return 0


# -- study ---------------------------------------------------------------------------------------
def _study_progress(study, n_trials: int, quiet: bool):
    """A progress bar over the study's finished trials; returns (tick, stop)."""
    from .study import progress_counts

    if quiet:
        return (lambda *_: None), (lambda: None)
    progress = Progress(
        TextColumn(f"[bold]{study.study_name}"), BarColumn(), TextColumn("{task.description}"),
        TimeElapsedColumn(), console=console,
    )  # fmt: skip
    task = progress.add_task("", total=n_trials)
    progress.start()

    started, before = time.monotonic(), None

    def tick(*_):
        nonlocal before
        c = progress_counts(study)
        done = c["complete"] + c["pruned"]
        before = done if before is None else before
        best = "-" if c["best_val_acc"] is None else f"{c['best_val_acc']:.4f}"
        hours = (time.monotonic() - started) / 3600
        rate = f" · {(done - before) / hours:.0f} trials/h" if done > before else ""
        progress.update(
            task,
            completed=done,
            description=f"done {c['complete']} · running {c['running']} · pruned {c['pruned']}"
            f" · failed {c['fail']} · best val acc {best}{rate}",
        )

    return tick, progress.stop


def _check_run_args(args: argparse.Namespace) -> None:
    """What argparse cannot say about `study run`'s numbers: one line each, before any work."""
    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError(
            f"--n-trials {args.n_trials}: give at least 1 (or leave it out for the spec's budget)"
        )
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1")
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError(f"--timeout {args.timeout}: give a positive number of seconds")
    if args.heartbeat < 1:
        raise ConfigError(f"--heartbeat {args.heartbeat}: give at least 1 second")
    if args.gpus is not None and not all(g.strip().isdigit() for g in args.gpus.split(",")):
        raise ConfigError(f"--gpus {args.gpus!r}: give GPU ids, e.g. --gpus 0 or --gpus 0,1")


def cmd_study_run(args: argparse.Namespace) -> int:
    from .spec import load_spec
    from .storage_checks import check_writable
    from .study import create_study, default_warmup_cache, open_storage, run_worker

    _check_run_args(args)
    spec = load_spec(args.spec, args.set or [])  # a bad spec stops here, before any write
    if spec.objective.train is None:  # oialr's loop: its model and data must work, too
        from .train import preflight

        try:
            preflight(spec.run_config({}, "oialr"))
        except ConfigError as err:
            raise ConfigError(f"{args.spec}: {err}", field=err.field) from None
    url = resolve_storage(args.storage)
    name = args.study_name or spec.name
    n_trials = args.n_trials or spec.budget.n_trials
    plan = _worker_plan(args, spec)
    check_writable(url, args.allow_foreign_database)
    study = create_study(spec, open_storage(url), name)  # a bad URL stops here, one line
    cache = None if args.no_warmup_cache else Path(args.warmup_cache or default_warmup_cache(url))
    tick, stop = _study_progress(study, n_trials, args.quiet)
    try:
        if len(plan) == 1 and plan[0] is None:
            tick()
            from .warmup import WarmupCache

            warmup = WarmupCache(cache, until=spec.latest_delay()) if cache else None
            run_worker(spec, url, study_name=name, n_trials=n_trials, timeout=args.timeout,
                       heartbeat=args.heartbeat, callbacks=[tick], warmup=warmup)  # fmt: skip
            code = 0
        else:
            code = _run_worker_processes(args, url, name, n_trials, plan, cache, tick)
    finally:
        stop()
    if not args.quiet:
        _print_trials(study, best_only=False, limit=15)
    return code


def _worker_plan(args: argparse.Namespace, spec) -> list[str | None]:
    """The GPU of each worker to start (None: this process, on the CPU or the default GPU)."""
    if args.gpus is None:
        return [None] * (args.workers or 1)
    from .packing import free_gpu_bytes, plan_workers, trial_bytes

    free = free_gpu_bytes()
    if not free:
        raise ConfigError(f"--gpus {args.gpus}: this machine has no CUDA GPU; leave --gpus out")
    need = trial_bytes(_parameters(spec), 0)
    return plan_workers([g.strip() for g in args.gpus.split(",")], args.workers,
                        free_bytes=free, need_bytes=need)  # fmt: skip


def _parameters(spec) -> int:
    from .models import build_model
    from .train import load_data

    cfg = spec.run_config({}, "oialr")
    data = load_data(cfg)
    model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
    return sum(p.numel() for p in model.parameters())


def _run_worker_processes(args, url, name, n_trials, plan, cache, tick) -> int:
    from .study import run_workers, worker_command

    cmd = worker_command(args.spec, url, name, n_trials, args.timeout, args.heartbeat, cache)
    cmd += [f"--set={item}" for item in args.set or []]
    cmd += ["--allow-foreign-database"] if args.allow_foreign_database else []
    envs = []
    for gpu in plan:
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        else:  # share the cores: K processes × all threads each thrash a CPU
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(plan))))
        envs.append(env)
    return run_workers([cmd] * len(plan), envs, tick)


def _trial_rows(study, best_only: bool):
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if len(study.directions) > 1:
        pareto = {t.number for t in study.best_trials}
    else:
        done = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE and t.user_attrs.get(TrialAttr.CONSTRAINT, 0) <= 0
        ]
        sign = 1 if study.direction.name == "MAXIMIZE" else -1
        pareto = {max(done, key=lambda t: sign * t.value).number} if done else set()
    rows = [t for t in trials if t.number in pareto] if best_only else trials
    return rows, pareto


_RESULT_KEYS = (
    TrialAttr.VAL_ACC, TrialAttr.TEST_ACC, TrialAttr.TRAINABLE_FRACTION, TrialAttr.STORED_FRACTION,
)  # fmt: skip


def _print_trials(study, best_only: bool, limit: int | None = None, commands: bool = False) -> None:
    rows, pareto = _trial_rows(study, best_only)
    table = Table(title=f"study {study.study_name}: {len(study.trials)} trials"
                  + (" (Pareto set)" if best_only else ""))  # fmt: skip
    for col in (
        "#",
        "state",
        "mode",
        "parameters",
        "val acc",
        "test acc",
        "trainable",
        "stored",
        "front",
    ):
        table.add_column(col)
    shown = rows if limit is None else rows[-limit:]
    for t in shown:
        a = t.user_attrs
        rank = a.get(TrialAttr.RANK_FRACTION)
        mode = a.get(TrialAttr.MODE, "oialr") + (f" {rank:g}" if rank is not None else "")
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        table.add_row(
            str(t.number), t.state.name, mode, params or "-",
            *(_fmt(a.get(k)) for k in _RESULT_KEYS),
            "★" if t.number in pareto else "",
        )  # fmt: skip
    out.print(table)
    if commands:
        for t in shown:
            out.print(f"[bold]trial {t.number}[/bold]: {t.user_attrs.get(TrialAttr.COMMAND, '(no command recorded)')}",
                      soft_wrap=True, highlight=False)  # fmt: skip


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _existing_storage(url: str):
    """Read commands never create a database, nor tables in one."""
    from .storage_checks import check_readable
    from .study import open_storage

    check_readable(url)
    return open_storage(url, create=False)


def cmd_study_list(args: argparse.Namespace) -> int:
    import optuna

    url = resolve_storage(args.storage)
    summaries = optuna.get_all_study_summaries(_existing_storage(url), include_best_trial=False)
    if not summaries:
        out.print(f"no studies in {mask_url(url)}")
        return 0
    table = Table(title=f"studies in {mask_url(url)}")
    for col in ("name", "trials", "objectives", "started"):
        table.add_column(col)
    for s in summaries:
        objectives = s.user_attrs.get(OBJECTIVES_ATTR) or [d.name.lower() for d in s.directions]
        started = s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else "-"
        table.add_row(s.study_name, str(s.n_trials), ", ".join(objectives), started)
    out.print(table)
    return 0


def cmd_study_show(args: argparse.Namespace) -> int:
    from .study import load_study

    study = load_study(args.name, _existing_storage(resolve_storage(args.storage)))
    _print_trials(study, best_only=False)
    return 0


def cmd_study_best(args: argparse.Namespace) -> int:
    from .study import load_study

    study = load_study(args.name, _existing_storage(resolve_storage(args.storage)))
    _print_trials(study, best_only=True, commands=True)
    return 0


def _export_target(output: str, url: str) -> Path:
    """Where an export may go: never the storage, a folder or any database; in a folder that
    exists."""
    target = Path(output).expanduser()
    storage = sqlite_file(url)
    if storage is not None and target.exists() and target.resolve() == storage.resolve():
        raise ConfigError(f"--output {output} is the storage itself; give another file name")
    if target.is_dir() or output.endswith(os.sep):
        raise ConfigError(f"--output {output} is a folder; give a file name in it")
    if not target.parent.is_dir():
        raise ConfigError(f"--output {output}: no folder {target.parent}; create it first")
    if target.is_file():
        with target.open("rb") as f:
            if f.read(16) == b"SQLite format 3\x00":
                raise ConfigError(f"--output {output} is a database; exports never overwrite one")
    return target


def cmd_study_export(args: argparse.Namespace) -> int:
    from .study import load_study

    url = resolve_storage(args.storage)
    target = None if args.output in (None, "-") else _export_target(args.output, url)
    study = load_study(args.name, _existing_storage(url))
    frame = study.trials_dataframe(attrs=("number", "state", "values", "params", "user_attrs",
                                          "datetime_start", "datetime_complete"))  # fmt: skip
    text = (
        frame.to_csv(index=False)
        if args.format == "csv"
        else frame.to_json(orient="records", indent=1, date_format="iso")
    )
    if target is None:
        sys.stdout.write(text)
        return 0
    try:  # a temporary file beside it, renamed over it: never a half-written export
        with tempfile.NamedTemporaryFile("w", dir=target.parent, prefix=f".{target.name}.",
                                         delete=False) as tmp:  # fmt: skip
            tmp.write(text)
        os.replace(tmp.name, target)
    except OSError as err:
        if "tmp" in locals() and os.path.exists(tmp.name):
            os.remove(tmp.name)
        raise ConfigError(f"--output {args.output}: cannot write ({err.strerror})") from None
    console.print(f"wrote {len(frame)} trials to {target}")
    return 0


def cmd_study_delete(args: argparse.Namespace) -> int:
    import optuna

    from .metrics_store import MetricsStore
    from .study import load_study

    url = resolve_storage(args.storage)
    storage = _existing_storage(url)
    study = load_study(args.name, storage)
    if not args.yes:
        try:
            answer = input(
                f"delete study {args.name!r} ({len(study.trials)} trials) and its metrics? [y/N] "
            )
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            raise ConfigError(f"study {args.name!r} kept; pass --yes to delete without asking")
    with MetricsStore(url) as store:
        runs = store.delete_study_runs(args.name)
    optuna.delete_study(study_name=args.name, storage=storage)
    console.print(f"deleted study {args.name!r} and {runs} metrics runs")
    return 0


# -- parser --------------------------------------------------------------------------------------
FOREIGN_HELP = "write into a SQLite file that holds another application's tables"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oialr", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model", description="Train one model.")
    add_flags(train)
    train.add_argument("--config", help="a TOML file of run options (flags override it)")
    train.add_argument(
        "--storage", help="metrics storage URL (default $OIALR_STORAGE, then sqlite:///oialr.db)"
    )
    train.add_argument("--no-store", action="store_true", help="record nothing")
    train.add_argument("--allow-foreign-database", action="store_true", help=FOREIGN_HELP)
    train.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    study = commands.add_parser("study", help="Optuna studies over OIALR's hyperparameters")
    sub = study.add_subparsers(dest="study_command", required=True)
    storage_help = "storage URL (default $OIALR_STORAGE, then sqlite:///oialr.db)"

    run = sub.add_parser("run", help="run (or continue) a study from a TOML spec")
    run.add_argument("spec", help="studies/<name>.toml")
    run.add_argument("--storage", help=storage_help)
    run.add_argument("--study-name", help="default: the spec's name")
    run.add_argument("--n-trials", type=int, help="trials in all (default: the spec's budget)")
    run.add_argument("--timeout", type=float, help="seconds per worker")
    run.add_argument(
        "--workers", type=int, help="worker processes here (default 1; with --gpus, see there)"
    )
    run.add_argument(
        "--gpus",
        help="comma-separated GPU ids; workers go round-robin over them (default: as many per "
        "GPU as its free memory holds, at most 8)",
    )
    run.add_argument(
        "--warmup-cache",
        help="share the dense warm-up through snapshots here (default: beside the SQLite file, "
        "else ~/.cache/oialr/warmup)",
    )
    run.add_argument(
        "--no-warmup-cache", action="store_true", help="every trial trains from step 0"
    )
    run.add_argument("--heartbeat", type=int, default=30, help="seconds between trial heartbeats")
    run.add_argument("--allow-foreign-database", action="store_true", help=FOREIGN_HELP)
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a spec field, e.g. --set run.epochs=3 (repeatable)")  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    run.set_defaults(func=cmd_study_run)

    for name, func, help_text in (
        ("list", cmd_study_list, "the studies in a storage"),
        ("show", cmd_study_show, "a study's trials"),
        ("best", cmd_study_best, "the Pareto trials and the commands that reproduce them"),
        ("export", cmd_study_export, "a study's trials as CSV or JSON"),
        ("delete", cmd_study_delete, "delete a study and its metrics"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name != "list":
            p.add_argument("name", help="study name")
        p.add_argument("--storage", help=storage_help)
        if name == "export":
            p.add_argument("--format", choices=("csv", "json"), default="csv")
            p.add_argument("--output", help="file to write (default: standard output)")
        if name == "delete":
            p.add_argument("--yes", action="store_true", help="do not ask")
        p.set_defaults(func=func)
    return parser


def _raise_interrupted(signum, _frame):
    raise Interrupted(f"stopped by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    if args.command == "study" and not args.verbose:
        import warnings

        import optuna  # failed trials get one line of ours (study.py), not Optuna's traceback

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for sig in (signal.SIGINT, signal.SIGTERM):  # both end the run cleanly, recorded
        signal.signal(sig, _raise_interrupted)
    try:
        return args.func(args)
    except OIALRError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    except (Interrupted, KeyboardInterrupt) as err:
        console.print(f"interrupted ({err or 'Ctrl-C'}): the running trial or run was recorded; "
                      "run the same command again to continue", highlight=False, soft_wrap=True)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``exmodel`` command line: a thin layer over the Python API.

Errors caused by input print one line (``error: ...``) and exit with status 2; ``--debug`` shows the
traceback instead. Usage errors (unknown option or command, missing argument, no command at all)
print the usage line of the command concerned and one ``error: ...`` line, exit status 2. Ctrl-C
exits with 130 and says how to resume. ``--quiet``/``-q`` and ``--debug`` may also follow the
sub-command (see :func:`_split_global_flags`). ``python -m exmodel`` is the same as ``exmodel``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from exmodel import __version__
from exmodel.errors import ExmodelError
from exmodel.text import SafeConsole, printable

PROG = "exmodel"
app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="Continual learning from trained models (ex-model continual learning).")
_state = {"debug": False, "quiet": False}
out_console = SafeConsole()


def _show_version(value: bool) -> None:
    if value:
        print(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors (also after the command)."),
          quiet: bool = typer.Option(False, "--quiet", "-q",
                                     help="No progress bars or per-cell lines (also after the command)."),
          version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _state["debug"], _state["quiet"] = debug, quiet


def _check_file_target(path: Optional[Path], option: str) -> None:
    """Refuse an output file path that cannot be one before any work is done."""
    if path is not None and (path.is_dir() or path.is_symlink() and not path.exists()):
        raise ExmodelError(f"{option} {path}: is a directory or a dangling link, not a file to write")


def _progress():
    from exmodel.progress import Progress

    return Progress(enabled=not _state["quiet"])


def _seeds(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ExmodelError(f"--seeds expects comma-separated integers, got '{text}'") from None


def _load(config: Optional[Path], overrides: list[str], seeds: Optional[str]):
    from exmodel.config import load_config
    from exmodel.defaults import default_config

    cfg = load_config(config, overrides, default=None if config else default_config())
    if (s := _seeds(seeds)) is not None:
        cfg.seeds = s
    return cfg


@app.command()
def run(config: Optional[Path] = typer.Argument(None, help="YAML config (default: embedded Split-MNIST, all strategies)."),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset folder (else $EXMODEL_DATA_DIR, else embedded subsets)."),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<config>-<timestamp>); reuse it to resume."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config key: key=value (dotted path)."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Expert cache (default $EXMODEL_CACHE_DIR or ~/.cache/exmodel)."),
        download: bool = typer.Option(False, "--download", help="Download missing dataset files (checksummed)."),
        ) -> None:
    """Run every strategy of CONFIG over every seed and write results, tables and plots."""
    from exmodel.reporting.tables import rich_table
    from exmodel.runner import run_experiment

    from exmodel.devices import check_device

    cfg = _load(config, overrides, seeds)
    check_device(cfg.device)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = out or Path("runs") / f"{cfg.name}-{stamp}"
    with _progress() as progress:
        results = run_experiment(cfg, out, data_dir=data_dir, cache_dir=cache_dir, download=download, progress=progress)
    out_console.print(rich_table(results, compact=out_console.width < 140))
    out_console.print(f"results: {out}/results.json  table: {out}/table.md  plots: {out}/*.png")


@app.command("strategies")
def strategies() -> None:
    """List the registered strategies: what each consumes, whether it keeps images, its parameters."""
    from exmodel.strategies import list_strategies, strategy_class
    from exmodel.text import SafeTable

    table = SafeTable(title="strategies (a config's `strategies: - name:`)")
    for column in ("Strategy", "Consumes", "Ex-model", "Exemplar-free", "Parameters"):
        table.add_column(column)
    for name in list_strategies():
        cls = strategy_class(name)
        table.add_row(name, ", ".join(sorted(cls.consumes)), "✓" if cls.ex_model else "✗",
                      "✓" if cls.exemplar_free else "✗", ", ".join(cls.Params.model_fields))
    out_console.print(table)


@app.command("train-experts")
def train_experts(config: Optional[Path] = typer.Argument(None, help="YAML config."),
                  data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
                  seeds: Optional[str] = typer.Option(None, "--seeds"),
                  overrides: list[str] = typer.Option([], "--set"),
                  cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
                  export: Optional[Path] = typer.Option(None, "--export", help="Also copy the bundles into this folder."),
                  download: bool = typer.Option(False, "--download")) -> None:
    """Train (or load from cache) the stream of experts of CONFIG for each seed."""
    from exmodel.data import load_dataset, resolve_data_dir
    from exmodel.experts.bundle import check_target, save_bundle
    from exmodel.runner import experts_for

    cfg = _load(config, overrides, seeds)
    resolved = resolve_data_dir(data_dir)
    data = load_dataset(cfg.scenario.dataset, resolved, download=download)

    def export_bundle(expert, target: Path) -> None:
        # written afresh (save_bundle: a new directory swapped in), never through what is there:
        # a symbolic link or a non-bundle at the target is refused, not followed
        if target.parent.is_symlink():
            raise ExmodelError(f"{target.parent}: is a symbolic link; refusing to export through it")
        check_target(target)
        save_bundle(expert, target)

    if export is not None:
        for seed in cfg.seeds:  # refuse a bad destination before any expert is trained
            dest = export / f"seed-{seed}"
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                raise ExmodelError(f"{dest}: exists and is not a folder of bundles; refusing to export into it")
    with _progress() as progress:
        for seed in cfg.seeds:
            _, experts, root = experts_for(cfg, data, "full" if resolved else "embedded", seed, cache_dir, progress=progress)
            for e in experts:
                out_console.print(f"seed {seed} expert {e.card.experience}: classes {e.card.trained_class_ids} "
                                  f"accuracy {100 * e.card.test_accuracy:.2f}%")
            if export:
                dest = export / f"seed-{seed}"
                for e in experts:
                    export_bundle(e, dest / f"expert-{e.card.experience:03d}")
                out_console.print(f"bundles: {dest}")
            else:
                out_console.print(f"bundles: {root}")


@app.command()
def inspect(bundle: Path = typer.Argument(..., help="An expert bundle folder (card.json + weights.safetensors), "
                                                    "or a saved M²KD learner (a .safetensors file)."),
            as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
            rebuild: Optional[int] = typer.Option(None, "--rebuild",
                                                  help="M²KD learner: rebuild the model of this step (1 = the first)."),
            out: Optional[Path] = typer.Option(None, "--out", help="With --rebuild: write that model here as a bundle.")
            ) -> None:
    """Validate an expert bundle and show its card; or show what a saved M²KD learner holds."""
    if bundle.is_file() and bundle.suffix == ".safetensors":
        return _inspect_learner(bundle, as_json, rebuild, out)
    if rebuild is not None or out is not None:
        raise ExmodelError("--rebuild and --out apply to a saved M²KD learner (a .safetensors file)")
    from exmodel.experts.bundle import inspect_bundle

    info = inspect_bundle(bundle)
    if as_json:
        print(json.dumps(info, indent=2, default=str))
    else:
        from rich.text import Text

        for key, value in info.items():
            out_console.print(Text.assemble((key, "bold"), ": ", printable(value, one_line=True)))
    if not info["verified"]:
        from exmodel.errors import BundleError

        raise BundleError(info["verification_error"])


def _inspect_learner(path: Path, as_json: bool, rebuild: Optional[int], out: Optional[Path]) -> None:
    from exmodel.strategies.cil.learner_file import describe, load_learner

    if (rebuild is None) != (out is None):
        raise ExmodelError("--rebuild STEP and --out FOLDER go together")
    if out is not None:
        from exmodel.experts.bundle import check_target

        check_target(out)
    strategy = load_learner(path)
    summary = describe(strategy)
    if rebuild is not None:
        if not 1 <= rebuild <= summary["steps"]:
            raise ExmodelError(f"--rebuild {rebuild}: {path} holds steps 1..{summary['steps']}")
        from exmodel.experts.bundle import save_bundle

        seen = sorted({c for g in strategy.groups[:rebuild] for c in g})
        expert = strategy.snapshot(rebuild).as_expert(seen, class_names=strategy.class_names,
                                                      name=f"{path.stem}-step{rebuild}",
                                                      training={"rebuilt_from": path.name, "step": rebuild})
        save_bundle(expert, out)
        summary["rebuilt"] = {"step": rebuild, "classes": seen, "bundle": str(out)}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    out_console.print(f"{summary['strategy']}: {summary['steps']} steps, classes "
                      + " | ".join(",".join(map(str, g)) for g in summary["classes_per_step"]))
    for row in summary.get("layers", []):
        owned = " ".join(f"{n:>7}" for n in row["owned_per_step"])
        out_console.print(f"  {row['layer']:<28} {row['weights']:>8} weights  per step {owned}  free {row['free']:>7}")
    if "snapshots_kept" in summary:
        out_console.print(f"  snapshots kept: steps {summary['snapshots_kept']}")
    if "rebuilt" in summary:
        out_console.print(f"step {rebuild} rebuilt: {out}")


@app.command()
def report(run_dirs: list[Path] = typer.Argument(..., help="One or more run folders."),
           out: Optional[Path] = typer.Option(None, "--out", help="Also write the merged markdown here.")) -> None:
    """Merge the results of runs into one table."""
    from exmodel.fileio import atomic_write_text
    from exmodel.reporting.merge import combined_markdown, combined_rich_table, load_results

    _check_file_target(out, "--out")
    results = [load_results(d) for d in run_dirs]
    out_console.print(combined_rich_table(results))
    if out:
        atomic_write_text(out, combined_markdown(results) + "\n")
        out_console.print(f"written: {out}")


@app.command()
def evaluate(bundles: list[Path] = typer.Argument(..., help="Expert bundles to score."),
             dataset: str = typer.Option(..., "--dataset", help="mnist, fashion_mnist, cifar10, ... or imagefolder:PATH"),
             split: str = typer.Option("test", "--split", help="test | train"),
             data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
             all_classes: bool = typer.Option(False, "--all-classes",
                                              help="Score every image, not only those of the bundle's trained classes."),
             device: str = typer.Option("cpu", "--device"),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results here as JSON."),
             ) -> None:
    """Score expert bundles (your own, or what consolidate wrote) on a labelled dataset."""
    from exmodel.text import SafeTable

    from exmodel.devices import check_device
    from exmodel.evaluation.score import evaluate_bundle
    from exmodel.fileio import atomic_write_json

    check_device(device)
    _check_file_target(json_out, "--json")
    with _progress() as progress:
        results = [evaluate_bundle(b, dataset, split=split, data_dir=str(data_dir) if data_dir else None,
                                   all_classes=all_classes, device=device, progress=progress) for b in bundles]
    table = SafeTable()
    for header in ("#", "bundle", "arch", "classes", "images", "accuracy (%)"):
        table.add_column(header, no_wrap=True)
    for k, r in enumerate(results, 1):
        classes = r["classes"] if r["classes"] == "all" else ",".join(map(str, r["classes"]))
        table.add_row(str(k), r["name"], r["arch"], classes, str(r["images"]), f"{100 * r['accuracy']:.2f}")
    per_class = SafeTable(title="per class (%)")
    per_class.add_column("class")
    for k in range(1, len(results) + 1):
        per_class.add_column(f"#{k}", justify="right")
    for name in dict.fromkeys(n for r in results for n in r["per_class"]):
        per_class.add_row(name, *(f"{100 * r['per_class'][name]['accuracy']:.1f}" if name in r["per_class"] else "–"
                                  for r in results))
    out_console.print(table)
    out_console.print(per_class)
    if json_out:
        atomic_write_json(json_out, {"results": results})
        out_console.print(f"written: {json_out}")


# --------------------------------------------------------------------------------------- entry point
GLOBAL_FLAGS = ("--quiet", "-q", "--debug")


from exmodel import cli_experts, cli_lll, cli_skill  # noqa: E402,F401  (register consolidate, import, card-template, lll, skill)


def _split_global_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(flags, rest)``: the global flags found anywhere in ``argv`` (before a literal ``--``), and the rest.

    ``exmodel run CONFIG --quiet`` is then the same as ``exmodel --quiet run CONFIG``. No sub-command
    has an option of these names and none of them takes a value, so this is unambiguous except for an
    option value that is literally ``-q``/``--quiet``/``--debug``: put it after ``--`` or write
    ``--opt=-q``. Everything from ``--`` on is left as it is.
    """
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:]
    return flags, rest


def _cli_exceptions():
    """The module of the click exceptions that typer raises.

    typer 0.29 vendors click as ``typer._click`` (and does not depend on the ``click`` package, which
    may be absent: here only the Ray extra pulls it in); older typer versions use ``click`` itself.
    ``typer.BadParameter`` is re-exported from that module in both cases, so ask it where it lives.
    """
    return importlib.import_module(typer.BadParameter.__module__)


def _one_line(text: str) -> str:
    """A click message as our one-line style: whitespace collapsed, lower-case start, no final period."""
    text = " ".join(text.split()).rstrip(".")
    return text[:1].lower() + text[1:] if text[:1].isupper() and text[1:2].islower() else text


def _usage_error(e) -> int:
    """Print the usage line of the command concerned and one ``error: ...`` line; return 2."""
    ctx = getattr(e, "ctx", None)
    message = _one_line(e.format_message())
    if ctx is not None:
        usage = " ".join(ctx.get_usage().split())  # plain text; may span lines for long commands
        print(usage if usage.startswith("Usage:") else f"Usage: {usage}", file=sys.stderr)
        message += f" (try '{ctx.command_path} --help')"
    print(f"error: {printable(message, one_line=True)}", file=sys.stderr)
    return e.exit_code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit status (0, 1, 2 or 130)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    flags, args = _split_global_flags(list(sys.argv[1:] if argv is None else argv))
    _state["debug"], _state["quiet"] = "--debug" in flags, bool({"--quiet", "-q"} & set(flags))
    args = [*dict.fromkeys("-q" if f == "--quiet" else f for f in flags), *args]
    exc = _cli_exceptions()
    try:
        code = app(args=args, prog_name=PROG, standalone_mode=False)
    except ExmodelError as e:
        if _state["debug"]:
            raise
        print(f"error: {printable(e, one_line=True)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        code = 130
    except exc.UsageError as e:
        return _usage_error(e)
    except exc.ClickException as e:  # e.g. a file that cannot be opened
        print(f"error: {printable(_one_line(e.format_message()), one_line=True)}", file=sys.stderr)
        return e.exit_code
    except typer.Abort:
        code = 130
    except OSError as e:  # a path that cannot be written or read: a directory given for a file, a full disk
        if _state["debug"]:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {printable(where, one_line=True)}{printable(e.strerror or e, one_line=True)}", file=sys.stderr)
        return 2
    except Exception as e:  # unexpected failures
        if _state["debug"]:
            raise
        print(f"error: {type(e).__name__}: {printable(e, one_line=True)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    # Without standalone mode typer returns the command's value, or the code of a typer.Exit: 0 after
    # --help/--version, 130 after Ctrl-C (it turns KeyboardInterrupt into Exit(130)).
    code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    if code == 130:
        print("interrupted; run the same command with the same --out to resume", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

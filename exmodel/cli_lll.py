"""``exmodel lll``: one lightweight lifelong learner over a many-task benchmark (SKILL-mini), and
``exmodel lll-task``: check a shared task bundle. Thin: parses, calls :mod:`exmodel.agents`, prints."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional

import typer

from exmodel.cli import _progress, app, out_console
from exmodel.text import printable


@app.command("lll")
def lll(config: Optional[Path] = typer.Argument(None, help="YAML config (default: configs/lll_skill_mini.yaml's "
                                                           "settings on the tiny SKILL-mini)."),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with MNIST and Fashion-MNIST "
                                                "(the full benchmark needs it; tiny reads the embedded subsets)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<config>-<timestamp>); "
                                           "reuse it to resume."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config key: key=value (dotted path)."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature cache (default "
                                                 "$EXMODEL_CACHE_DIR or ~/.cache/exmodel)."),
        ) -> None:
    """Learn the tasks of SKILL-mini one after the other with a frozen backbone; evaluate without task labels."""
    from exmodel.agents.config import LLLConfig
    from exmodel.agents.sequential import run_lll
    from exmodel.config import load_config
    from exmodel.reporting.lll_plots import plot_lll
    from exmodel.reporting.lll_table import lll_markdown, lll_rows, HEADERS
    from exmodel.fileio import atomic_write_text
    from exmodel.experts.zoo import default_cache_dir
    from rich.table import Table

    cfg = load_config(config, overrides, default={"name": "lll_tiny", "benchmark": {"size": "tiny"}}, model=LLLConfig)
    out = out or Path("runs") / f"{cfg.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    with _progress() as progress:
        results = run_lll(cfg, out, data_dir, cache_dir or default_cache_dir(), progress)
    atomic_write_text(out / "table.md", lll_markdown(results))
    plot_lll(results, out)
    table = Table(*HEADERS, title=f"{cfg.name}: {len(results['tasks'])} tasks, no task label")
    for row in lll_rows(results):
        table.add_row(*row)
    out_console.print(table)
    out_console.print(f"results: {printable(str(out))}/results.json  table: table.md  plots: task1.png mapper.png "
                      "per_task.png average.png normalized.png  task bundles: tasks/")


@app.command("lll-task")
def lll_task(bundle: Path = typer.Argument(..., help="A task bundle (.safetensors) an LLL agent shared.")) -> None:
    """Validate a shared task bundle and show what it holds."""
    from exmodel.agents.knowledge import load_task

    k = load_task(bundle)
    parts = [f"task {k.task}", f"{len(k.class_names)} classes", f"backbone {k.backbone}", f"{k.num_features} features"]
    if k.gmmc is not None:
        parts.append(f"GMMC {len(k.gmmc.weights)} clusters")
    if k.maha_means is not None:
        parts.append(f"MAHA means + {len(k.maha_labels)} " + ("images" if k.maha_images is not None else "features"))
    if k.biases:
        parts.append(f"beneficial biases on {len(k.biases)} layers")
    out_console.print(printable(", ".join(parts)))
    out_console.print(printable("classes: " + ", ".join(k.class_names)))

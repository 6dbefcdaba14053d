"""Write a run's reports from its ``results`` structure: JSON, CSV, markdown table, PNG plots."""

from __future__ import annotations

from pathlib import Path

from exmodel.fileio import atomic_write_json, atomic_write_text
from exmodel.reporting.cil_plot import incremental_curves, plot_accuracy_after_task
from exmodel.reporting.confusion_plot import confusion_panels, plot_confusion_matrices
from exmodel.reporting.plots import plot_accuracy_matrices, plot_stream_accuracy
from exmodel.reporting.state_plot import plot_state_kept, state_curves
from exmodel.reporting.tables import markdown_table, write_csv


def write_reports(results: dict, out: Path) -> dict[str, Path]:
    out = Path(out)
    paths = {
        "results.json": atomic_write_json(out / "results.json", results),
        "results.csv": write_csv(results, out / "results.csv"),
        "table.md": atomic_write_text(out / "table.md", markdown_table(results) + "\n"),
        "accuracy_matrices.png": plot_accuracy_matrices(results, out / "accuracy_matrices.png"),
        "stream_accuracy.png": plot_stream_accuracy(results, out / "stream_accuracy.png"),
    }
    if results.get("scenario_kind") == "cil" and incremental_curves(results):
        paths["accuracy_after_task.png"] = plot_accuracy_after_task(results, out / "accuracy_after_task.png")
        if confusion_panels(results):
            paths["confusion_matrices.png"] = plot_confusion_matrices(results, out / "confusion_matrices.png")
    if state_curves(results):  # results merged from cells written before the record existed have none
        paths["state_kept.png"] = plot_state_kept(results, out / "state_kept.png")
    return paths

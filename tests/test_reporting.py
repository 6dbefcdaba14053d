"""Reporting: tables, CSV, merging of runs and plots, on a hand-built results.json
(2 strategies, 3 experiences, 2 seeds) whose expected numbers are worked out by hand."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exmodel.errors import ExmodelError
from exmodel.reporting.merge import (
    column_labels,
    combined_cells,
    combined_markdown,
    load_results,
    merge_results,
    stat_from_values,
)
from exmodel.reporting.plots import (
    plot_accuracy_matrices,
    plot_stream_accuracy,
    seen_accuracy_curve,
    seen_accuracy_over_seeds,
)
from exmodel.reporting.state_plot import plot_state_kept, state_curves
from exmodel.reporting.tables import (
    csv_rows,
    format_bytes,
    format_macs,
    format_seconds,
    format_stat,
    markdown_table,
    rich_table,
    write_csv,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Seed 0 and seed 1 accuracy matrices (rows: after step i, columns: experience j; None = not seen).
ORACLE_R = [
    [[1.0, None, None], [0.9, 0.8, None], [0.7, 0.6, 0.5]],
    [[0.8, None, None], [0.7, 0.6, None], [0.5, 0.4, 0.3]],
]
ED_R = [
    [[0.9, None, None], [0.2, 0.9, None], [0.1, 0.1, 0.9]],
    [[0.9, None, None], [0.4, 0.9, None], [0.1, 0.3, 0.9]],
]


def stat(mean: float, std: float, per_seed: list[Any]) -> dict[str, Any]:
    return {"mean": mean, "std": std, "per_seed": per_seed}


def mean_matrix(per_seed: list[list[list[float | None]]]) -> list[list[float | None]]:
    return [
        [None if a is None else (a + b) / 2 for a, b in zip(row0, row1)]
        for row0, row1 in zip(per_seed[0], per_seed[1])
    ]


def make_results(scenario: str = "split_mnist_nc", kind: str = "nc") -> dict[str, Any]:
    return {
        "name": "split_mnist",
        "scenario": scenario,
        "scenario_kind": kind,
        "dataset": "mnist",
        "data_source": "embedded",
        "seeds": [0, 1],
        "num_experiences": 3,
        "experts": {
            "own_class_accuracy": stat(0.9912, 0.001, [0.9905, 0.9919]),
            "per_seed": [[0.99, 0.99, 0.9915], [0.992, 0.991, 0.9927]],
        },
        "strategies": {
            "oracle": {
                "ex_model": False,
                "exemplar_free": True,
                "stream_accuracy": stat(0.99, 0.01, [0.98, 1.0]),
                "task_aware_stream_accuracy": None,
                "average_accuracy": stat(0.9512, 0.0049, [0.9477, 0.9547]),
                "forgetting": stat(0.0, 0.0, [0.0, 0.0]),
                "backward_transfer": stat(-0.001, 0.0, [-0.001, -0.001]),
                "wall_time_s": stat(12.34, 0.5, [11.84, 12.84]),
                "macs_per_sample": stat(420000.0, 0.0, [420000.0, 420000.0]),
                "peak_memory_bytes": stat(1e8, 0.0, [1e8, 1e8]),
                "state_bytes": stat(1234567.0, 0.0, [1234567.0, 1234567.0]),
                "accuracy_matrix": {"mean": mean_matrix(ORACLE_R), "per_seed": ORACLE_R},
            },
            "ed": {
                "ex_model": True,
                "exemplar_free": True,
                "stream_accuracy": stat(0.4323, 0.03, [0.4111, 0.4535]),
                "task_aware_stream_accuracy": stat(0.9, 0.0, [0.9, None]),
                "average_accuracy": stat(0.6, 0.1, [0.53, 0.67]),
                "forgetting": stat(0.55, 0.05, [0.6, 0.5]),
                "backward_transfer": stat(-0.55, 0.05, [-0.6, -0.5]),
                "wall_time_s": stat(301.26, 3.0, [299.1, 303.42]),
                "macs_per_sample": stat(3.2e9, 0.0, [3.2e9, 3.2e9]),
                "peak_memory_bytes": stat(2e9, 0.0, [2e9, 2e9]),
                "state_bytes": stat(512.0, 0.0, [512.0, 512.0]),
                "accuracy_matrix": {"mean": mean_matrix(ED_R), "per_seed": ED_R},
            },
        },
        "reference": {"oracle": {"mean": 0.9942, "std": 0.0019, "source": "Carta et al. 2021, Table 2"}},
    }


# ---------------------------------------------------------------------------------------- tables


def test_format_stat_percent_and_missing() -> None:
    assert format_stat({"mean": 0.43234, "std": 0.03}) == "43.23 ± 3.00"
    assert format_stat({"mean": 12.345, "std": 0.26}, percent=False, digits=1) == "12.3 ± 0.3"
    assert format_stat({"mean": 0.5}) == "50.00"  # no std: the mean alone
    assert format_stat({"mean": 0.5, "std": None}) == "50.00"
    assert format_stat(None) == "–"
    assert format_stat({"mean": None, "std": 0.1}) == "–"
    assert format_stat({"mean": float("nan"), "std": 0.1}) == "–"


def test_human_formats() -> None:
    assert format_bytes({"mean": 1_234_567}) == "1.2 MB"
    assert format_bytes({"mean": 2_500}) == "2.5 kB"
    assert format_bytes({"mean": 512}) == "512 B"
    assert format_bytes({"mean": 3.4e9}) == "3.4 GB"
    assert format_macs({"mean": 420_000}) == "0.42 M"
    assert format_macs({"mean": 3.2e9}) == "3.20 G"
    assert format_seconds({"mean": 12.345}) == "12.3"
    assert format_bytes(None) == format_macs(None) == format_seconds({"mean": None}) == "–"


def test_markdown_table_rows_and_header() -> None:
    text = markdown_table(make_results())
    lines = text.splitlines()
    assert lines[0] == "### split_mnist — scenario split_mnist_nc (nc), dataset mnist (embedded data), seeds 0, 1"
    assert "Experts' accuracy on their own classes: 99.12 ± 0.10" in lines
    assert (
        "| Strategy | Ex-model | Exemplar-free | Stream acc. (%) | Task-aware (%) | Avg. acc. (%) | Forgetting (%) | Paper (%) "
        "| Time (s) | MACs/sample | Peak mem. + | State kept |" in lines
    )
    assert "| oracle | ✗ | ✓ | 99.00 ± 1.00 | – | 95.12 ± 0.49 | 0.00 ± 0.00 | 99.42 ± 0.19 | 12.3 | 0.42 M | – | 1.2 MB |" in lines
    assert "| ed | ✓ | ✓ | 43.23 ± 3.00 | 90.00 ± 0.00 | 60.00 ± 10.00 | 55.00 ± 5.00 | – | 301.3 | 3.20 G | – | 512 B |" in lines
    # Rows follow the order of results["strategies"].
    assert text.index("| oracle |") < text.index("| ed |")


def test_markdown_without_reference_has_no_paper_column() -> None:
    results = make_results()
    del results["reference"]
    text = markdown_table(results)
    assert "Paper" not in text
    assert "| ed | ✓ | ✓ | 43.23 ± 3.00 | 90.00 ± 0.00 | 60.00 ± 10.00 | 55.00 ± 5.00 | 301.3 | 3.20 G | – | 512 B |" in text


def test_rich_table_has_markdown_cells() -> None:
    table = rich_table(make_results())
    assert [c.header for c in table.columns][:4] == ["Strategy", "Ex-model", "Exemplar-free", "Stream acc. (%)"]
    assert table.row_count == 2
    assert list(table.columns[3].cells) == ["99.00 ± 1.00", "43.23 ± 3.00"]
    assert list(table.columns[7].cells) == ["99.42 ± 0.19", "–"]
    assert "Experts' accuracy on their own classes: 99.12 ± 0.10" == table.caption
    compact = rich_table(make_results(), compact=True)
    assert [c.header for c in compact.columns] == ["Strategy", "Ex-model", "Stream acc. (%)", "Task-aware (%)",
                                                   "Forgetting (%)", "Paper (%)", "Time (s)", "State kept"]


def test_csv_rows_long_format() -> None:
    rows = csv_rows(make_results())
    # oracle: 8 metrics (task-aware is null) x 2 seeds; ed: 9 metrics x 2 seeds minus one null value.
    assert len(rows) == 8 * 2 + 9 * 2 - 1
    assert set(rows[0]) == {"strategy", "ex_model", "seed", "metric", "value"}
    found = {(r["strategy"], r["seed"], r["metric"]): r for r in rows}
    assert found[("ed", 1, "stream_accuracy")]["value"] == 0.4535
    assert found[("ed", 1, "stream_accuracy")]["ex_model"] is True
    assert found[("oracle", 0, "state_bytes")]["value"] == 1234567.0
    assert ("ed", 1, "task_aware_stream_accuracy") not in found
    assert not any(r["strategy"] == "oracle" and r["metric"] == "task_aware_stream_accuracy" for r in rows)


def test_write_csv_roundtrip_and_atomic(tmp_path: Path) -> None:
    path = write_csv(make_results(), tmp_path / "out" / "results.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == 33
    assert read[0] == {"strategy": "oracle", "ex_model": "false", "seed": "0", "metric": "stream_accuracy",
                       "value": "0.98"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.csv"]


# ----------------------------------------------------------------------------------------- merge


def test_stat_from_values_sample_std() -> None:
    merged = stat_from_values([0.5, 0.7, 0.9])
    assert merged["mean"] == pytest.approx(0.7)
    assert merged["std"] == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert stat_from_values([0.3]) == {"mean": 0.3, "std": 0.0, "per_seed": [0.3]}
    assert stat_from_values([None, None])["mean"] is None
    assert stat_from_values([0.2, None, 0.4])["mean"] == pytest.approx(0.3)


def split_run(seeds: list[int], per_seed: list[float], strategies: tuple[str, ...]) -> dict[str, Any]:
    run = make_results()
    run["seeds"] = seeds
    run["experts"]["own_class_accuracy"]["per_seed"] = [0.99] * len(seeds)
    run["experts"]["per_seed"] = [[0.99, 0.99, 0.99]] * len(seeds)
    run["strategies"] = {k: v for k, v in run["strategies"].items() if k in strategies}
    for entry in run["strategies"].values():
        for key, value in entry.items():
            if isinstance(value, dict) and key != "accuracy_matrix":
                value["per_seed"] = (value["per_seed"] * 2)[: len(seeds)]
        entry["accuracy_matrix"]["per_seed"] = entry["accuracy_matrix"]["per_seed"][: len(seeds)]
    if "ed" in run["strategies"]:
        run["strategies"]["ed"]["stream_accuracy"] = stat(float(np.mean(per_seed)), 0.0, per_seed)
    return run


def test_merge_combines_seeds_and_recomputes_stats() -> None:
    run_a = split_run([0, 1], [0.5, 0.7], ("oracle", "ed"))
    run_b = split_run([2], [0.9], ("ed",))
    before = copy.deepcopy(run_a)
    merged = merge_results([run_a, run_b])
    assert run_a == before  # inputs untouched
    assert len(merged) == 1
    result = merged[0]
    assert result["seeds"] == [0, 1, 2]
    ed = result["strategies"]["ed"]
    assert ed["seeds"] == [0, 1, 2]
    assert ed["stream_accuracy"]["per_seed"] == [0.5, 0.7, 0.9]
    assert ed["stream_accuracy"]["mean"] == pytest.approx(0.7)
    assert ed["stream_accuracy"]["std"] == pytest.approx(0.2)
    # Task-aware: seed 0 -> 0.9, seed 1 -> null, seed 2 -> 0.9 (first per-seed value again).
    assert ed["task_aware_stream_accuracy"]["per_seed"] == [0.9, None, 0.9]
    assert ed["task_aware_stream_accuracy"]["mean"] == pytest.approx(0.9)
    # Matrices: three seeds, mean of seeds 0, 1 and the seed-0 matrix again -> R[1][0] = (0.2+0.4+0.2)/3.
    assert len(ed["accuracy_matrix"]["per_seed"]) == 3
    assert ed["accuracy_matrix"]["mean"][1][0] == pytest.approx(0.8 / 3)
    assert ed["accuracy_matrix"]["mean"][0][1] is None
    # A strategy in one run only is kept as it was, with its seeds recorded.
    assert result["strategies"]["oracle"]["stream_accuracy"] == run_a["strategies"]["oracle"]["stream_accuracy"]
    assert result["strategies"]["oracle"]["seeds"] == [0, 1]
    assert list(result["strategies"]) == ["oracle", "ed"]
    # Experts of three distinct seeds.
    assert result["experts"]["own_class_accuracy"]["per_seed"] == [0.99, 0.99, 0.99]
    # The merged table shows the recomputed stat and the csv uses each strategy's own seeds.
    assert "| ed | ✓ | ✓ | 70.00 ± 20.00 |" in markdown_table(result)
    seeds = [r["seed"] for r in csv_rows(result) if r["strategy"] == "ed" and r["metric"] == "stream_accuracy"]
    assert seeds == [0, 1, 2]


def test_merge_rejects_duplicate_seed_and_mismatched_sizes() -> None:
    run = split_run([0, 1], [0.5, 0.7], ("ed",))
    with pytest.raises(ExmodelError, match=r"strategy 'ed': seed 0 appears in more than one run"):
        merge_results([run, copy.deepcopy(run)])
    other = split_run([2], [0.9], ("ed",))
    other["num_experiences"] = 5
    with pytest.raises(ExmodelError, match="runs disagree on num_experiences"):
        merge_results([run, other])


def test_merge_separates_scenarios_in_paper_order() -> None:
    nc = make_results("split_mnist_nc", "nc")
    mt = make_results("split_mnist_mt", "mt")
    joint = make_results("mnist_joint", "joint")
    del joint["strategies"]["ed"]
    merged = merge_results([nc, mt, joint])
    assert [m["scenario"] for m in merged] == ["mnist_joint", "split_mnist_nc", "split_mnist_mt"]
    assert column_labels(merged) == ["MNIST Joint", "MNIST NC", "MNIST MT"]
    header, rows = combined_cells([nc, mt, joint])
    assert header == ["Strategy", "Ex-model", "MNIST Joint", "MNIST NC", "MNIST MT"]
    assert rows == [
        ["oracle", "✗", "99.00 ± 1.00", "99.00 ± 1.00", "99.00 ± 1.00"],
        ["ed", "✓", "–", "43.23 ± 3.00", "43.23 ± 3.00"],
    ]


def test_combined_markdown_has_summary_then_each_table() -> None:
    text = combined_markdown([make_results("split_mnist_nc", "nc"), make_results("split_mnist_mt", "mt")])
    assert "| Strategy | Ex-model | MNIST NC | MNIST MT |" in text
    assert "| ed | ✓ | 43.23 ± 3.00 | 43.23 ± 3.00 |" in text
    assert text.index("MNIST NC |") < text.index("scenario split_mnist_nc (nc)") < text.index(
        "scenario split_mnist_mt (mt)"
    )


def test_same_scenario_other_data_source_is_not_merged() -> None:
    full = make_results()
    full["data_source"] = "full"
    merged = merge_results([make_results(), full])
    assert len(merged) == 2
    assert column_labels(merged) == ["split_mnist_nc (embedded)", "split_mnist_nc (full)"]


def test_load_results(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(ExmodelError, match=r"results\.json: not found"):
        load_results(run_dir)
    (run_dir / "results.json").write_text("{\"scenario\": ", encoding="utf-8")
    with pytest.raises(ExmodelError, match="invalid JSON at line 1"):
        load_results(run_dir)
    (run_dir / "results.json").write_text(json.dumps({"scenario": "x", "seeds": [0], "strategies": []}))
    with pytest.raises(ExmodelError, match="key 'strategies' must be an object"):
        load_results(run_dir)
    bad = make_results()
    bad["strategies"]["ed"]["forgetting"]["per_seed"] = [0.1]
    (run_dir / "results.json").write_text(json.dumps(bad))
    with pytest.raises(ExmodelError, match=r"strategies\.ed\.forgetting\.per_seed must be a list of 2 values"):
        load_results(run_dir)
    (run_dir / "results.json").write_text(json.dumps(make_results()))
    assert load_results(run_dir) == make_results()
    assert load_results(run_dir / "results.json")["scenario"] == "split_mnist_nc"


# ----------------------------------------------------------------------------------------- plots


def test_seen_accuracy_curves_by_hand() -> None:
    matrix = np.array(ORACLE_R[0], dtype=float)
    np.testing.assert_allclose(seen_accuracy_curve(matrix), [1.0, 0.85, 0.6])
    mean, std = seen_accuracy_over_seeds({"per_seed": ORACLE_R})
    # Seed 1 curve is [0.8, 0.65, 0.4]: mean [0.9, 0.75, 0.5], sample std 0.2 / sqrt(2) everywhere.
    np.testing.assert_allclose(mean, [0.9, 0.75, 0.5])
    np.testing.assert_allclose(std, [0.2 / math.sqrt(2)] * 3)
    mean_only, band = seen_accuracy_over_seeds({"mean": mean_matrix(ORACLE_R)})
    np.testing.assert_allclose(mean_only, [0.9, 0.75, 0.5])
    assert band is None


@pytest.mark.parametrize("plot", [plot_accuracy_matrices, plot_stream_accuracy])
def test_plots_write_png_without_temp_files(tmp_path: Path, plot: Any) -> None:
    path = plot(make_results(), tmp_path / "figs" / "figure.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert [p.name for p in path.parent.iterdir()] == ["figure.png"]


def test_plot_without_matrices_is_a_user_error(tmp_path: Path) -> None:
    results = make_results()
    for entry in results["strategies"].values():
        del entry["accuracy_matrix"]
    with pytest.raises(ExmodelError, match="no strategy has a 'accuracy_matrix' to plot"):
        plot_stream_accuracy(results, tmp_path / "f.png")
    assert not list(tmp_path.iterdir())


def with_state(results: dict[str, Any]) -> dict[str, Any]:
    """``make_results`` with the per-step state: the oracle keeps one more 1,000-byte expert per step,
    the ED strategy a model and a buffer of constant size (seed 1 with one missing value)."""
    results = copy.deepcopy(results)
    results["strategies"]["oracle"]["state_bytes_per_step"] = [[1000, 2000, 3000], [1000, 2000, 3000]]
    results["strategies"]["ed"]["state_bytes_per_step"] = [[500, 500, 500], [700, None, 700]]
    return results


def test_state_curves_by_hand() -> None:
    curves = state_curves(with_state(make_results()))
    assert list(curves) == ["oracle", "ed"]
    assert curves["oracle"][0] is False and curves["ed"][0] is True
    np.testing.assert_allclose(curves["oracle"][1], [1000, 2000, 3000])
    np.testing.assert_allclose(curves["ed"][1], [600, 500, 600])  # the missing value is left out of the mean
    assert state_curves(make_results()) == {}  # results written before the record existed


def test_state_plot_writes_png_and_rejects_what_it_cannot_draw(tmp_path: Path) -> None:
    path = plot_state_kept(with_state(make_results()), tmp_path / "figs" / "state.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert [p.name for p in path.parent.iterdir()] == ["state.png"]
    with pytest.raises(ExmodelError, match="no strategy has a 'state_bytes_per_step' to plot"):
        plot_state_kept(make_results(), tmp_path / "none.png")
    ragged = with_state(make_results())
    ragged["strategies"]["ed"]["state_bytes_per_step"] = [[500, 500, 500], [500, 500]]
    with pytest.raises(ExmodelError, match=r"strategy 'ed': state_bytes_per_step has seeds of different lengths \[2, 3\]"):
        plot_state_kept(ragged, tmp_path / "ragged.png")
    assert not (tmp_path / "none.png").exists() and not (tmp_path / "ragged.png").exists()


def test_merge_joins_the_accuracy_after_each_task_curves() -> None:
    run_a = split_run([0, 1], [0.5, 0.7], ("ed",))
    run_b = split_run([2], [0.9], ("ed",))
    size = run_a["num_experiences"]
    run_a["strategies"]["ed"]["accuracy_after_task"] = {"mean": None, "per_seed": [[1.0] * size, [0.5] * size]}
    run_b["strategies"]["ed"]["accuracy_after_task"] = {"mean": None, "per_seed": [[0.0] * size]}
    curve = merge_results([run_a, run_b])[0]["strategies"]["ed"]["accuracy_after_task"]
    assert curve["per_seed"] == [[1.0] * size, [0.5] * size, [0.0] * size]
    assert curve["mean"] == pytest.approx([0.5] * size)
    run_b["strategies"]["ed"]["accuracy_after_task"]["per_seed"] = [[0.0] * (size + 1)]
    with pytest.raises(ExmodelError, match=f"each curve needs {size} values, one per step"):
        merge_results([run_a, run_b])


def test_confusion_rows_in_percent_by_hand_and_the_figure():
    import numpy as np

    from exmodel.reporting.confusion_plot import row_percentages

    counts = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    assert row_percentages(counts).tolist() == [[75.0, 25.0, 0.0], [0.0, 0.0, 0.0], [25.0, 25.0, 50.0]]


def test_class_incremental_runs_draw_confusion_matrices(tmp_path):
    import numpy as np

    from exmodel.reporting.confusion_plot import plot_confusion_matrices

    results = {"name": "t", "strategies": {s: {"confusion_matrix": np.eye(4).tolist()} for s in ("lwf_mc", "m2kd", "x")}}
    path = plot_confusion_matrices(results, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"

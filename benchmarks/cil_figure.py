"""Accuracy after each task for strategies measured in several ``benchmarks/cil.py`` runs, in one figure.

    python benchmarks/cil_figure.py --out docs/skd_mnist_curves.png --title "MNIST, half base + 5 x 1" \\
        skd.json baselines.json old.json#skd=skd_no_explore

Each input is the JSON ``benchmarks/cil.py`` wrote, optionally followed by ``#old=new,...``: renamed
strategies, so that two runs of the same name can stand side by side. Every strategy of every input
is drawn (solid lines for exemplar-free ones, dashed for those keeping images, a ±1 std band over
seeds); the same name from two inputs is an error. The runs must share the scenario (the same number
of tasks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def merge(inputs: list[str]) -> dict:
    """One results mapping holding every input's strategies (renamed as asked)."""
    from exmodel.errors import ExmodelError

    strategies: dict[str, dict] = {}
    origin: dict[str, str] = {}
    tasks: set[int] = set()
    for spec in inputs:
        path, _, renames = spec.partition("#")
        mapping = dict(pair.split("=", 1) for pair in renames.split(",") if pair) if renames else {}
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ExmodelError(f"{path}: not a readable benchmark JSON ({exc})") from None
        found = data.get("strategies") or {}
        unknown = sorted(set(mapping) - set(found))
        if unknown:
            raise ExmodelError(f"{path}: no strategy {', '.join(unknown)} to rename (it has {', '.join(found)})")
        for name, entry in found.items():
            new = mapping.get(name, name)
            if new in strategies:
                raise ExmodelError(f"strategy {new!r} is in both {origin[new]} and {path}: rename one with "
                                   f"{path}#{name}=NEW_NAME")
            curves = (entry.get("accuracy_after_task") or {}).get("per_seed") or []
            tasks.update(len(c) for c in curves)
            strategies[new], origin[new] = entry, path
    if len(tasks) > 1:
        raise ExmodelError(f"the runs have different numbers of tasks ({sorted(tasks)}): not one scenario")
    return {"strategies": strategies}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="benchmark JSON files, each optionally PATH#old=new,...")
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--title", default="", help="the figure's title (before ': accuracy after each task')")
    args = ap.parse_args(argv)
    from exmodel.errors import ExmodelError
    from exmodel.reporting.cil_plot import plot_accuracy_after_task

    try:
        results = merge(args.inputs)
        results["name"] = args.title
        path = plot_accuracy_after_task(results, args.out)
    except ExmodelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"written: {path} ({len(results['strategies'])} strategies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

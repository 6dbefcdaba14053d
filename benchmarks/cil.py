"""Benchmark: class-incremental learning from data (a ``kind: cil`` config, full data, 3 seeds).

    python benchmarks/cil.py --data-dir ../shared/data --config configs/cil_split_mnist.yaml --out cil.json

Runs the config's strategies and writes JSON shaped like ``results.json``: per strategy the average
incremental accuracy, the final accuracy, old/new-class accuracy after the last task, the accuracy
after each task (mean/std/per seed), forgetting, wall time, and the bytes of exemplars and of the
whole state kept between tasks, with the machine it ran on. The run folder (``--run-dir``) is
resumable: an interrupted benchmark started again skips its finished cells.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _runs  # noqa: E402

KEEP = ("ex_model", "exemplar_free", "average_incremental_accuracy", "final_accuracy", "old_accuracy", "new_accuracy",
        "accuracy_after_task", "forgetting", "wall_time_s", "exemplar_bytes", "state_bytes", "state_bytes_per_step")


def main(argv: list[str] | None = None) -> int:
    args = _runs.parser(__doc__, "cil_split_mnist.yaml").parse_args(argv)
    done = _runs.run(args)
    if done is None:
        return 2
    cfg, results, run_dir = done
    from exmodel.fileio import atomic_write_json

    out = _runs.summary(Path(__file__).stem, cfg, results, run_dir, KEEP)
    atomic_write_json(args.out, out)

    def pct(stat):
        return f"{100 * stat['mean']:6.2f} ± {100 * (stat.get('std') or 0):5.2f}" if stat else "     –        "

    for name, e in out["strategies"].items():
        print(f"{name:<14} avg. incremental {pct(e['average_incremental_accuracy'])}   final {pct(e['final_accuracy'])}"
              f"   time {e['wall_time_s']['mean']:7.1f} s   exemplars {e['exemplar_bytes']['mean'] / 1e6:5.2f} MB")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

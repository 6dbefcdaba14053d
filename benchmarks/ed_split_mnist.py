"""Benchmark: Ex-Model Distillation on Split-MNIST NC (full data, 3 seeds).

    python benchmarks/ed_split_mnist.py --data-dir ../shared/data --out ed_split_mnist.json

Runs ``configs/ed_split_mnist.yaml`` (every ED strategy in its paper and default settings, plus the
baselines) and writes JSON shaped like ``results.json``: per strategy the stream accuracy
(mean/std/per seed), wall time, MACs per sample, peak memory and the bytes of state kept between
experts, with the machine it ran on. The run folder (``--run-dir``) is resumable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _runs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = _runs.parser(__doc__, "ed_split_mnist.yaml").parse_args(argv)
    done = _runs.run(args)
    if done is None:
        return 2
    cfg, results, run_dir = done
    from exmodel.fileio import atomic_write_json

    keep = ("ex_model", "stream_accuracy", "task_aware_stream_accuracy", "forgetting", "wall_time_s", "macs_per_sample",
            "peak_memory_bytes", "peak_memory_increase_bytes", "state_bytes", "state_bytes_per_step")
    out = _runs.summary(Path(__file__).stem, cfg, results, run_dir, keep)
    atomic_write_json(args.out, out)
    for name, entry in out["strategies"].items():
        acc = entry["stream_accuracy"]
        print(f"{name:<18} stream accuracy {100 * acc['mean']:6.2f} ± {100 * acc['std']:5.2f}   "
              f"time {entry['wall_time_s']['mean']:7.1f} s   state {entry['state_bytes']['mean'] / 1e6:6.2f} MB")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

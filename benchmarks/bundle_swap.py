"""Two writers and one reader of the same bundle: does every load see a complete bundle?

Writer A keeps saving expert A to ``ROOT/bundle``, writer B expert B (different weights and card
name), each in its own process, while a reader process keeps loading it. Every load must return
A or B, complete: the card and the weights of the same save (the weights' hash is in the card, so a
mixed pair fails verification), never a missing or half-deleted bundle.

    python benchmarks/bundle_swap.py --seconds 25 --out swap.json

prints and writes ``{"seconds", "saves": {"a", "b"}, "loads", "saw": {"a", "b"}, "failures",
"first_failures"}``; the exit status is 1 if any load failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import torch

from exmodel.experts.bundle import load_bundle, save_bundle
from exmodel.experts.card import ExpertCard
from exmodel.models import build_model


def _expert(name: str, seed: int):
    torch.manual_seed(seed)
    card = ExpertCard(name=name, arch="mlp", arch_kwargs={"num_classes": 2, "in_channels": 1, "input_size": 8,
                                                          "hidden": [16]},
                      class_ids=[0, 1], class_names=["0", "1"], trained_class_ids=[0, 1], num_global_classes=2,
                      input_shape=(1, 8, 8), normalization={"mean": [0.5], "std": [0.5]})
    return build_model("mlp", **card.arch_kwargs), card


def _writer(target: str, name: str, seed: int, seconds: float, ready, start, saves) -> None:
    torch.set_num_threads(1)
    net, card = _expert(name, seed)
    ready.release()
    start.wait()
    until = time.time() + seconds
    n = 0
    while time.time() < until:
        save_bundle((net, card.model_copy()), target)
        n += 1
    saves[name] = n


def _reader(target: str, seconds: float, ready, start, result) -> None:
    torch.set_num_threads(1)
    ready.release()
    start.wait()
    until = time.time() + seconds
    loads, saw, failures = 0, {"a": 0, "b": 0}, []
    while time.time() < until:
        try:
            expert = load_bundle(target)
        except Exception as exc:  # noqa: BLE001  every failure is what we count
            failures.append(f"{type(exc).__name__}: {exc}")
        else:
            saw[expert.card.name] += 1
        loads += 1
    result.update(loads=loads, saw=saw, failures=len(failures), first_failures=failures[:5])


def run(seconds: float, root: Path) -> dict:
    target = str(root / "bundle")
    save_bundle(_expert("a", 0), target)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        saves, result = manager.dict(), manager.dict()
        ready, start = ctx.Semaphore(0), ctx.Event()
        procs = [ctx.Process(target=_writer, args=(target, "a", 0, seconds, ready, start, saves)),
                 ctx.Process(target=_writer, args=(target, "b", 1, seconds, ready, start, saves)),
                 ctx.Process(target=_reader, args=(target, seconds, ready, start, result))]
        for p in procs:
            p.start()
        for _ in procs:  # all three have imported torch and built their experts: start together
            ready.acquire()
        start.set()
        for p in procs:
            p.join()
        leftovers = sorted(p.name for p in root.iterdir() if p.name != "bundle")
        return {"seconds": seconds, "saves": dict(saves), **dict(result), "leftover_entries": leftovers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--dir", type=Path, help="folder to race in (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        report = run(args.seconds, root)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if report.get("failures", 1) or report.get("leftover_entries") else 0


if __name__ == "__main__":
    sys.exit(main())

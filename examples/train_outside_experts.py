"""Two MNIST experts trained the way a user trains them: plain PyTorch, no exmodel.

This script imports nothing from exmodel. It stands for "a model somebody else trained": two sites,
each with its own architecture, input normalization and private class group,

* ``mlp``: 784-256-128-5 multilayer perceptron, ReLU, **no normalization layers**, inputs
  ``(x - 0.5) / 0.5``, trained on digits 0-4 (output unit k is digit k);
* ``cnn``: two 3×3 convolutions with **BatchNorm**, max pooling, two linear layers, inputs
  ``(x - 0.1307) / 0.3081``, trained on digits 5-9 (output unit k is digit 5 + k);

and writes each one three ways, as users hand models over: ``NAME.pt`` (a ``state_dict``),
``NAME.pt2`` (a ``torch.export`` program with a dynamic batch dimension) and ``NAME.json`` (what the
model is: classes, normalization, input shape, test accuracy on its own digits).

    python examples/train_outside_experts.py --data-dir ../shared/data --out outside/

Reading MNIST needs only the four idx ``.gz`` files under ``DATA_DIR/mnist/``.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

SITES = {
    "mlp": {"digits": [0, 1, 2, 3, 4], "mean": 0.5, "std": 0.5},
    "cnn": {"digits": [5, 6, 7, 8, 9], "mean": 0.1307, "std": 0.3081},
}


class MLP(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(784, 256), nn.Linear(256, 128), nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.out(torch.relu(self.fc2(x)))


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(data_dir: Path, split: str, digits: list[int], limit: int | None, seed: int):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(data_dir / "mnist" / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(data_dir / "mnist" / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    keep = np.flatnonzero(np.isin(y, digits))
    if limit is not None:
        keep = np.random.default_rng(seed).permutation(keep)[:limit]
    images = torch.from_numpy(x[keep].astype(np.float32) / 255.0).unsqueeze(1)
    labels = torch.from_numpy(y[keep] - min(digits))  # local output unit
    return images, labels


def train_site(name: str, data_dir: Path, out: Path, epochs: int, limit: int | None, seed: int) -> dict:
    site = SITES[name]
    torch.manual_seed(seed)
    model = MLP() if name == "mlp" else SmallCNN()
    x, y = load_split(data_dir, "train", site["digits"], limit, seed)
    xt, yt = load_split(data_dir, "test", site["digits"], None if limit is None else max(limit // 5, 50), seed)
    norm = lambda t: (t - site["mean"]) / site["std"]  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(128):
            loss = nn.functional.cross_entropy(model(norm(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(norm(xt)).argmax(1) == yt).float().mean())
    torch.save(model.state_dict(), out / f"{name}.pt")
    # The program takes normalized images; the batch dimension is dynamic so any batch size runs.
    program = torch.export.export(model, (norm(x[:2]),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, out / f"{name}.pt2")
    description = {"classes": site["digits"], "mean": [site["mean"]], "std": [site["std"]],
                   "input_shape": [1, 28, 28], "test_accuracy": accuracy, "train_images": len(x),
                   "epochs": epochs, "seed": seed, "threads": torch.get_num_threads()}
    (out / f"{name}.json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding mnist/*.gz")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="train images per site (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sites", default="mlp,cnn")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; the trained weights depend on it, one gives the same on every run")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sites.split(","):
        d = train_site(name, args.data_dir, args.out, args.epochs, args.limit, args.seed)
        print(f"{name}: digits {d['classes']}, test accuracy on them {100 * d['test_accuracy']:.2f} % "
              f"-> {args.out / name}.pt, .pt2, .json")


if __name__ == "__main__":
    main()

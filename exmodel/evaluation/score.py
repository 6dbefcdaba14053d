"""Evaluate expert bundles on a labelled dataset (``exmodel evaluate``).

A bundle is scored the way it would be used: images in [0, 1] go through the bundle's own
normalization (its card), resized when the dataset's resolution differs from the card's (as
``exmodel consolidate`` feeds experts of other resolutions), and the prediction is the argmax over
the bundle's classes in the global label space. By default only the test images of the classes the
bundle was trained on count (``trained_class_ids``: an expert of two classes is judged on those two);
``all_classes=True`` counts every image, so classes the bundle never learnt score 0.

The dataset and the card must agree: same channel count, and every class id of the card names the
dataset's class of that id (MNIST's class 3 is called ``"3"``; a card that calls it ``"cat"`` was
trained on something else). Either mismatch is one clear error, before anything is computed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from exmodel.data.registry import load_dataset
from exmodel.data.types import ImageDataset
from exmodel.errors import DataError
from exmodel.evaluation.metrics import accuracy, per_class_accuracy
from exmodel.experts.bundle import load_bundle
from exmodel.experts.expert import Expert
from exmodel.progress import Progress
from exmodel.synthesis.base import fit_input, num_batches


def check_matches(expert: Expert, data: ImageDataset, dataset: str) -> None:
    """One clear error when the bundle's card cannot describe ``data`` (channels, class names)."""
    card = expert.card
    if card.input_shape[0] != data.input_shape[0]:
        raise DataError(f"bundle '{card.name}' takes {card.input_shape[0]}-channel images but dataset '{dataset}' "
                        f"has {data.input_shape[0]}-channel images")
    for cid, cname in zip(card.class_ids, card.class_names):
        if cid >= data.num_classes:
            raise DataError(f"bundle '{card.name}' has class id {cid} but dataset '{dataset}' has only "
                            f"{data.num_classes} classes")
        if cname != data.class_names[cid]:
            raise DataError(f"bundle '{card.name}' calls class {cid} '{cname}' but dataset '{dataset}' calls it "
                            f"'{data.class_names[cid]}'")


@torch.no_grad()
def predict(expert: Expert, data: ImageDataset, *, batch_size: int = 512, device: str = "cpu",
            progress: Progress | None = None) -> torch.Tensor:
    """The bundle's global class prediction for every image of ``data`` (int64, on the CPU)."""
    expert = expert.to(device).eval()
    task = progress.add(f"evaluate {expert.card.name}", total=num_batches(len(data), batch_size)) if progress else None
    out = []
    for start in range(0, len(data), batch_size):
        x = fit_input(data.float_images(slice(start, start + batch_size)), expert.card.input_shape)
        out.append(expert.global_logits(x.to(device)).argmax(1).cpu())
        if task is not None:
            progress.advance(task)  # type: ignore[union-attr]
    if task is not None:
        progress.remove(task)  # type: ignore[union-attr]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy_report(pred: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...]) -> dict:
    """Overall and per-class accuracy (in [0, 1]) of ``pred`` against ``labels``; classes without images
    are left out of the per-class table."""
    per_class = per_class_accuracy(pred, labels, len(class_names))
    support = torch.bincount(labels, minlength=len(class_names)).tolist()
    return {"images": int(labels.numel()), "accuracy": accuracy(pred, labels),
            "per_class": {class_names[c]: {"images": support[c], "accuracy": float(per_class[c])}
                          for c in range(len(class_names)) if support[c]}}


def evaluate(model: Expert | str | Path, dataset: str, *, split: str = "test", data_dir: str | None = None,
             all_classes: bool = False, batch_size: int = 512, device: str = "cpu",
             progress: Progress | None = None) -> dict:
    """Accuracy of ``model`` (an :class:`Expert` or a bundle path) on ``dataset``'s ``split``: overall
    and per class, on the images of its trained classes (``all_classes``: on every image)."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got '{split}'")
    bundle = model if not isinstance(model, Expert) else None
    expert = model if isinstance(model, Expert) else load_bundle(model)  # validated: hash, tensors, card
    splits = load_dataset(dataset, data_dir)
    data = splits.test if split == "test" else splits.train
    check_matches(expert, data, dataset)
    classes = sorted(expert.card.trained_class_ids)
    if not all_classes:
        keep = torch.isin(data.labels, torch.tensor(classes, dtype=torch.long))
        if not bool(keep.any()):
            raise DataError(f"dataset '{dataset}' ({split}) has no images of the classes bundle "
                            f"'{expert.card.name}' was trained on ({classes})")
        data = data.subset(torch.nonzero(keep).flatten())
    pred = predict(expert, data, batch_size=batch_size, device=device, progress=progress)
    report = accuracy_report(pred, data.labels, data.class_names)
    return {"bundle": str(bundle) if bundle is not None else None, "name": expert.card.name, "arch": expert.card.arch, "dataset": dataset,
            "split": split, "classes": "all" if all_classes else classes, **report}


evaluate_bundle = evaluate  # the name the command line used first

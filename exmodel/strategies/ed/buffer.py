"""The fixed-size synthetic buffer of Ex-Model Distillation (Algorithm 1, lines 3-5).

After expert i (1-based) the buffer holds ⌊N/i⌋ new samples from that expert and N − ⌊N/i⌋ samples
kept from the old buffer, chosen class-balanced, so its size never exceeds N whatever the stream's
length. Images are stored as uint8 (what the learner keeps between steps: 1 byte per pixel) or float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def class_balanced_subsample(labels: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``k`` samples (k ≤ len(labels)) spread as evenly as possible over the classes present:
    each class gets ⌊k/C⌋ or one more (classes with fewer samples give their surplus to the others)."""
    if k >= len(labels):
        return torch.arange(len(labels))
    classes = labels.unique()
    pools = {int(c): (labels == c).nonzero().squeeze(1) for c in classes}
    pools = {c: p[torch.randperm(len(p), generator=generator)] for c, p in pools.items()}
    quota = {c: 0 for c in pools}
    remaining = k
    open_classes = sorted(pools)
    while remaining > 0 and open_classes:
        share, extra = divmod(remaining, len(open_classes))
        order = torch.randperm(len(open_classes), generator=generator).tolist()
        nxt = []
        for rank, j in enumerate(order):
            c = open_classes[j]
            want = share + (1 if rank < extra else 0)
            take = min(want, len(pools[c]) - quota[c])
            quota[c] += take
            remaining -= take
            if quota[c] < len(pools[c]):
                nxt.append(c)
        open_classes = sorted(nxt)
    return torch.sort(torch.cat([pools[c][:quota[c]] for c in sorted(pools)])).values


@dataclass
class Buffer:
    capacity: int
    images: torch.Tensor | None = None  # (n, C, H, W), uint8 or float32 in [0, 1]
    labels: torch.Tensor | None = None  # (n,) global class ids
    quantize: bool = True  # store uint8

    def __len__(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    def update(self, step: int, x01: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        """Algorithm 1 lines 4-5 for the (0-based) ``step``: keep N − len(x) old samples, add the new ones."""
        x = (x01.clamp(0, 1) * 255).round().to(torch.uint8) if self.quantize else x01.float()
        if self.labels is None or step == 0:
            self.images, self.labels = x, y.clone()
            return
        keep = class_balanced_subsample(self.labels, max(0, self.capacity - len(y)), generator)
        self.images = torch.cat([self.images[keep], x])
        self.labels = torch.cat([self.labels[keep], y])

    def float_images(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.images[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def new_samples_per_step(capacity: int, step: int) -> int:
    """⌊N/i⌋ for the 0-based step (i = step + 1), Eq. 5."""
    return capacity // (step + 1)

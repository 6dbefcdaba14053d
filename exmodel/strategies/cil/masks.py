"""Which step owns each weight: M²KD's model reconstruction by pruning masks (Sec. 3.3, Algorithm 1).

Every weight of the network's convolutions and hidden linear layers (the *prunable* tensors: not the
classifier, not biases or BatchNorm) has an owner: 0 while it is free, ``k`` once step ``k`` has
frozen it. After step ``k`` trains, :meth:`StepMasks.prune` keeps the largest ``1 − ratio`` of the
weights that were still free, tags them ``k``, and sets the others to zero: they are released to the
next steps. Frozen weights never change again (:meth:`StepMasks.hold` restores them after every
optimiser step, which is exact whatever the optimiser, its momentum or weight decay do).

So the network as it was at the end of step ``k`` is the current network with every weight owned by
a later step (or still free) set to zero — Eq. 7, ``w · δ(M ≤ k)`` — plus the parameters that are not
masked (biases, BatchNorm, the classifier), which each step saves (:meth:`StepMasks.rebuild`).

Owners are kept as one byte per weight while training; :func:`pack_owners` stores them in
``bit_length(steps)`` bits each (3 bits for 5 steps, 4 for 10).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from exmodel.errors import ConfigError, ExmodelError


def prunable_names(model: nn.Module, skip: Iterable[nn.Module] = ()) -> list[str]:
    """Parameter names of the weights of every Conv/Linear in ``model`` except those inside the
    modules in ``skip`` (the classifier heads), in ``named_parameters`` order."""
    skipped = {id(sub) for m in skip for sub in m.modules()}
    names = []
    for mod_name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and id(module) not in skipped:
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def free_weights_after(sizes: Mapping[str, int], ratio: float, steps: int) -> dict[str, list[int]]:
    """Per tensor, how many weights are free before each of ``steps`` steps (the same rounding as
    :meth:`StepMasks.prune`)."""
    out = {}
    for name, n in sizes.items():
        free, counts = n, []
        for _ in range(steps):
            counts.append(free)
            free -= keep_count(free, ratio)
        out[name] = counts
    return out


def keep_count(free: int, ratio: float) -> int:
    """Weights a step freezes out of ``free``: the largest ``1 − ratio`` of them, at least one."""
    return min(free, max(1, int(round((1.0 - ratio) * free)))) if free else 0


def check_capacity(sizes: Mapping[str, int], ratio: float, steps: int) -> None:
    """A :class:`ConfigError` when some tensor would have no free weight left for one of ``steps``."""
    for name, counts in free_weights_after(sizes, ratio, steps).items():
        if counts and counts[-1] < 1:
            last = next(i for i, c in enumerate(counts) if c < 1)
            raise ConfigError(f"pruning ratio {ratio}: {name} ({sizes[name]} weights) has no free weight left "
                              f"for step {last + 1} of {steps}; use a higher ratio (more weights released per "
                              f"step) or fewer steps")


class StepMasks:
    """Owners of the prunable weights of ``model`` and, per finished step, its unmasked state."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ExmodelError(f"no parameter {', '.join(missing)} in the model")
        self.names = list(names)
        self.owner = {n: torch.zeros(params[n].shape, dtype=torch.uint8, device=params[n].device) for n in names}
        self.saved: list[dict[str, torch.Tensor]] = []  # per finished step: every state entry not masked
        self._fixed: dict[str, torch.Tensor] = {}
        self._trainable: dict[str, torch.Tensor] = {}

    @property
    def steps(self) -> int:
        return len(self.saved)

    def sizes(self) -> dict[str, int]:
        return {n: o.numel() for n, o in self.owner.items()}

    def free_counts(self) -> dict[str, int]:
        return {n: int((o == 0).sum()) for n, o in self.owner.items()}

    def owned_counts(self) -> dict[str, list[int]]:
        """Per tensor, how many weights each step 1..steps owns."""
        return {n: [int((o == k).sum()) for k in range(1, self.steps + 1)] for n, o in self.owner.items()}

    # ------------------------------------------------------------------ training phases

    def train_free(self, model: nn.Module) -> None:
        """Before a step trains: only the free weights may move."""
        self._start(model, {n: o == 0 for n, o in self.owner.items()})

    def train_owned(self, model: nn.Module, step_id: int) -> None:
        """After pruning (the fine-tuning phase): only the weights ``step_id`` just froze may move."""
        self._start(model, {n: o == step_id for n, o in self.owner.items()})

    def _start(self, model: nn.Module, trainable: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        self._trainable = trainable
        self._fixed = {n: params[n].detach().clone() for n in self.names}

    @torch.no_grad()
    def hold(self, model: nn.Module) -> None:
        """After an optimiser step: every weight outside the trainable set back to its value."""
        params = dict(model.named_parameters())
        for n in self.names:
            params[n].copy_(torch.where(self._trainable[n], params[n], self._fixed[n]))

    @torch.no_grad()
    def prune(self, model: nn.Module, step_id: int, ratio: float) -> None:
        """Freeze the largest ``1 − ratio`` of the free weights under ``step_id``; zero the others."""
        if step_id != self.steps + 1 or step_id > 255:
            raise ExmodelError(f"step {step_id} cannot be pruned after {self.steps} steps")
        params = dict(model.named_parameters())
        for n in self.names:
            w, owner = params[n], self.owner[n]
            free = (owner == 0).flatten().nonzero().squeeze(1)
            if free.numel() == 0:
                raise ExmodelError(f"{n} has no free weight left for step {step_id}")
            keep = keep_count(free.numel(), ratio)
            # stable sort: equal magnitudes are kept in index order, the same on every run
            order = torch.sort(w.detach().flatten()[free].abs(), descending=True, stable=True).indices
            flat_owner, flat_w = owner.view(-1), w.data.view(-1)
            flat_owner[free[order[:keep]]] = step_id
            flat_w[free[order[keep:]]] = 0.0

    def save_step(self, model: nn.Module) -> None:
        """Record the finished step's unmasked state (biases, BatchNorm, classifiers)."""
        masked = set(self.names)
        self.saved.append({k: v.detach().clone() for k, v in model.state_dict().items() if k not in masked})

    # ------------------------------------------------------------------ reconstruction

    @torch.no_grad()
    def rebuild(self, model: nn.Module, step_id: int) -> nn.Module:
        """A frozen copy of ``model`` as it was at the end of step ``step_id`` (Eq. 7-8)."""
        if not 1 <= step_id <= self.steps:
            raise ExmodelError(f"no step {step_id} to rebuild: steps 1..{self.steps} are saved")
        snapshot = copy.deepcopy(model)
        state = dict(self.saved[step_id - 1])
        current = dict(model.named_parameters())
        for n in self.names:
            owner = self.owner[n]
            state[n] = torch.where((owner >= 1) & (owner <= step_id), current[n].detach(),
                                   torch.zeros((), dtype=current[n].dtype, device=current[n].device))
        snapshot.load_state_dict(state)
        snapshot.eval()
        for p in snapshot.parameters():
            p.requires_grad_(False)
        return snapshot

    def check_against(self, model: nn.Module) -> None:
        """Raise when the masks do not fit ``model``: shapes, owners beyond the saved steps, or a weight
        that no step owns but is not zero (a network changed after its masks were taken)."""
        params = dict(model.named_parameters())
        for n in self.names:
            if n not in params or params[n].shape != self.owner[n].shape:
                got = tuple(params[n].shape) if n in params else "missing"
                raise ExmodelError(f"masks do not match the weights: {n} has shape {got}, "
                                   f"its mask {tuple(self.owner[n].shape)}")
            top = int(self.owner[n].max()) if self.owner[n].numel() else 0
            if top > self.steps:
                raise ExmodelError(f"masks do not match the saved steps: {n} has weights of step {top}, "
                                   f"{self.steps} steps are saved")
            stray = int(((self.owner[n] == 0) & (params[n].detach() != 0)).sum())
            if stray and self.steps:
                raise ExmodelError(f"masks do not match the weights: {n} has {stray} nonzero weights "
                                   f"that no step owns")

    # ------------------------------------------------------------------ what is kept

    def state(self) -> dict:
        return {"owners": pack_owners([self.owner[n] for n in self.names], self.steps), "saved": self.saved}


def pack_owners(owners: list[torch.Tensor], steps: int) -> torch.Tensor:
    """The owners of all tensors, concatenated, in ``max(1, steps.bit_length())`` bits each (uint8)."""
    bits = max(1, int(steps).bit_length())
    flat = torch.cat([o.flatten() for o in owners]).cpu().numpy().astype(np.uint8) if owners else np.zeros(0, np.uint8)
    if flat.size and int(flat.max()) >= 1 << bits:
        raise ExmodelError(f"an owner id {int(flat.max())} does not fit in {bits} bits")
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (N, bits), least significant first
    return torch.from_numpy(np.packbits(planes.reshape(-1)))


def unpack_owners(packed: torch.Tensor, shapes: list[tuple[int, ...]], steps: int) -> list[torch.Tensor]:
    """The inverse of :func:`pack_owners`; an :class:`ExmodelError` when the sizes disagree."""
    bits = max(1, int(steps).bit_length())
    total = sum(int(np.prod(s)) for s in shapes)
    need = -(-total * bits // 8)
    if packed.dtype != torch.uint8 or packed.numel() != need:
        raise ExmodelError(f"packed masks hold {packed.numel()} bytes, {need} expected for {total} weights "
                           f"at {bits} bits")
    planes = np.unpackbits(packed.numpy())[: total * bits].reshape(total, bits)
    flat = (planes.astype(np.uint8) << np.arange(bits, dtype=np.uint8)).sum(1).astype(np.uint8)
    out, start = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(torch.from_numpy(flat[start:start + n].copy()).view(s))
        start += n
    return out

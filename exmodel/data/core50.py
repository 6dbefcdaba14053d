"""CORe50 (Lomonaco & Maltoni, CoRL 2017): the 128x128 release and its NI / NC protocols.

The dataset. 50 handheld objects in 10 categories, 5 consecutive objects per category (o1..o5 plug
adapters, o6..o10 mobile phones, ... o46..o50 remote controls; order in :data:`CATEGORIES`), each
filmed in 11 sessions s1..s11 with a different background / lighting, about 300 frames per
(session, object). The "128x128" release is ``core50_128x128.zip``; it unpacks to::

    core50_128x128/s{S}/o{O}/C_{SS}_{OO}_{FFF}.png     S = 1..11, O = 1..50, FFF = frame number

:func:`read_core50` reads that folder into one :class:`Core50Data` (images, labels, and the session,
object and frame of every image). Labels are indices into the objects (or categories) present in
the folder, sorted by id: on the complete dataset that is ``object_id - 1`` (0..49), or the
category index (0..9) with ``category_level=True``. Images are sorted by (session, object, frame).

The protocols. Every CORe50 benchmark tests on sessions 3, 7 and 10 and trains on the other eight.

* :func:`core50_splits` — plain train / test by session (what ``load_dataset("core50", dir)`` gives).
* :func:`core50_ni_experiences` — New Instances. The original NI benchmark has 8 training batches,
  one per training session, each holding all 50 objects, evaluated on the common test set. The
  ex-model paper's Table 1 lists CORe50-NI with 9 experiences, so the count is a parameter: fewer
  than 8 merges consecutive sessions, more than 8 cuts sessions into consecutive runs of frames
  (per object, so every piece still holds every object).
* :func:`core50_nc_experiences` — New Classes: a seeded order of the objects, 10 in the first
  experience and 5 in each of the next 8 (9 in all, as in the original NC benchmark). Each
  experience is tested on the test-session images of its own classes, like the generic NC builder.
  (The official NC benchmark ships fixed class orders per run; this uses a seeded permutation.)

Normalization. Mean/std are the ImageNet statistics (CORe50 experts are commonly ImageNet-pretrained
networks); they are not computed from CORe50.

Memory. The whole dataset (about 165k images) takes 128*128*3 bytes each, about 8 GB as uint8 in
memory; ``max_per_session_object`` or ``size`` keep quick runs small.

The archive. When the folder is absent but ``core50_128x128.zip`` is there (or downloaded), it is
checked against its published md5 and unpacked into a temporary folder beside it; members that could
land outside it (absolute paths, ``..``, links) are refused, and the folder is renamed into place only
once complete, so a half-extracted copy never appears under its final name.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from exmodel.data.catalog import DatasetInfo, verify_md5
from exmodel.data.download import download as download_file
from exmodel.data.types import DatasetSplits, ImageDataset
from exmodel.data.archives import extract_archive
from exmodel.errors import ConfigError, DataError

NUM_SESSIONS = 11
NUM_OBJECTS = 50
OBJECTS_PER_CATEGORY = 5
TEST_SESSIONS = (3, 7, 10)
TRAIN_SESSIONS = tuple(s for s in range(1, NUM_SESSIONS + 1) if s not in TEST_SESSIONS)  # 8 sessions
CATEGORIES = (
    "plug_adapter",
    "mobile_phone",
    "scissors",
    "light_bulb",
    "can",
    "glasses",
    "ball",
    "marker",
    "cup",
    "remote_control",
)
OBJECT_NAMES = tuple(f"o{i}" for i in range(1, NUM_OBJECTS + 1))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FOLDER_NAME = "core50_128x128"
ZIP_NAME = "core50_128x128.zip"

_LAYOUT = f"{FOLDER_NAME}/s1..s11/o1..o50/C_SS_OO_FFF.png"
_OBJECT_DIR = re.compile(r"o(\d+)")
_FRAME_FILE = re.compile(r"C_(\d{2})_(\d{2})_(\d+)\.png")


@dataclass(frozen=True)
class Core50Data:
    """Every image of a CORe50 folder, with where it came from."""

    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,), index into class_names
    objects: torch.Tensor  # int64 (N,), object id 1..50 (from the folder name)
    sessions: torch.Tensor  # int64 (N,), session 1..11
    frames: torch.Tensor  # int64 (N,), frame number from the file name
    class_names: tuple[str, ...]
    name: str = "core50"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dataset(self) -> ImageDataset:
        """All images as one :class:`ImageDataset` (shares memory with this object); its ``groups`` are
        the sessions, so the generic NI builder can split by session (``scenario.ni_split: groups``)."""
        return ImageDataset(self.images, self.labels, self.class_names, self.name, self.mean, self.std, self.sessions)

    def session_index(self, sessions: Iterable[int]) -> torch.Tensor:
        """Indices (ascending) of the images recorded in ``sessions``."""
        return torch.isin(self.sessions, torch.tensor(list(sessions), dtype=torch.int64)).nonzero().squeeze(1)

    def select(self, index: torch.Tensor) -> ImageDataset:
        return self.dataset.subset(index)


class Core50Experience(NamedTuple):
    """One experience of a protocol: its training images, its test images and its classes."""

    train: ImageDataset
    test: ImageDataset
    classes: tuple[int, ...]


# --------------------------------------------------------------------------------------------------
# Reading the folder


def _object_dirs(session_dir: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for d in session_dir.iterdir():
        if d.name.startswith(".") or not d.is_dir():
            continue
        m = _OBJECT_DIR.fullmatch(d.name)
        if not m or not 1 <= int(m[1]) <= NUM_OBJECTS:
            raise DataError(f"{d}: unexpected folder in a CORe50 session (object folders are o1..o50)")
        found[int(m[1])] = d
    if not found:
        raise DataError(f"{session_dir}: no object folders (expected {_LAYOUT})")
    return found


def _frame_files(object_dir: Path, session: int, obj: int) -> list[tuple[int, Path]]:
    frames: dict[int, Path] = {}
    for p in object_dir.iterdir():
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() != ".png":
            continue  # stray non-image files (thumbnails databases, notes) are ignored
        m = _FRAME_FILE.fullmatch(p.name)
        if not m or int(m[1]) != session or int(m[2]) != obj:
            raise DataError(f"{p}: bad CORe50 file name (expected C_{session:02d}_{obj:02d}_<frame>.png here)")
        frame = int(m[3])
        if frame in frames:
            raise DataError(f"{p}: frame {frame} appears twice (also {frames[frame].name})")
        frames[frame] = p
    if not frames:
        raise DataError(f"{object_dir}: no PNG frames (expected C_{session:02d}_{obj:02d}_<frame>.png)")
    return sorted(frames.items())


def _evenly_spaced(n: int, k: int | None) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (first and last included); all when ``k`` is None."""
    if k is None or k >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)})


def scan_core50(root: str | os.PathLike, max_per_session_object: int | None = None) -> list[tuple[int, int, int, Path]]:
    """(session, object, frame, path) of every frame to read, sorted; checks the layout only."""
    root = Path(root)
    if max_per_session_object is not None and max_per_session_object < 1:
        raise DataError(f"max_per_session_object must be at least 1, got {max_per_session_object}")
    if not root.is_dir():
        raise DataError(f"{root}: CORe50 folder not found (expected {_LAYOUT})")
    entries: list[tuple[int, int, int, Path]] = []
    objects_by_session: dict[int, set[int]] = {}
    for s in range(1, NUM_SESSIONS + 1):
        session_dir = root / f"s{s}"
        if not session_dir.is_dir():
            raise DataError(f"{session_dir}: session folder missing (CORe50 has sessions s1..s11)")
        dirs = _object_dirs(session_dir)
        objects_by_session[s] = set(dirs)
        for o in sorted(dirs):
            frames = _frame_files(dirs[o], s, o)
            keep = _evenly_spaced(len(frames), max_per_session_object)
            entries.extend((s, o, frames[i][0], frames[i][1]) for i in keep)
    every = set().union(*objects_by_session.values())
    for s, objs in objects_by_session.items():
        if objs != every:
            missing = ", ".join(f"o{o}" for o in sorted(every - objs))
            raise DataError(f"{root / f's{s}'}: missing object folder(s) {missing} that other sessions have")
    return entries


def _decode(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc
    return arr.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def read_core50(
    root: str | os.PathLike,
    size: int | None = None,
    category_level: bool = False,
    max_per_session_object: int | None = None,
) -> Core50Data:
    """Read an extracted ``core50_128x128`` folder (all 11 sessions) into a :class:`Core50Data`.

    ``size`` resizes every image to ``size x size`` (bilinear); without it all images must share one
    size. ``category_level`` labels images by category instead of object. ``max_per_session_object``
    keeps that many evenly spaced frames of each (session, object) video, for quick runs.
    """
    if size is not None and size < 1:
        raise DataError(f"CORe50 image size must be positive, got {size}")
    entries = scan_core50(root, max_per_session_object)
    first = _decode(entries[0][3], size)
    images = np.empty((len(entries), *first.shape), dtype=np.uint8)  # filled in place: no 2x peak
    images[0] = first
    for i, (_, _, _, path) in enumerate(entries[1:], start=1):
        arr = _decode(path, size)
        if arr.shape != first.shape:
            raise DataError(
                f"{path}: image is {arr.shape[1]}x{arr.shape[2]} but {entries[0][3]} is "
                f"{first.shape[1]}x{first.shape[2]}; pass a size to resize them all"
            )
        images[i] = arr

    meta = np.array([e[:3] for e in entries], dtype=np.int64)  # (N, 3): session, object, frame
    objects = meta[:, 1]
    keys = (objects - 1) // OBJECTS_PER_CATEGORY if category_level else objects
    present = np.unique(keys)
    labels = np.searchsorted(present, keys)  # rank among the present objects / categories
    names = tuple(CATEGORIES[k] for k in present) if category_level else tuple(f"o{k}" for k in present)
    return Core50Data(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels.astype(np.int64)),
        objects=torch.from_numpy(objects.copy()),
        sessions=torch.from_numpy(meta[:, 0].copy()),
        frames=torch.from_numpy(meta[:, 2].copy()),
        class_names=names,
    )


# --------------------------------------------------------------------------------------------------
# Protocols


def core50_splits(data: Core50Data) -> DatasetSplits:
    """Train = sessions 1, 2, 4, 5, 6, 8, 9, 11; test = sessions 3, 7, 10."""
    train = data.select(data.session_index(TRAIN_SESSIONS))
    return DatasetSplits(train, data.select(data.session_index(TEST_SESSIONS)))


def split_by_groups(
    groups: torch.Tensor,
    strata: torch.Tensor,
    order: Sequence[int],
    n_experiences: int,
    names: tuple[str, str, str] = ("group ", "class ", "sample"),
) -> list[torch.Tensor]:
    """Indices (ascending) of the ``n_experiences`` blocks of a New Instances split along ``groups``.

    ``order`` lists the groups to use, in stream order (samples of other groups are left out). With as
    many experiences as groups, block ``i`` is group ``order[i]``. Fewer merge consecutive groups
    (``np.array_split`` of ``order``). More give the first ``n % len(order)`` groups one extra cut:
    a group is cut into runs of consecutive samples (in index order) separately for every stratum
    (class / object), so every piece still holds every stratum. ``names`` (group prefix, stratum
    prefix, unit) only word the error raised when a stratum has fewer samples than pieces.

    Shared by :func:`core50_ni_experiences` (groups = sessions, strata = objects) and the generic
    ``ni`` builder with ``scenario.ni_split: groups`` (groups = ``ImageDataset.groups``, strata = labels).
    """
    if n_experiences < 1 or not order:
        raise ConfigError(f"a split by groups needs at least 1 experience and 1 group, got {n_experiences} "
                          f"and {len(order)}")
    order = [int(g) for g in order]
    if n_experiences <= len(order):
        merged = np.array_split(np.array(order), n_experiences)
        return [torch.isin(groups, torch.tensor(m.tolist(), dtype=torch.int64)).nonzero().squeeze(1) for m in merged]
    used = torch.isin(groups, torch.tensor(order, dtype=torch.int64))
    every_stratum = torch.unique(strata[used]).tolist()
    base, extra = divmod(n_experiences, len(order))
    blocks: list[torch.Tensor] = []
    group_name, stratum_name, unit = names
    for i, g in enumerate(order):
        pieces = base + (1 if i < extra else 0)
        parts: list[list[torch.Tensor]] = [[] for _ in range(pieces)]
        for st in every_stratum:
            idx = ((groups == g) & (strata == st)).nonzero().squeeze(1)  # ascending: consecutive samples
            if len(idx) < pieces:
                raise ConfigError(
                    f"cannot cut {group_name}{g} into {pieces} pieces: {stratum_name}{st} has only {len(idx)} "
                    f"{unit}(s) there"
                )
            for k, chunk in enumerate(torch.tensor_split(idx, pieces)):
                parts[k].append(chunk)
        blocks.extend(torch.sort(torch.cat(p)).values for p in parts)
    return blocks


def core50_ni_experiences(
    data: Core50Data, n_experiences: int = len(TRAIN_SESSIONS), seed: int | None = None
) -> list[Core50Experience]:
    """New Instances: the training sessions in order, every experience with all classes.

    ``n_experiences == 8`` is the original protocol (one session each). Fewer merges consecutive
    sessions; more gives the first ``n % 8`` sessions one extra cut, so ``n = 9`` splits s1 into its
    first and second half (see :func:`split_by_groups`). ``seed`` shuffles the session order (None:
    s1, s2, s4, ..., s11). Every experience is tested on the whole common test set (sessions 3, 7, 10).
    """
    if n_experiences < 1:
        raise ConfigError(f"CORe50-NI needs at least 1 experience, got {n_experiences}")
    sessions = list(TRAIN_SESSIONS)
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        sessions = [sessions[i] for i in torch.randperm(len(sessions), generator=g).tolist()]
    blocks = split_by_groups(data.sessions, data.objects, sessions, n_experiences, ("session s", "object o", "frame"))
    test = data.select(data.session_index(TEST_SESSIONS))
    classes = tuple(range(data.num_classes))
    return [Core50Experience(data.select(b), test, classes) for b in blocks]


def core50_nc_experiences(
    data: Core50Data, first: int = 10, per_step: int = 5, seed: int = 0
) -> list[Core50Experience]:
    """New Classes: a seeded class order, ``first`` classes then ``per_step`` per experience.

    On the full dataset the defaults give the original 9 experiences (10 + 8 x 5 objects). Each
    experience trains on the training-session images of its classes and is tested on the test-session
    images of the same classes. ``classes`` are listed in ascending order.
    """
    k = data.num_classes
    if not 1 <= first <= k or per_step < 1 or (k - first) % per_step:
        raise ConfigError(
            f"CORe50-NC cannot split {k} classes into {first} first and then groups of {per_step} "
            f"(need 1 <= first <= {k}, per_step >= 1 and {k} - first divisible by per_step)"
        )
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(k, generator=g).tolist()
    groups = [order[:first]] + [order[i : i + per_step] for i in range(first, k, per_step)]
    splits = core50_splits(data)
    out = []
    for grp in groups:
        wanted = torch.tensor(grp, dtype=torch.int64)
        tr = splits.train.subset(torch.isin(splits.train.labels, wanted).nonzero().squeeze(1))
        te = splits.test.subset(torch.isin(splits.test.labels, wanted).nonzero().squeeze(1))
        out.append(Core50Experience(tr, te, tuple(sorted(grp))))
    return out


# --------------------------------------------------------------------------------------------------
# The archive and the catalog entry


def extract_core50_zip(archive: str | os.PathLike, dest_dir: str | os.PathLike, top_dir: str = FOLDER_NAME) -> Path:
    """Safely unpack an (already verified) ``archive`` so that ``dest_dir/top_dir`` appears complete."""
    return extract_archive(archive, dest_dir, top_dir)


def load_core50_splits(info: DatasetInfo, data_dir: Path, download: bool = False) -> DatasetSplits:
    """The catalog entry ``core50``: ``data_dir/core50_128x128`` (extracted from the zip if needed),
    object labels, train/test by session, the catalog's (ImageNet) mean/std."""
    folder = data_dir / info.extracted_dir
    if not folder.is_dir():
        (remote,) = info.files
        archive = data_dir / remote.relpath
        if not archive.is_file():
            if not download:
                raise DataError(
                    f"{info.name}: neither {folder} nor {archive} exists; download {remote.url} into {data_dir}, "
                    "or enable downloading (download=True / --download)"
                )
            download_file(remote.url, archive, remote.md5)
        verify_md5(archive, remote.md5, remote.relpath)
        extract_core50_zip(archive, data_dir, info.extracted_dir)
    data = read_core50(folder)
    if data.class_names != info.class_names:
        shown = ", ".join(data.class_names[:5]) + (", ..." if data.num_classes > 5 else "")
        raise DataError(
            f"{folder}: has {data.num_classes} object folder(s) ({shown}); the full {info.name} dataset has o1..o50"
        )
    data = dataclasses.replace(data, class_names=info.class_names, name=info.name, mean=info.mean, std=info.std)
    return core50_splits(data)

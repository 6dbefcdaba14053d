"""CORe50 reader and protocols on a tiny fake copy written by the tests.

The fake copy has the real layout (``core50_128x128/s{S}/o{O}/C_SS_OO_FFF.png``); every image is a
constant colour encoding where it came from (red = 10 * session, green = 10 * object, blue = 10 *
frame + 5), so the tests can check that each image landed next to its own labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exmodel.data import catalog, load_dataset, registry
from exmodel.data.core50 import (
    TEST_SESSIONS,
    TRAIN_SESSIONS,
    core50_nc_experiences,
    core50_ni_experiences,
    core50_splits,
    extract_core50_zip,
    read_core50,
)
from exmodel.errors import ConfigError, DataError


def _colour(s: int, o: int, f: int) -> tuple[int, int, int]:
    return (10 * s, 10 * o, 10 * f + 5)


def write_fake_core50(root: Path, objects: int = 4, frames: int = 2, side: int = 8) -> Path:
    """``root/core50_128x128`` with ``objects`` objects x 11 sessions x ``frames`` frames."""
    folder = root / "core50_128x128"
    for s in range(1, 12):
        for o in range(1, objects + 1):
            d = folder / f"s{s}" / f"o{o}"
            d.mkdir(parents=True)
            for f in range(frames):
                Image.new("RGB", (side, side), _colour(s, o, f)).save(d / f"C_{s:02d}_{o:02d}_{f:03d}.png")
    return folder


def zip_folder(folder: Path, archive: Path) -> str:
    """Zip ``folder`` (as its own top directory) into ``archive``; return the archive's md5."""
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(folder.parent).as_posix())
    return hashlib.md5(archive.read_bytes()).hexdigest()


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_fake_core50(tmp_path)


def test_read_parses_labels_sessions_and_pixels(tiny: Path) -> None:
    data = read_core50(tiny)
    assert len(data) == 4 * 11 * 2
    assert data.images.shape == (88, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.class_names == ("o1", "o2", "o3", "o4")
    # Sorted by (session, object, frame): the first four images are s1/o1/f0, s1/o1/f1, s1/o2/f0, s1/o2/f1.
    assert data.sessions[:4].tolist() == [1, 1, 1, 1] and data.objects[:4].tolist() == [1, 1, 2, 2]
    assert data.frames[:4].tolist() == [0, 1, 0, 1] and data.labels[:4].tolist() == [0, 0, 1, 1]
    assert data.sessions[-1].item() == 11 and data.labels[-1].item() == 3
    for i in range(len(data)):
        s, o, f = int(data.sessions[i]), int(data.objects[i]), int(data.frames[i])
        assert data.labels[i].item() == o - 1
        assert data.images[i, :, 3, 5].tolist() == list(_colour(s, o, f))
    view = data.dataset
    assert view.num_classes == 4 and view.input_shape == (3, 8, 8) and view.mean == (0.485, 0.456, 0.406)


def test_category_level_labels(tmp_path: Path) -> None:
    # o1..o5 are plug adapters, o6 and o7 mobile phones.
    data = read_core50(write_fake_core50(tmp_path, objects=7, frames=1), category_level=True)
    assert data.class_names == ("plug_adapter", "mobile_phone")
    assert data.labels[:7].tolist() == [0, 0, 0, 0, 0, 1, 1]


def test_resize_and_frame_subsampling(tmp_path: Path) -> None:
    data = read_core50(write_fake_core50(tmp_path, objects=2, frames=5), size=4, max_per_session_object=3)
    assert data.images.shape == (2 * 11 * 3, 3, 4, 4)
    # 3 evenly spaced frames out of 0..4 are 0, 2, 4 (first and last kept).
    assert data.frames[:3].tolist() == [0, 2, 4]
    # A constant image stays constant under bilinear resizing.
    assert data.images[1].reshape(3, -1).unique(dim=1).squeeze(1).tolist() == list(_colour(1, 1, 2))


def test_splits_by_session(tiny: Path) -> None:
    data = read_core50(tiny)
    splits = core50_splits(data)
    assert len(splits.train) == 8 * 8 and len(splits.test) == 3 * 8
    # Red channel = 10 * session, so the sessions of each split can be read back from the pixels.
    assert set((splits.train.images[:, 0, 0, 0] // 10).tolist()) == {1, 2, 4, 5, 6, 8, 9, 11}
    assert set((splits.test.images[:, 0, 0, 0] // 10).tolist()) == {3, 7, 10}


def _sample_keys(ds) -> list[tuple[int, ...]]:
    """(session, object, frame) of each image, decoded from its colour."""
    px = ds.images[:, :, 0, 0].tolist()
    return [(r // 10, g // 10, (b - 5) // 10) for r, g, b in px]


def test_ni_default_is_one_session_per_experience(tiny: Path) -> None:
    data = read_core50(tiny)
    exps = core50_ni_experiences(data)
    assert len(exps) == 8
    for exp, session in zip(exps, TRAIN_SESSIONS, strict=True):
        keys = _sample_keys(exp.train)
        assert {k[0] for k in keys} == {session} and len(keys) == 8
        assert sorted(set(exp.train.labels.tolist())) == [0, 1, 2, 3] and exp.classes == (0, 1, 2, 3)
        assert {k[0] for k in _sample_keys(exp.test)} == set(TEST_SESSIONS) and len(exp.test) == 24
    all_train = [k for e in exps for k in _sample_keys(e.train)]
    assert len(all_train) == len(set(all_train)) == len(core50_splits(data).train)  # disjoint and covering


def test_ni_nine_experiences_split_the_first_session(tiny: Path) -> None:
    exps = core50_ni_experiences(read_core50(tiny), n_experiences=9)
    assert len(exps) == 9
    # s1 is cut into its first frames and its last frames, each with every object.
    assert sorted(_sample_keys(exps[0].train)) == [(1, o, 0) for o in range(1, 5)]
    assert sorted(_sample_keys(exps[1].train)) == [(1, o, 1) for o in range(1, 5)]
    assert {k[0] for k in _sample_keys(exps[2].train)} == {2}
    all_train = [k for e in exps for k in _sample_keys(e.train)]
    assert len(all_train) == len(set(all_train)) == 64


def test_ni_fewer_experiences_merge_sessions_and_seed_shuffles(tiny: Path) -> None:
    data = read_core50(tiny)
    merged = core50_ni_experiences(data, n_experiences=3)
    assert [sorted({k[0] for k in _sample_keys(e.train)}) for e in merged] == [[1, 2, 4], [5, 6, 8], [9, 11]]
    shuffled = [sorted({k[0] for k in _sample_keys(e.train)})[0] for e in core50_ni_experiences(data, seed=3)]
    again = [sorted({k[0] for k in _sample_keys(e.train)})[0] for e in core50_ni_experiences(data, seed=3)]
    assert shuffled == again and sorted(shuffled) == list(TRAIN_SESSIONS)
    with pytest.raises(ConfigError, match="only 2 frame"):
        core50_ni_experiences(data, n_experiences=24)  # 3 pieces per session, 2 frames per object
    with pytest.raises(ConfigError, match="at least 1"):
        core50_ni_experiences(data, n_experiences=0)


def test_nc_experiences_disjoint_and_seeded(tiny: Path) -> None:
    data = read_core50(tiny)
    exps = core50_nc_experiences(data, first=2, per_step=1, seed=7)
    assert [len(e.classes) for e in exps] == [2, 1, 1]
    covered = [c for e in exps for c in e.classes]
    assert sorted(covered) == [0, 1, 2, 3]
    for e in exps:
        assert set(e.train.labels.tolist()) == set(e.classes) == set(e.test.labels.tolist())
        assert len(e.train) == 8 * 2 * len(e.classes) and len(e.test) == 3 * 2 * len(e.classes)
        assert {k[0] for k in _sample_keys(e.test)} <= set(TEST_SESSIONS)
    # Same seed, same order; the order is torch.randperm(4) under seed 7.
    expected = torch.randperm(4, generator=torch.Generator().manual_seed(7)).tolist()
    assert [e.classes for e in exps] == [tuple(sorted(expected[:2])), (expected[2],), (expected[3],)]
    assert [e.classes for e in core50_nc_experiences(data, first=2, per_step=1, seed=7)] == [e.classes for e in exps]
    orders = {tuple(e.classes for e in core50_nc_experiences(data, first=2, per_step=1, seed=s)) for s in range(6)}
    assert len(orders) > 1
    with pytest.raises(ConfigError, match="groups of 3"):
        core50_nc_experiences(data, first=2, per_step=3)


def test_missing_folder_and_session(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CORe50 folder not found"):
        read_core50(tmp_path / "nope")
    folder = write_fake_core50(tmp_path, objects=1, frames=1)
    for p in (folder / "s7" / "o1").iterdir():
        p.unlink()
    (folder / "s7" / "o1").rmdir()
    (folder / "s7").rmdir()
    with pytest.raises(DataError, match=r"s7: session folder missing"):
        read_core50(folder)


def test_bad_file_name_and_missing_object(tmp_path: Path) -> None:
    folder = write_fake_core50(tmp_path, objects=2, frames=1)
    bad = folder / "s2" / "o1" / "C_03_01_000.png"  # session 3 file inside s2
    (folder / "s2" / "o1" / "C_02_01_000.png").rename(bad)
    with pytest.raises(DataError, match=r"C_03_01_000\.png: bad CORe50 file name"):
        read_core50(folder)
    bad.rename(folder / "s2" / "o1" / "C_02_01_000.png")
    for p in (folder / "s5" / "o2").iterdir():
        p.unlink()
    (folder / "s5" / "o2").rmdir()
    with pytest.raises(DataError, match=r"s5: missing object folder\(s\) o2"):
        read_core50(folder)


def test_corrupted_png_names_the_file(tiny: Path) -> None:
    broken = tiny / "s4" / "o3" / "C_04_03_001.png"
    broken.write_bytes(broken.read_bytes()[:30])  # PNG signature and part of the header only
    with pytest.raises(DataError, match=r"C_04_03_001\.png: unreadable image"):
        read_core50(tiny)


def test_zip_extraction_and_unsafe_member(tmp_path: Path) -> None:
    folder = write_fake_core50(tmp_path / "src", objects=1, frames=1)
    archive = tmp_path / "core50_128x128.zip"
    zip_folder(folder, archive)
    out = extract_core50_zip(archive, tmp_path / "dest")
    assert out == tmp_path / "dest" / "core50_128x128" and len(read_core50(out)) == 11
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["core50_128x128"]  # temp dir removed
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("core50_128x128/s1/o1/C_01_01_000.png", b"x")
        zf.writestr("../escape.png", b"x")
    with pytest.raises(DataError, match=r"refusing unsafe archive member '\.\./escape\.png'"):
        extract_core50_zip(evil, tmp_path / "dest2")
    assert not (tmp_path / "escape.png").exists() and list((tmp_path / "dest2").iterdir()) == []
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        member = zipfile.ZipInfo("core50_128x128/s1")
        member.external_attr = (stat.S_IFLNK | 0o777) << 16  # a symlink entry
        zf.writestr(member, "/etc")
    with pytest.raises(DataError, match=r"refusing archive member 'core50_128x128/s1' \(only files and directories"):
        extract_core50_zip(link, tmp_path / "dest3")


@pytest.fixture
def full_objects(tmp_path: Path) -> Path:
    """All 50 objects x 11 sessions x 1 frame of 4x4 pixels: what ``load_dataset`` accepts."""
    return write_fake_core50(tmp_path / "src", objects=50, frames=1, side=4)


def _use_md5(monkeypatch: pytest.MonkeyPatch, md5: str) -> None:
    info = catalog.CATALOG["core50"]
    files = (dataclasses.replace(info.files[0], md5=md5),)
    monkeypatch.setitem(catalog.CATALOG, "core50", dataclasses.replace(info, files=files))
    registry.clear_cache()
    catalog.clear_verification_cache()


def test_load_dataset_from_zip_end_to_end(tmp_path: Path, full_objects: Path, monkeypatch) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _use_md5(monkeypatch, zip_folder(full_objects, data_dir / "core50_128x128.zip"))
    splits = load_dataset("core50", data_dir)
    assert (data_dir / "core50_128x128" / "s11" / "o50" / "C_11_50_000.png").is_file()
    assert len(splits.train) == 8 * 50 and len(splits.test) == 3 * 50
    assert splits.train.class_names == tuple(f"o{i}" for i in range(1, 51)) and splits.train.name == "core50"
    assert splits.test.std == (0.229, 0.224, 0.225) and splits.train.input_shape == (3, 4, 4)
    # The test image of object o17 in session 10 has green = 170 and red = 100, label 16.
    i = int(((splits.test.labels == 16) & (splits.test.images[:, 0, 0, 0] == 100)).nonzero().squeeze())
    assert splits.test.images[i, :, 0, 0].tolist() == [100, 170, 5]
    registry.clear_cache()


def test_load_dataset_zip_md5_mismatch(tmp_path: Path, full_objects: Path, monkeypatch) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    zip_folder(full_objects, data_dir / "core50_128x128.zip")
    _use_md5(monkeypatch, "0" * 32)
    with pytest.raises(DataError, match=r"core50_128x128\.zip: checksum mismatch"):
        load_dataset("core50", data_dir)
    assert not (data_dir / "core50_128x128").exists()
    registry.clear_cache()


def test_load_dataset_extracted_folder_and_errors(tmp_path: Path, full_objects: Path) -> None:
    registry.clear_cache()
    full_objects.rename(tmp_path / "core50_128x128")
    splits = load_dataset("core50", tmp_path)
    assert len(splits.train) == 400 and int(splits.train.labels.max()) == 49
    registry.clear_cache()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"neither .*core50_128x128 nor .*core50_128x128\.zip exists; download http"):
        load_dataset("core50", empty)
    partial = tmp_path / "partial"
    write_fake_core50(partial, objects=3, frames=1, side=4)
    expected = r"has 3 object folder\(s\) \(o1, o2, o3\); the full core50 dataset has o1\.\.o50"
    with pytest.raises(DataError, match=expected):
        load_dataset("core50", partial)
    with pytest.raises(DataError, match="'core50' is not embedded"):
        load_dataset("core50")
    registry.clear_cache()


def test_catalog_entry() -> None:
    info = catalog.CATALOG["core50"]
    assert info.files[0].md5 == "745f3373fed08d69343f1058ee559e13"
    assert info.files[0].url == "http://bias.csr.unibo.it/maltoni/download/core50/core50_128x128.zip"
    assert len(info.class_names) == 50 and info.extracted_dir == "core50_128x128"
    assert np.allclose(info.mean, (0.485, 0.456, 0.406))

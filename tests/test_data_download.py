"""Downloads against a local HTTP server: success, checksum mismatch, HTTP errors, and the registry
fetching missing files of a catalog entry."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from exmodel.data.catalog import CATALOG
from exmodel.data.download import download
from exmodel.data.idx import write_idx
from exmodel.data.registry import load_from_catalog
from exmodel.errors import DataError


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve ``tmp_path/www`` on 127.0.0.1 (free port); yields (base URL, served directory)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_download_success(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    payload = bytes(range(256)) * 1000  # 256 kB: several 64 KiB chunks
    (www / "file.bin").write_bytes(payload)
    dest = tmp_path / "out" / "file.bin"
    got = download(base + "file.bin", dest, hashlib.md5(payload).hexdigest(), progress=False)
    assert got == dest and dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == ["file.bin"]  # no temporary file left


def test_download_checksum_mismatch_leaves_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    (www / "file.bin").write_bytes(b"tampered")
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match=f"checksum mismatch after download \\(md5 expected {'0' * 32}, got "):
        download(base + "file.bin", dest, "0" * 32, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_download_404_leaves_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    dest = tmp_path / "out" / "missing.bin"
    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1:\d+/missing\.bin: HTTP 404"):
        download(base + "missing.bin", dest, "0" * 32, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_download_connection_refused(tmp_path: Path) -> None:
    # Port 1 on localhost is essentially never listening.
    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1:1/x"):
        download("http://127.0.0.1:1/x", tmp_path / "x", "0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_rejects_other_schemes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="only http:// and https:// downloads are supported"):
        download("file:///etc/passwd", tmp_path / "x", "0" * 32, progress=False)


def test_registry_downloads_missing_idx_files(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.array([0, 1, 2, 3, 4, 5], dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([9, 8], dtype=np.uint8),
    }
    files = []
    for remote in CATALOG["mnist"].files:
        fname = remote.relpath.split("/")[-1]
        write_idx(www / fname, arrays[fname])
        md5 = hashlib.md5((www / fname).read_bytes()).hexdigest()
        files.append(dataclasses.replace(remote, md5=md5, url=base + fname))
    info = dataclasses.replace(CATALOG["mnist"], files=tuple(files))
    data_dir = tmp_path / "data"

    with pytest.raises(DataError, match=f"mnist: missing {data_dir}/mnist/train-images-idx3-ubyte.gz, .*download"):
        load_from_catalog(info, data_dir, download=False)

    splits = load_from_catalog(info, data_dir, download=True)
    assert (data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
    assert splits.train.labels.tolist() == [0, 1, 2, 3, 4, 5] and splits.test.labels.tolist() == [9, 8]
    np.testing.assert_array_equal(splits.test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte.gz"])

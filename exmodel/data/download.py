"""Downloading a dataset file so that only a complete, verified file ever appears under its name.

The response is streamed into a temporary file in the destination directory while its md5 is
computed; only when the checksum matches is the temporary file fsynced and renamed onto the final
name (``os.replace`` is atomic within one directory). A network error, an HTTP error or a checksum
mismatch removes the temporary file and raises :class:`DataError`, so an interrupted or corrupted
download can never be mistaken for a good file by the next run.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from exmodel import __version__
from exmodel.errors import DataError

_CHUNK = 1 << 16  # 64 KiB per read keeps memory flat and the progress bar smooth
_TIMEOUT_S = 60  # per socket operation, not for the whole transfer


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


def download(url: str, dest: str | os.PathLike, md5: str, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, verify its md5 and only then move it into place."""
    dest = Path(dest)
    if not url.startswith(("http://", "https://")):
        raise DataError(f"{url}: only http:// and https:// downloads are supported")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.md5()
    request = urllib.request.Request(url, headers={"User-Agent": f"exmodel/{__version__}"})
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response, _progress(progress) as bar:
                    length = response.headers.get("Content-Length")
                    task = bar.add_task(dest.name, total=int(length) if length and length.isdigit() else None)
                    while block := response.read(_CHUNK):
                        out.write(block)
                        digest.update(block)
                        bar.advance(task, len(block))
            except urllib.error.HTTPError as exc:
                raise DataError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
            except urllib.error.URLError as exc:
                raise DataError(f"could not download {url}: {exc.reason}") from exc
            except (OSError, ValueError) as exc:  # timeouts, connection resets, malformed responses
                raise DataError(f"could not download {url}: {exc}") from exc
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != md5.lower():
            raise DataError(
                f"{url}: checksum mismatch after download (md5 expected {md5.lower()}, got {actual}); "
                f"nothing was saved to {dest}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest

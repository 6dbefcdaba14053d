"""Safe, atomic extraction of dataset archives (tar for CIFAR, zip for CORe50).

Every member is checked before anything is written: no absolute paths, no ``..``, nothing but
files and folders (no links or devices). Members go to a temporary folder beside the target and the
expected top folder is moved into place only when complete, so an interrupted or refused extraction
never leaves a half-written dataset under its final name.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from exmodel.errors import DataError


def _unsafe_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    drive_like = bool(p.parts) and ":" in p.parts[0]  # "C:..." would be absolute on Windows
    return p.is_absolute() or name.startswith(("/", "\\")) or ".." in p.parts or drive_like


def _refuse(archive: Path, name: str, why: str) -> DataError:
    return DataError(f"{archive}: refusing {'unsafe ' if 'absolute' in why else ''}archive member {name!r} ({why})")


def _extract_tar(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                if _unsafe_name(m.name):
                    raise _refuse(archive, m.name, "absolute path or '..'")
                if not (m.isfile() or m.isdir()):
                    raise _refuse(archive, m.name, "only files and directories allowed")
            tar.extractall(into, members=members, filter="data")
    except tarfile.TarError as exc:
        raise DataError(f"{archive}: not a readable tar archive ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc})") from exc


def _extract_zip(archive: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for m in members:
                if _unsafe_name(m.filename):
                    raise _refuse(archive, m.filename, "absolute path or '..'")
                kind = stat.S_IFMT(m.external_attr >> 16)  # Unix file type, 0 when none was recorded
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):  # links, devices, fifos
                    raise _refuse(archive, m.filename, "only files and directories allowed")
            zf.extractall(into, members=members)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive}: not a readable zip archive ({exc})") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: cannot extract ({exc})") from exc


def extract_archive(archive: str | os.PathLike, dest_dir: str | os.PathLike, top_dir: str) -> Path:
    """Extract a verified tar or zip ``archive`` so that ``dest_dir/top_dir`` appears complete."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{top_dir}.", suffix=".extract", dir=dest_dir))
    try:
        (_extract_zip if archive.suffix.lower() == ".zip" else _extract_tar)(archive, tmp)
        if not (tmp / top_dir).is_dir():
            raise DataError(f"{archive}: archive does not contain the expected folder {top_dir}/")
        final = dest_dir / top_dir
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / top_dir, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

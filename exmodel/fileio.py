"""Small file helpers: atomic writes, atomic directory swaps, bounded reads and hashing.

Nothing half-written is ever visible under its final name: files are written to a temporary file in
the same directory, fsynced, then renamed over the old one; a directory is written under a
temporary name, then swapped with the old one in one step (:func:`atomic_replace_dir`). Untrusted
files are read with :func:`read_bounded`, which refuses a file larger than its limit before reading
a byte of it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # say which file could not be written
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class FileTooLarge(OSError):
    """A file is larger than the limit its reader allows; the message names the file and both sizes."""


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file", *, dir_fd: int | None = None) -> bytes:
    """The bytes of ``path`` (relative to ``dir_fd`` when given), refusing with :class:`FileTooLarge`
    a file of more than ``limit`` bytes before anything is read, and a file that grows past it while
    being read. Symbolic links are not followed when ``dir_fd`` is given (the file is a member of a
    directory opened once, see :func:`open_dir`). Other ``OSError``s pass through."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if dir_fd is not None:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise FileTooLarge(errno.EFBIG, f"{what} is {_size(size)}, more than the {_size(limit)} allowed")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(errno.EFBIG, f"{what} grew past the {_size(limit)} allowed while being read")
    return data


def read_text(path: str | os.PathLike, what: str, error: type[Exception], limit: int | None = None) -> str:
    """The UTF-8 text of the file ``path``, read with :func:`read_bounded` (``limit`` defaults to
    ``EXMODEL_MAX_TEXT_BYTES``). Every failure is one ``error`` whose message names ``path`` and
    ``what`` the file is: missing, unreadable, too large, not UTF-8."""
    from exmodel import limits  # deferred: limits imports the errors, not files

    try:
        raw = read_bounded(path, limits.max_text_bytes() if limit is None else limit, f"the {what}")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: the {what} is not UTF-8 text") from None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"  # pragma: no cover


def open_dir(path: str | os.PathLike) -> int:
    """A file descriptor of the directory ``path``: its members read through it (``dir_fd``) all come
    from one and the same directory, even if another writer swaps a new one in under that name."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where the system or file system cannot (then nothing was changed)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> Path:
    """Move the fully written directory ``tmp_dir`` to ``final_dir``, replacing an older one.

    Where ``final_dir`` does not exist this is one ``rename``. Otherwise the two are swapped in one
    step (``renameat2(RENAME_EXCHANGE)`` on Linux) and the old tree, now under ``tmp_dir``, is
    deleted: at every instant ``final_dir`` is the complete old directory or the complete new one,
    and a process killed in between leaves one of them in place. Concurrent writers each swap in
    their own; the last one stays. Where the exchange is not available the old directory is renamed
    aside first, which leaves a moment with nothing under the name (readers retry, see
    :func:`exmodel.experts.bundle.load_bundle`)."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    for _ in range(1000):  # only another writer racing on the same name makes this loop
        try:
            os.rename(tmp_dir, final_dir)  # replaces nothing but an absent or empty directory
            return final_dir
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        try:
            if _exchange(tmp_dir, final_dir):
                shutil.rmtree(tmp_dir, ignore_errors=True)
                return final_dir
        except FileNotFoundError:
            continue  # the old one was removed meanwhile: a plain rename now
        aside = final_dir.with_name(f".{final_dir.name}.{uuid.uuid4().hex[:8]}.old")
        try:
            os.rename(final_dir, aside)
        except FileNotFoundError:
            continue
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            try:
                os.rename(aside, final_dir)  # put the old one back: another writer took the name
            except OSError:
                shutil.rmtree(aside, ignore_errors=True)  # and already put its own in place
            continue
        shutil.rmtree(aside, ignore_errors=True)
        return final_dir
    raise OSError(errno.EBUSY, "other writers keep replacing it", str(final_dir))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()

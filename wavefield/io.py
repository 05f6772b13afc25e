"""Writing files so that a crash never leaves a half-written one behind.

Every file is written under a temporary name beside its destination and renamed over it in
one step (os.replace), so a reader sees the old file or the new one, whole, never a mix. The
new file's data reach the disk (fsync) before the rename, and the rename before the function
returns, so a power cut cannot leave an empty file under the old name either. A
write that fails (a full disk, a file-size limit) removes its temporary file and raises an
OSError with its errno (ENOSPC, EFBIG), which the CLI prints as one line.
"""

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save_file


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is renamed over `path` in one step.
    A symbolic link is written through (its file is replaced, the link kept), and an existing
    file without write permission is refused (EACCES), as opening it for writing would be."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.is_file() and not (path.stat().st_mode & 0o222 and os.access(path, os.W_OK)):  # the mode bits too: root may write anything
        raise PermissionError(errno.EACCES, "the file is read-only: it is not replaced", str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp (and writers that recreate the file) make it private
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path, directory: bool = False):
    """Flush a file's (or a folder's entries') writes to the disk. Folders that cannot be
    synced (EINVAL on some file systems) are left as they are."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if not (directory and e.errno == errno.EINVAL):
            raise
    finally:
        os.close(fd)


def write_text_atomic(path, text: str):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def safetensors_os_errors(path):
    """Inside, a safetensors write that fails on I/O raises the OSError it is, naming `path`.

    safetensors reports a failed write as SafetensorError("... (os error 27)"): the errno is
    read back from that message so a full disk or a file-size limit is an ordinary ENOSPC /
    EFBIG OSError. Any other SafetensorError is a bug and keeps its traceback."""
    try:
        yield
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, f"could not write {path}: {os.strerror(number)}") from None


def save_safetensors(tensors: dict, path, metadata: dict | None = None):
    """safetensors' save_file, atomically; its I/O failures become the OSError they are."""
    path = Path(path)
    with atomic_path(path) as tmp, safetensors_os_errors(path):
        save_file(tensors, str(tmp), metadata=metadata)

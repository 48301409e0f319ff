"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode())


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig(path, ...)``, atomically (a kill mid-write left a cut PNG); the format from the suffix."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **savefig_kwargs)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, sync: bool = False) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into: a temporary file of its own in the same folder, renamed
    into place when the block ends (``sync``: flushed to disk first). A kill or an error mid-write leaves the old
    file (or none) and no temporary file, and two writers of one path never share a temporary name (a fixed
    ``path.tmp`` made one writer's rename fail, or publish the other's half-written file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would make it (mkstemp's is 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def try_lock(f: IO[Any], wait: bool = False) -> bool | None:
    """Take an exclusive OS lock (flock) on the open file ``f``, without waiting unless ``wait``: True when taken,
    False when another process holds it, None where the OS or the filesystem has no such locks (Windows; Lustre
    mounted without flock, some NFS; a read-only file where flock is a POSIX lock, as on NFS): then nothing is
    locked, and callers go on without."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as e:  # ENOSYS, EOPNOTSUPP, ENOLCK: no flock here
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL, errno.EBADF):
            return None
        raise
    return True


def held_lock_file(path: Path) -> IO[str] | None:
    """Open ``path`` and take its lock, as :func:`try_lock`; the open file (the lock is held while it is open), or
    None when another process holds it. Where locks do not exist, the file is returned unlocked. A lock file
    removed by its holder between our open and our lock (it unlinks it before unlocking) is opened anew, so that
    two processes never both hold the lock of one path."""
    while True:
        f = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        taken = try_lock(f)
        if taken is False:
            f.close()
            return None
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same or taken is None:
            return f
        f.close()


@contextlib.contextmanager
def scratch_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new hidden folder ``parent/<prefix><random>`` to build a result in (then renamed into place), removed when
    the block ends. While in use it is held by an OS lock on its sibling ``<folder>.lock``; the next scratch folder
    of the same prefix in ``parent`` removes those whose lock nobody holds: left behind by a process that was
    killed (SIGKILL, a job's time limit, a full disk), which otherwise piled up, each as large as the result."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for stale_lock in parent.glob(f"{prefix}*.lock"):
        try:
            try:
                f = open(stale_lock, "a")  # noqa: SIM115 - writable: NFS's flock is a POSIX lock, which needs it
            except PermissionError:
                f = open(stale_lock)  # noqa: SIM115 - another user's: readable (enough for a local flock)
            with f:
                if try_lock(f) is not True:
                    continue  # in use, or no locks here to tell
                shutil.rmtree(stale_lock.with_suffix(""), ignore_errors=True)
                stale_lock.unlink(missing_ok=True)
        except OSError:  # gone meanwhile, or not ours to read or remove
            continue
    path = parent / f"{prefix}{uuid.uuid4().hex[:12]}"
    lock_path = path.with_name(path.name + ".lock")
    lock = open(lock_path, "a")  # noqa: SIM115 - held open while the folder is in use
    # waiting: a sweep elsewhere may hold the fresh file a moment (it then finds no folder to remove)
    try_lock(lock, wait=True)
    try:
        path.mkdir()
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):  # before the unlock; Windows cannot remove an open file: again below
            lock_path.unlink(missing_ok=True)
        lock.close()
        with contextlib.suppress(OSError):
            lock_path.unlink(missing_ok=True)

"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def scratch_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new hidden folder ``parent/<prefix><random>`` to build a result in (then renamed into place), removed when
    the block ends. While in use it is held by an OS lock on its sibling ``<folder>.lock``; the next scratch folder
    of the same prefix in ``parent`` removes those whose lock nobody holds: left behind by a process that was
    killed (SIGKILL, a job's time limit, a full disk), which otherwise piled up, each as large as the result."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no sweeping
        fcntl = None  # type: ignore[assignment]
    if fcntl is not None:
        for stale_lock in parent.glob(f"{prefix}*.lock"):
            with open(stale_lock, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use
                shutil.rmtree(stale_lock.with_suffix(""), ignore_errors=True)
                stale_lock.unlink(missing_ok=True)
    path = parent / f"{prefix}{uuid.uuid4().hex[:12]}"
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            path.mkdir()
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            lock_path.unlink(missing_ok=True)

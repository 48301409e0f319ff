"""Atomic text writes: results, reports, metrics."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from diffusion_world.bench.common import write_result


def test_concurrent_writers_of_one_result_never_fail_or_publish_half_a_file(tmp_path: Path) -> None:
    """Two writers of one result shared the temporary name ``r.json.tmp``: one's rename failed
    (FileNotFoundError), or a reader saw the other's half-written JSON under the final name."""
    path = tmp_path / "r.json"
    errors: list[BaseException] = []
    seen: list[str] = []

    def write(who: int) -> None:
        try:
            for i in range(150):
                write_result(path, {"who": who, "i": i, "pad": "x" * 20_000})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def read() -> None:
        for _ in range(300):
            if path.exists():
                text = path.read_text()
                try:
                    json.loads(text)
                except ValueError:
                    seen.append(text[-40:])

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not seen, (errors[:2], seen[:2])
    assert json.loads(path.read_text())["i"] == 149
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_world.files import save_figure

    (tmp_path / "plain.txt").write_text("x")
    write_result(tmp_path / "r.json", {})
    fig = plt.figure()
    save_figure(fig, tmp_path / "f.png", dpi=20)
    plt.close(fig)
    mode = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")


def test_scratch_folders_of_killed_processes_are_removed_by_the_next_one(tmp_path: Path) -> None:
    """collect, combine and the frame cache build in hidden scratch folders; a killed process (SIGKILL, a job's
    time limit) left its folder behind, as large as the dataset, and nothing removed it."""
    import fcntl
    import subprocess
    import sys

    from diffusion_world.files import scratch_dir

    script = ("import sys, os, signal; from diffusion_world.files import scratch_dir\n"
              "with scratch_dir(sys.argv[1], '.diffusion_world-collect-') as d:\n"
              "    (d / 'big').write_bytes(b'x' * 1000)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=120)
    assert out.returncode == -9
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 2 and any(p.name.endswith(".lock") for p in left)  # the folder and its lock
    busy = tmp_path / ".diffusion_world-collect-busy"
    busy.mkdir()
    with open(tmp_path / ".diffusion_world-collect-busy.lock", "a") as held:  # a live writer's
        fcntl.flock(held, fcntl.LOCK_EX)
        other = tmp_path / ".diffusion_world-combine-x"  # another kind of scratch folder: not this sweep's
        other.mkdir()
        (tmp_path / ".diffusion_world-combine-x.lock").touch()
        with scratch_dir(tmp_path, ".diffusion_world-collect-") as mine:
            assert mine.is_dir()
            names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted([busy.name, busy.name + ".lock", other.name, other.name + ".lock", mine.name,
                                mine.name + ".lock"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([busy.name, busy.name + ".lock", other.name,
                                                                  other.name + ".lock"])


def test_filesystems_without_locks_still_work(tmp_path: Path, monkeypatch) -> None:
    """Lustre mounted without flock (and some NFS) answer flock with ENOSYS: collect and train died with a raw
    OSError there; they go on unlocked."""
    import errno
    import fcntl

    from diffusion_world.checkpoint import run_lock
    from diffusion_world.files import scratch_dir

    def no_locks(*args: object) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with run_lock(tmp_path, "test"), scratch_dir(tmp_path, ".x-") as d:
        assert d.is_dir()
    assert list(tmp_path.iterdir()) == []

"""The wheel users install holds the whole package, the shipped world model included, and works on its own.

The test suite runs against an editable install, which reads the source tree and so cannot notice a file that
``setup.cfg``'s package data leaves out of the wheel (a renamed shipped model, a new data file). Here a wheel is
built from a copy of the project (nothing is written into the checkout), compared with the package's tracked
files, unpacked, and imported from there in a fresh interpreter that makes the default env with no dataset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked_package_files() -> set[str]:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the package's tracked files are unknown")
    out = subprocess.run(["git", "ls-files", "diffusion_world"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    return set(out.split())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "diffusion_world", src / "diffusion_world",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("diffusion_world-*.whl")
    return whl


def test_wheel_holds_every_tracked_package_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(tracked_package_files() - names)
    assert not missing, f"tracked package files left out of the wheel (setup.cfg package_data): {missing}"
    assert "diffusion_world/shipped/cartpole.pt" in names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "diffusion-world = diffusion_world.cli:main" in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "Requires-Dist: torch>=2.5" in metadata  # a range, so a CPU wheel installed first satisfies it
    # the shipped model's real env (CartPole) renders with pygame: a plain install could not evaluate an agent
    assert "Requires-Dist: gymnasium[classic-control]>=1.0" in metadata
    assert "Requires-Python: >=3.11" in metadata  # tomllib (cards) is 3.11's
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)


def test_unpacked_wheel_makes_the_default_env(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import gymnasium as gym, numpy as np, diffusion_world\n"
        "print(diffusion_world.__file__)\n"
        "env = gym.make('DiffusionWorld-v0')\n"
        "obs, _ = env.reset(seed=0)\n"
        "obs2, reward, terminated, truncated, _ = env.step(1)\n"
        "assert obs.shape == obs2.shape == (64, 64, 3) and obs.dtype == np.uint8, obs.shape\n"
        "assert np.isfinite(reward)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "MINARI_DATASETS_PATH": str(tmp_path / "no_datasets")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # imported from the unpacked wheel, not from the checkout the editable install points at
    assert Path(proc.stdout.splitlines()[0]).resolve().is_relative_to(site.resolve()), proc.stdout

"""Every code block of the README runs.

``python`` blocks run in the default suite, in order, in one namespace (later blocks use earlier names), in a
temporary directory. ``bash`` blocks run in a ``slow`` test, in order, in one shell, in a temporary directory
that links the repository's ``envs/`` and ``scripts/``, with the Minari root in that directory. Two knobs, no
rewriting of the commands: ``scripts/main.sh`` gets ``SKIP_SETUP=1`` (use this Python environment) and a toy
budget through ``MAIN_JOB_ARGS``; ``bash scripts/test.sh`` is the command CI itself runs (``.ci/run``), so it is
not run again from inside the suite. ``text`` blocks are figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TOY_MAIN_JOB = ("--collect-steps 1200 --train-steps 3 --fidelity-windows 2 --horizon 4 --agent-steps 64 "
                "--eval-episodes 1")


def blocks(language: str | None = None) -> list[tuple[str, str]]:
    found = [(m.group(1), m.group(2)) for m in FENCE.finditer((ROOT / "README.md").read_text())]
    return [b for b in found if language is None or b[0] == language]


def test_readme_blocks_are_python_bash_or_figures() -> None:
    languages = [lang for lang, _ in blocks()]
    assert set(languages) <= {"python", "bash", "text"}, languages
    assert languages.count("python") >= 3 and languages.count("bash") >= 3


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for i, (_, code) in enumerate(blocks("python")):
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
    # what the blocks promise
    assert namespace["obs"].shape == (64, 64, 3)  # type: ignore[attr-defined]
    assert namespace["agent"].num_timesteps >= 512  # type: ignore[attr-defined]
    assert isinstance(namespace["mean_return"], float)


@pytest.mark.slow
def test_readme_bash_blocks_run(tmp_path: Path) -> None:
    for name in ("envs", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    lines = []
    for _, code in blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            command = line.split("#", 1)[0].strip()
            if command and command != "bash scripts/test.sh":
                lines.append(command)
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    env = dict(os.environ, SKIP_SETUP="1", MAIN_JOB_ARGS=TOY_MAIN_JOB, OMP_NUM_THREADS="1",
               MINARI_DATASETS_PATH=str(tmp_path / "minari"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "reports" / "main" / "summary.md").is_file()  # the main job's report
    assert (tmp_path / "runs" / "tour" / "rollout.gif").is_file()
    assert (tmp_path / "runs" / "tour" / "bench" / "fidelity_quick.json").is_file()
    assert (tmp_path / "runs" / "tour-ddp" / "checkpoint.pt").is_file()

"""``diffusion-world info``: what the installation has, read from the sources it names."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from diffusion_world.cli import main


def test_info_text_and_json(tiny_dataset_id: str, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from diffusion_world import __version__, precision

    shipped = json.loads((resources.files("diffusion_world") / "shipped" / "cartpole.json").read_text())
    step = shipped["provenance"]["exported_from_step"]
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["diffusion_world"] == __version__ and info["torch"] == str(torch.__version__)
    assert tiny_dataset_id in info["datasets"]  # the session's Minari root (MINARI_DATASETS_PATH)
    (cartpole,) = [m for m in info["shipped_world_models"] if m["name"] == "cartpole"]
    assert cartpole["installed"] and cartpole["training_step"] == step and 0 < cartpole["size_mb"] <= 20
    assert info["cpu_native_bf16"] == precision.cpu_has_native_bf16()
    # the advice follows the CPU: where bf16 is emulated, training's "auto" and the envs stay in fp32
    for native, training, advice in ((False, "fp32", "'fp32' (bf16 is emulated"), (True, "bf16", "'bf16' (native")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert main(["info"]) == 0
        text = capsys.readouterr().out
        assert f"precision='auto' runs in {training} on cpu" in text
        assert f"imagined envs:   on the CPU, precision={advice}" in text
        assert f"cartpole: {cartpole['size_mb']} MB, training step {step}" in text and f"\n  {tiny_dataset_id}" in text

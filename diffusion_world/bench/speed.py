"""Speed: imagined env steps/s vs batch size, step time vs frames already generated, cached vs uncached
generation, and training supervised frames/s (DART vs last-frame-only), all in one run on one device.

An imagined env step = K denoiser calls against the caches + the commit that yields the frame's cache entries,
reward and termination. Random weights unless a checkpoint is given: speed does not depend on them.
"""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any

import torch

from diffusion_world.checkpoint import load_world_model
from diffusion_world.diffusion.sampler import SamplerConfig, edm_sigmas, sample_next_frame, warmup
from diffusion_world.model.config import preset_config
from diffusion_world.model.dart import DartWorldModel, count_parameters, forward_gflops_per_frame
from diffusion_world.model.mp import normalize_weights_
from diffusion_world.precision import cpu_has_native_bf16, use_bf16
from diffusion_world.training.loss import LossConfig, dart_loss, draw_noise


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _inputs(model: DartWorldModel, B: int, n: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    H, W = model.cfg.frame_size
    x = torch.rand(B, n, 3, H, W, device=dev) * 2 - 1
    space = model.cfg.action_space
    if space["type"] == "discrete":
        a = torch.randint(0, int(space["n"]), (B, n), device=dev)
    else:
        a = torch.zeros(B, n, *space["shape"], device=dev)
    return x, a, torch.ones(B, n, dtype=torch.bool, device=dev)


def env_step_time(model: DartWorldModel, B: int, context: int, sampler: SamplerConfig, dev: torch.device,
                  repeat: int) -> tuple[float, int]:
    """Best time of one imagined step for B rows after ``context`` frames (caches copied, so each try starts
    from the same state). Returns (seconds, frames in the cache)."""
    x, a, has = _inputs(model, B, max(context, 1), dev)
    state = model.new_state(B, dev)
    gens = [torch.Generator().manual_seed(i) for i in range(B)]
    if context:
        warmup(model, state, x, sampler.sigma_min, a, has, gens, sampler)
    elif sampler.guided:
        state.guide = model.new_state(B, dev)
    sig = edm_sigmas(sampler, dev)
    best = float("inf")
    for r in range(repeat + 1):
        s = copy.deepcopy(state)
        _sync(dev)
        t0 = time.perf_counter()
        sample_next_frame(model, s, a[:, 0], has[:, 0], gens, sampler, sig)
        _sync(dev)
        if r:  # the first try warms up
            best = min(best, time.perf_counter() - t0)
    return best, int((state.slot_pos >= 0).sum(1)[0])


def uncached_step_time(model: DartWorldModel, B: int, context: int, sampler: SamplerConfig, dev: torch.device,
                       repeat: int) -> float:
    """The same step without carrying caches between steps: re-encode the whole visible context, then sample."""
    x, a, has = _inputs(model, B, context, dev)
    gens = [torch.Generator().manual_seed(i) for i in range(B)]
    sig = edm_sigmas(sampler, dev)
    best = float("inf")
    for r in range(repeat + 1):
        _sync(dev)
        t0 = time.perf_counter()
        state = model.new_state(B, dev)
        warmup(model, state, x, sampler.sigma_min, a, has, gens, sampler)
        sample_next_frame(model, state, a[:, 0], has[:, 0], gens, sampler, sig)
        _sync(dev)
        if r:
            best = min(best, time.perf_counter() - t0)
    return best


def training_precisions(dev: torch.device) -> list[str]:
    """The autocast precisions worth timing: bf16 on CUDA; fp32, and bf16 where the CPU has it natively."""
    if dev.type == "cuda":
        return ["bf16"]
    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


def _timed_training_step(net: Any, model: DartWorldModel, inputs: tuple[torch.Tensor, ...], lcfg: LossConfig,
                         amp: bool, opt: torch.optim.Optimizer, seed: int, dev: torch.device) -> tuple[float, int]:
    """One optimiser step of ``net`` (the model, or its compiled wrapper): (seconds, supervised frames)."""
    x0, a, has, zeros = inputs
    draw = draw_noise(x0.shape[0], x0.shape[1], tuple(x0.shape[2:]), lcfg, torch.Generator().manual_seed(seed))
    _sync(dev)
    t0 = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        out = dart_loss(net, x0, a, has, zeros, zeros.bool(), draw, lcfg, model.cfg.sigma_data,
                        "flex" if dev.type == "cuda" else "sdpa")
    out.total.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(dev)
    return time.perf_counter() - t0, out.num_supervised


def training_throughput(model: DartWorldModel, B: int, T: int, dev: torch.device, repeat: int,
                        compiled: bool = False) -> list[dict]:
    """Best step time of DART and last-frame training in each precision worth timing; with ``compiled``, also
    DART training of ``torch.compile(model)`` (``train --compile``) in the precision `train` uses here, with the
    time its first step took (the compilation)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x0, a, has = _inputs(model, B, T, dev)
    inputs = (x0, a, has, torch.zeros(B, T, device=dev))
    runs: list[tuple[str, str, bool]] = [(p, s, False) for p, s in
                                         itertools.product(training_precisions(dev), ("dart", "last_frame"))]
    if compiled:
        runs.append(("bf16" if use_bf16("auto", dev) else "fp32", "dart", True))
    rows = []
    for precision, supervision, compile_ in runs:
        lcfg = LossConfig(supervision=supervision)
        net: Any = torch.compile(model) if compile_ else model
        best, n, first = float("inf"), 0, 0.0
        for r in range(repeat + 1):
            t, n = _timed_training_step(net, model, inputs, lcfg, precision == "bf16", opt, r, dev)
            if r:  # the first try warms up (and compiles)
                best = min(best, t)
            else:
                first = t
        rows.append({"precision": precision, "supervision": supervision,
                     "batch": B, "seq_len": T, "step_s": best, "supervised_frames": n,
                     "supervised_frames_per_s": n / best,
                     **({"compiled": True, "first_step_s": first} if compile_ else {})})
    model.eval()
    return rows


def run_speed(world_model: str | None = None, preset: str = "small", device: str = "cpu", quick: bool = False,
              sampler_steps: int = 3, history_guidance: float = 1.0, progress: bool = True) -> dict[str, Any]:
    dev = torch.device(device)
    if world_model:
        model = load_world_model(world_model, device=dev).model
    else:
        torch.manual_seed(0)
        model = DartWorldModel(preset_config(preset, action_space={"type": "discrete", "n": 2})).to(dev)
        normalize_weights_(model)
    model.eval().requires_grad_(False)
    amp = dev.type == "cuda"
    repeat = 2 if quick else 5
    sampler = SamplerConfig(num_steps=sampler_steps, history_guidance=history_guidance)
    sampler.validate()
    W = model.cfg.context_window
    say = print if progress else (lambda *a, **k: None)
    result: dict[str, Any] = {"world_model": world_model, "preset": None if world_model else preset,
                              "num_parameters": count_parameters(model), **forward_gflops_per_frame(model),
                              "device": str(dev), "amp_bf16": amp, "sampler_steps": sampler_steps,
                              **({"history_guidance": history_guidance} if sampler.guided else {}),
                              "context_window": W, "model_config": model.cfg.to_dict()}
    batches = (1, 16) if quick else (1, 16, 64)
    if dev.type == "cuda":
        batches = (1, 32, 256)
    # the sweep in the run's precision, and on a CPU with native bf16 also in the env's precision="bf16",
    # alternating per batch size so that both see the same machine load
    main = "bf16" if amp else "fp32"
    precisions = [main] + (["bf16"] if not amp and cpu_has_native_bf16() else [])
    sweeps: dict[str, list[dict]] = {p: [] for p in precisions}
    with torch.no_grad():
        for B, precision in itertools.product(batches, precisions):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                t, _ = env_step_time(model, B, 4, sampler, dev, repeat)
            sweeps[precision].append({"batch": B, "step_ms": t * 1e3, "steps_per_s": B / t})
            say({"precision": precision, **sweeps[precision][-1]})
    result["batch_sweep"] = sweeps[main]
    if len(precisions) > 1:
        result["batch_sweep_bf16"] = sweeps["bf16"]
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        result["context_sweep"] = []
        for n in sorted({0, 1, W // 4, W // 2, W, 2 * W} | (set() if quick else {4 * W})):
            t, cached = env_step_time(model, 1, n, sampler, dev, repeat)
            result["context_sweep"].append({"frames_generated": n, "frames_in_cache": cached, "step_ms": t * 1e3})
            say(result["context_sweep"][-1])
        t_unc = uncached_step_time(model, 1, W, sampler, dev, repeat)
        t_c, _ = env_step_time(model, 1, W, sampler, dev, repeat)
        result["cached_vs_uncached"] = {"context": W, "cached_step_ms": t_c * 1e3, "uncached_step_ms": t_unc * 1e3}
        say(result["cached_vs_uncached"])
    model.requires_grad_(True)
    # compiling takes minutes on a CPU: in a full run, and on CUDA (gpu_train.sh runs --quick) also in a quick one
    result["training"] = training_throughput(model, 4, 16, dev, 1 if quick else 3,
                                             compiled=not quick or dev.type == "cuda")
    say(result["training"])
    sweep = {r["frames_generated"]: r["step_ms"] for r in result["context_sweep"]}
    late = max(k for k in sweep)
    by_b = {r["batch"]: r["steps_per_s"] for r in result["batch_sweep"]}
    default = "bf16" if use_bf16("auto", dev) else "fp32"  # what `diffusion-world train` uses here
    eager = [r for r in result["training"] if not r.get("compiled")]
    tr = {r["supervision"]: r["supervised_frames_per_s"] for r in eager if r["precision"] == default}
    dart_by_precision = {r["precision"]: r["supervised_frames_per_s"] for r in eager if r["supervision"] == "dart"}
    compiled = [r for r in result["training"] if r.get("compiled")]
    result["headline"] = {
        "device": torch.cuda.get_device_name(dev) if amp else "cpu",
        "steps_per_s_batch1": by_b.get(1),
        "steps_per_s_batch16": by_b.get(16),
        **({f"steps_per_s_batch{r['batch']}_bf16": r["steps_per_s"] for r in result["batch_sweep_bf16"]
            if r["batch"] in (1, 16)} if "batch_sweep_bf16" in result else {}),
        "step_time_ratio_late_vs_early": sweep[late] / sweep[min(k for k in sweep if k > 0)],
        "cached_vs_uncached_speedup": t_unc / t_c,
        "dart_vs_last_frame_supervised_fps_ratio": tr["dart"] / tr["last_frame"],
        "dart_supervised_frames_per_s": tr["dart"],
        "training_precision": default,
    }
    if len(dart_by_precision) == 2:
        result["headline"]["bf16_vs_fp32_training_speedup"] = dart_by_precision["bf16"] / dart_by_precision["fp32"]
    if compiled:
        result["headline"]["compiled_vs_eager_training_speedup"] = compiled[0]["supervised_frames_per_s"] / tr["dart"]
        result["headline"]["training_compile_s"] = compiled[0]["first_step_s"]
    return result

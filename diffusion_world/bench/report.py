"""Markdown from benchmark result files. ``benchmarks/README.md`` is generated from ``benchmarks/results``
(``python -m diffusion_world.bench.report``); nothing in it is typed by hand."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffusion_world.bench.common import TRAINING_END_ROLLOUTS, sampler_label
from diffusion_world.files import atomic_write_text


def _first_termination(t: dict[str, Any]) -> str:
    """The windows' first terminations, real against imagined, in a sentence."""
    if "first_termination" not in t:  # results from before the breakdown: one-sided ones counted to the window end
        return (f"first-termination step error {_f(t['first_termination_step_error'])} (over the windows where "
                "either side terminates, a termination only one side makes counted to the window's end).")
    ft = t["first_termination"]
    both = (f"the first termination is {_f(ft['step_error'])} steps off in the {ft['both']} window(s) where both "
            "the real and the imagined episode terminate" if ft["both"] else
            "no window has a termination on both sides")
    return (f"{both}; {ft['missed']} window(s) where only the real episode terminates, {ft['spurious']} where only "
            "the imagined one does.")


def _n(count: int, noun: str) -> str:
    """``1 episode``, ``3 episodes``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _cpu(machine: dict[str, Any]) -> str:
    """The CPU's model name, and whether it has native bf16 where the result records it."""
    native = machine.get("cpu_native_bf16")
    return f"{machine.get('cpu', '?')}" + ("" if native is None else " with native bf16" if native else
                                           " without native bf16")


def _machine(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    dev = m.get("gpu") or f"{_cpu(m)} ({m.get('cpu_count', '?')} cores)"
    commit = (m.get("git_commit") or "?")[:10]
    extra = ""
    if m.get("torch_threads") is not None:
        extra += f"; {m['torch_threads']} torch thread(s)"
    if m.get("loadavg_at_start"):
        extra += f"; load {m['loadavg_at_start'][0]:.1f}"
    return f"{dev}; diffusion_world {m.get('package_version', '?')} @ {commit}; {m.get('date', '?')[:19]}{extra}"


def _pct_or_dash(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _db(value: float | None) -> str:
    return "exact" if value is None else f"{value:.2f} dB"


def fidelity_markdown(r: dict[str, Any]) -> str:
    sm = r.get("short_memory")
    fg = r.get("foreground_retention")  # results from before these metrics existed do not have them
    rc = r.get("foreground_recall")
    pr = r.get("foreground_precision")  # recorded since 2026-12-08
    mo = r.get("motion")  # results from before it do not have it
    be = r.get("background_error", {})  # per K; results from before it do not have it
    bg = be.get(str(r["sampler_steps"]))
    sm_note = ""
    if sm and sm.get("checkpoint_step") is not None:
        sm_note = (f" Short-memory baseline: the same network with a {sm['context_window']}-frame window, checkpoint "
                   f"step {sm['checkpoint_step']}" + (" (initialised from a long-window checkpoint, then trained "
                                                      "with the short window)" if sm.get("init_from") else "") + ".")
    source = (_n(r["heldout_episodes"], "episode") if r.get("window_episodes") in (None, r["heldout_episodes"])
              else f"{r['window_episodes']} of the {r['heldout_episodes']} held-out episodes")
    distinct = r.get("distinct_windows")  # recorded since windows could repeat: the intervals count each once
    repeats = (f" ({distinct} distinct: half the windows end on an episode's last frame, so with few episodes they "
               "repeat, and the intervals below count each repeat as a sample)"
               if distinct is not None and distinct < r["num_windows"] else "")
    lines = [f"Held-out windows: {r['num_windows']}{repeats} from {source} of `{r['dataset_id']}`; "
             f"{r['context_frames']} real context frames, then the real actions; {sampler_label(r)} Euler "
             f"steps; checkpoint step {r['checkpoint_step']}.{sm_note}", "",
             "| steps ahead | PSNR (dB) | SSIM | repeat-last PSNR | repeat-last SSIM |"
             + (" short-memory PSNR |" if "short_memory" in r else "")
             + (" foreground retention |" if fg else "") + (" foreground recall |" if rc else "")
             + (" foreground precision |" if pr else "") + (" motion |" if mo else "")
             + (" quiet background: error share, mean abs error |" if bg else ""),
             "|---|---|---|---|---|" + ("---|" if "short_memory" in r else "") + ("---|" if fg else "")
             + ("---|" if rc else "") + ("---|" if pr else "") + ("---|" if mo else "") + ("---|" if bg else "")]
    for h in r["horizons"]:
        m, b = r["model"][str(h)], r["repeat_last_frame"][str(h)]
        row = (f"| {h} | {m['psnr']['mean']:.2f} ± {m['psnr']['ci95']:.2f} | {m['ssim']['mean']:.3f} "
               f"| {b['psnr']['mean']:.2f} | {b['ssim']['mean']:.3f} |")
        if "short_memory" in r:
            row += f" {r['short_memory'][str(h)]['psnr']['mean']:.2f} |"
        if fg:
            row += f" {_f(fg['model'][str(h)])} |"
        if rc:
            row += f" {_f(rc['model'][str(h)])} (repeat-last {_f(rc['repeat_last_frame'][str(h)])}) |"
        if pr:
            row += f" {_f(pr['model'][str(h)])} (repeat-last {_f(pr['repeat_last_frame'][str(h)])}) |"
        if mo:
            row += f" {_f(mo['model'][str(h)])} |"
        if bg:
            row += f" {_pct_or_dash(bg[str(h)]['share'])}, {_f(bg[str(h)]['mean_abs'])} |"
        lines.append(row)
    first = r["repeat_last_frame"][str(r["horizons"][0])]
    exact = first.get("exact")  # recorded since 2026-12-07
    lines += ["", "PSNR is per frame, averaged over the windows; a frame equal to the real one (infinite PSNR) counts "
              "as 100 dB, which favours repeating the last frame where the real frame did not change"
              + (f" ({_pct_or_dash(exact)} of its frames {r['horizons'][0]} step ahead)" if exact is not None else "")
              + ", so at short horizons the baseline's mean PSNR is inflated."
              + (" The PSNR of the mean squared error over the windows needs no such placeholder: "
                 + ", ".join(f"{h} steps {_db(r['model'][str(h)].get('psnr_of_mean_mse'))} "
                             f"(repeat-last {_db(r['repeat_last_frame'][str(h)].get('psnr_of_mean_mse'))})"
                             for h in r["horizons"]) + "." if exact is not None else "")]
    if fg:
        lines += ["", "Foreground retention: how strongly the imagined frame draws the real frame's moving objects "
                  "(what differs from the static background, the dataset's per-pixel median) within 2 pixels of "
                  "where they are, relative to the real frame; 1 = as strongly and in place, 0 = faded away or "
                  "drawn elsewhere, above 1 = drawn thicker or darker (or, repeating the last frame, also where "
                  "the objects were)."]
    if rc:
        lines += ["", "Foreground recall: the share of the real frame's object pixels that the imagined frame also "
                  "draws (within 1 pixel), every pixel counting the same: a thin, faint object that fades away "
                  "shows here even when a bold one dominates the retention."]
    if pr:
        lines += ["", "Foreground precision: the share of the imagined frame's object pixels that the real frame also "
                  "draws (within 1 pixel): objects drawn where there are none (a ghost, a smear, noise) lower it. "
                  "Recall alone would give a frame drawn everywhere 1."]
    if mo:
        lines += ["", "Motion: the share of the real change since the last context frame that the imagined frames "
                  "reproduce, sum <imagined - last, real - last> / sum |real - last|^2 over the windows; 1 = the "
                  "objects moved as far as the real ones, 0 = nothing moved (repeating the last frame), below 1 = "
                  "damped dynamics."]
    if bg:
        lines += ["", "Quiet background: the pixels where neither the real nor the imagined frame draws an object; "
                  "the share of the squared error (PSNR's denominator) that lies there, and the mean absolute error "
                  "there in levels (0-255). A high share says the PSNR measures faint noise or tint on the static "
                  "scene rather than the dynamics."]
    t = r["termination"]
    lines += ["", f"Reward MAE {r['reward_mae']:.4f}; termination precision {_f(t['precision'])}, recall "
              f"{_f(t['recall'])}, F1 {_f(t['f1'])} ({t['positives']} real terminations); "
              + _first_termination(t), ""]
    if "termination_real_frames" in r:  # results from before this metric existed do not have it
        tf = r["termination_real_frames"]
        lines += [f"Terminations on all {tf['frames']} real held-out frames (teacher-forced; the model's termination "
                  f"classifier when it has one, else its head): precision "
                  f"{_f(tf['precision'])}, recall {_f(tf['recall'])}, F1 {_f(tf['f1'])} ({tf['positives']} "
                  "terminations).", ""]
    last = str(r["horizons"][-1])
    lines += ["| sampler steps K | PSNR h=1 | PSNR h=" + last + " |"
              + (f" quiet-background error share h=1 / h={last} |" if be else ""),
              "|---|---|---|" + ("---|" if be else "")]
    for k, s in r["sampler_sweep"].items():
        row = f"| {k} | {s['1']['psnr']['mean']:.2f} | {s[last]['psnr']['mean']:.2f} |"
        if be:
            row += f" {_pct_or_dash(be[k]['1']['share'])} / {_pct_or_dash(be[k][last]['share'])} |"
        lines.append(row)
    return "\n".join(lines)


def _bf16_speed(speed: dict[str, Any], batches: list[int]) -> str:
    """The same batches with the env's ``precision="bf16"``, where the speed run measured it."""
    sweep = {b["batch"]: b["steps_per_s"] for b in speed.get("batch_sweep_bf16") or []}
    if not all(b in sweep for b in batches):
        return ""
    return f'with `precision="bf16"`: {" / ".join(f"{sweep[b]:.1f}" for b in batches)}'


def model_speed_markdown(r: dict[str, Any]) -> str:
    lines = [f"Preset `{r['preset']}`: {r['num_parameters'] / 1e6:.2f}M parameters, "
             f"{r['denoiser_call_gflops']:.2f} GFLOP per denoiser call (incl. the once-per-step temporal part), "
             f"{r['train_gflops_per_supervised_frame']:.2f} GFLOP forward per supervised training frame; device "
             f"{r['device']}.", "",
             "| batch | context frames | frames in cache | env step (K=3) ms | denoiser call ms | env steps/s |",
             "|---|---|---|---|---|---|"]
    for row in r["inference"]:
        lines.append(f"| {row['batch']} | {row['context_frames']} | {row['frames_in_cache']} | "
                     f"{row['env_step_ms']:.1f} | {row['denoiser_call_ms']:.1f} | {row['env_steps_per_s']:.1f} |")
    lines += ["", "| training supervision | batch × T | step s | supervised frames/s |", "|---|---|---|---|"]
    for row in r["training"]:
        lines.append(f"| {row['supervision']} | {row['batch']} × {row['seq_len']} | {row['step_s']:.2f} | "
                     f"{row['supervised_frames_per_s']:.1f} |")
    lines.append(f"\nDART / last-frame supervised frames/s: {r['dart_vs_last_frame_supervised_fps_ratio']:.2f}×")
    return "\n".join(lines)


def env_speed_markdown(r: dict[str, Any]) -> str:
    """``benchmarks/env_speed.py``: whole vector-env steps/s by batch size and env precision."""
    rows = r["batches"]
    fp32 = {row["batch_size"]: row["env_steps_per_s"] for row in rows if row.get("precision", "fp32") == "fp32"}
    m = r["model"]
    lines = [f"`{m['preset']}` preset, {m['num_parameters'] / 1e6:.2f}M parameters, K={r['sampler']['steps']} "
             f"denoiser calls per step, device {r['device']}. Median step time over the run (the best step: a "
             f"shared machine's quiet moments)."
             + (" Every timed step generates a frame (termination_threshold=1: no episode ends, so no autoreset "
                "is timed)." if r.get("termination_threshold") == 1.0 else ""), "",
             "| precision | batch | env steps/s (median) | best step ms | vs fp32 | vs DIAMOND on this CPU |",
             "|---|---|---|---|---|---|"]
    # DIAMOND's steps/s on the run's CPU: one number for batches 1 and 16 (older results), or per batch size
    ref = r.get("diamond_reference_cpu_steps_per_s")
    for row in rows:
        precision, B = row.get("precision", "fp32"), row["batch_size"]
        vs = f"{row['env_steps_per_s'] / fp32[B]:.2f}×" if precision != "fp32" and B in fp32 else "–"
        vs_diamond = row.get("vs_diamond_cpu")
        lines.append(f"| {precision} | {B} | {row['env_steps_per_s']:.1f} | {row['best_step_s'] * 1e3:.0f} | {vs} | "
                     + (f"{vs_diamond:.1f}× |" if vs_diamond is not None else "– |"))
    if isinstance(ref, dict):
        diamond = (f"{' / '.join(f'{v:g}' for v in ref.values())} steps/s at batch {' / '.join(ref)}, its own code "
                   "on this CPU.")
    elif ref is not None:
        diamond = f"{ref} steps/s at batch 1 and 16, its own code on this CPU."
    else:
        diamond = "not timed on this CPU."
    lines.append(f"\nBest step time after 4× the KV window / after 1×: "
                 f"{r['best_step_time_ratio_4x_window_vs_1x']:.2f} (flat = 1). DIAMOND: {diamond}")
    return "\n".join(lines)


def generic_markdown(r: dict[str, Any]) -> str:
    head = r.get("headline")
    if head:
        return "\n".join(["| key | value |", "|---|---|"] + [f"| {k} | {_f(v, 3)} |" for k, v in head.items()])
    flat = {k: v for k, v in r.items() if isinstance(v, (int, float, str)) and k != "machine"}
    return "\n".join(["| key | value |", "|---|---|"] + [f"| {k} | {_f(v, 3)} |" for k, v in flat.items()])


def rl_seeds_markdown(r: dict[str, Any]) -> str:
    """``benchmark rl --seed S1 S2 ...``: one row per seed, then the mean ± std over seeds."""
    kw = r.get("imagination_kwargs")
    cols = [("imagination", "PPO in imagination: real-env return"), ("imagination_sampled", "same, sampled actions"),
            ("real_trained", "PPO in the real env"), ("random", "random"),
            ("imagination_in_imagination", "PPO in imagination: return in imagination"),
            ("real_trained_in_imagination", "PPO in the real env: return in imagination"),
            ("imagination_training_end", f"PPO in imagination: training return, last {TRAINING_END_ROLLOUTS} "
                                         f"rollouts")]
    cols = [c for c in cols if any(c[0] in row for row in r["per_seed"].values())]  # older results lack some
    settings = f"; imagined env settings: {', '.join(f'{k}={v!r}' for k, v in kw.items())}" if kw else ""
    trained = r.get("agent_steps_trained", r["agent_steps"])  # older results: the budget
    budget = f" (budget {r['agent_steps']:,}: PPO trains whole rollouts)" if trained != r["agent_steps"] else ""
    lines = [f"PPO for {trained:,} steps per agent{budget}, {len(r['seeds'])} seeds (agents, envs and evaluation "
             f"episodes; {r['eval_episodes']} real-env episodes each); world model at training step "
             f"{r.get('checkpoint_step')}{settings}. Each seed's own table is its result, named in the first "
             "column (`<result>.md` in the same folder).", "",
             "| seed | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for s, row in r["per_seed"].items():
        lines.append(f"| {s} (`{row['result']}`) | " + " | ".join(_f(row.get(k), 1) for k, _ in cols) + " |")
    spread = r["across_seeds"]
    lines.append("| mean ± std over seeds | " + " | ".join(
        f"{spread[k]['mean']:.1f} ± {spread[k]['std']:.1f}" if spread.get(k) else "–" for k, _ in cols) + " |")
    lines.append("| range | " + " | ".join(
        f"{spread[k]['min']:.1f} – {spread[k]['max']:.1f}" if spread.get(k) else "–" for k, _ in cols) + " |")
    cpus = sorted({row.get("cpu") or "?" for row in r["per_seed"].values()})
    training = (f" Training return: the imagined return of the episodes that ended in each of the imagination "
                f"agent's last {TRAINING_END_ROLLOUTS} rollouts; high next to a low real-env return, the agent "
                f"found what the model lets it get away with." if cols[-1][0] == "imagination_training_end" else "")
    note = "Std over seeds is the population std of the seeds' mean returns." + training
    return "\n".join(lines) + "\n\n" + note + (f" Seeds ran on: {', '.join(cpus)}." if cpus else "")


def rl_markdown(r: dict[str, Any]) -> str:
    if "per_seed" in r:
        return rl_seeds_markdown(r)
    ppo = r.get("ppo")  # results from before the settings were recorded used SB3's PPO defaults
    settings = (", settings " + ", ".join(f"{k} {v}" for k, v in ppo.items()) if ppo
                else ", SB3's PPO defaults but n_steps <= 128, batch 256")
    env_kwargs = r.get("imagination_kwargs")
    sampled = "stochastic" in r["imagination"]  # measured since 2026-11-27
    trained = r.get("agent_steps_trained", r["agent_steps"])  # older results: the budget
    lines = [f"PPO (CnnPolicy, {r['frame_stack']}-frame stack, {r['num_envs']} envs{settings}) for "
             f"{trained:,} steps" + (f" (budget {r['agent_steps']:,}: PPO trains whole rollouts)"
                                     if trained != r["agent_steps"] else "")
             + (f" (seed {r['seed']})" if r.get("seed") else "")
             + f"; returns over {r['eval_episodes']} real-env episodes with unseen seeds"
             + (f" (cut at {r['real_eval_horizon']:,} steps)" if r.get("real_eval_horizon") else "")
             + (f"; world model at training step {r['checkpoint_step']}" if r.get("checkpoint_step") is not None
                else "")
             + (f"; imagined env settings: {', '.join(f'{k}={v!r}' for k, v in env_kwargs.items())}"
                if env_kwargs else "")
             + (f"; imagined episodes start from the {r['contexts']}" if r.get("contexts") else "") + ".", "",
             "| policy | trained in | real-env return (mean ± std) |" + (" real, sampled actions |" if sampled else "")
             + " return in imagination | training time s |", "|---|---|---|---|---|" + ("---|" if sampled else "")]
    imag = r.get("in_imagination", {})  # results from before this was measured do not have it
    for key, name, where in (("imagination", "PPO", "the world model only"), ("real_trained", "PPO", "the real env"),
                             ("random", "random", "–")):
        row, im = r[key], imag.get(key)
        in_imag = f"{im['mean']:.1f} ± {im['std']:.1f}" if im else "–"
        st = row.get("stochastic")  # the random policy samples anyway
        col = (f" {st['mean']:.1f} ± {st['std']:.1f} |" if st else " – |") if sampled else ""
        lines.append(f"| {name} | {where} | {row['mean']:.1f} ± {row['std']:.1f} |{col} {in_imag} "
                     f"| {_f(row.get('train_s'), 0)} |")
    ratio = r.get("headline", {}).get("imagination_vs_real_ratio")
    ppo_rollout = (ppo or {}).get("n_steps", 0) * r["num_envs"]
    if ppo and isinstance(ppo.get("learning_rate"), str) and "-> 0" in ppo["learning_rate"] and \
            0 < trained <= ppo_rollout:
        lines += ["", f"**One PPO rollout ({ppo_rollout} steps): its only update ran at learning rate 0 (the rate "
                  "decays linearly to 0 over the budget), so both PPO agents are untrained.**"]
    cut = r.get("train_horizon")  # recorded since 2026-12-08
    if cut and r.get("real_eval_horizon") and cut < r["real_eval_horizon"]:
        lines += ["", f"The agent in imagination trained on imagined episodes cut at {cut:,} steps: its learning "
                  "curve's returns are of those, while the evaluations above play whole episodes (up to "
                  f"{r['real_eval_horizon']:,} real steps, {imag.get('horizon', '–')} imagined); in an env whose "
                  "return grows with the episode's length they do not compare."]
    lines += ["", (f"Imagination / real return ratio: {_f(ratio)}." if ratio is not None else
                   "No imagination / real return ratio (it needs positive returns).")
              + (" Real-env returns use the greedy action (SB3's default); \"real, sampled actions\" samples the "
                 "policy's action distribution instead (a policy that learned little is near-uniform, and its greedy "
                 "action is one fixed action)." if sampled else "")]
    for key, where in (("imagination", "in imagination"), ("real_trained", "in the real env")):
        curve = r[key].get("curve")
        if curve:
            last = [c[1] for c in curve[-5:]]
            lines[-1] += (f" Training returns {where} (mean of the episodes that ended in a rollout): "
                          f"{curve[0][1]:.1f} in the first rollout, {sum(last) / len(last):.1f} "
                          f"over the last {len(last)}.")
    if imag:
        lines[-1] += (f" Return in imagination: the same {r['eval_episodes']} episodes' worth in the imagined env, "
                      f"cut at {imag['horizon']} steps (a policy that scores far higher there than in the real env "
                      f"exploits the model).")
    reused = r["real_trained"].get("reused")
    if reused:
        m = reused.get("machine", {})
        lines[-1] += (f" The real-env reference agent was reused from `--reference-cache` (trained "
                      f"{m.get('date', '?')[:19]} on {m.get('cpu', '?')}, diffusion_world @ "
                      f"{(m.get('git_commit') or '?')[:10]}, under the same key).")
    return "\n".join(lines)


def memory_markdown(r: dict[str, Any]) -> str:
    h = r["headline"]
    revealed = all("revealed" in r[key] for key in ("ours", "short_memory"))
    lines = [f"Recall of a colour cue (one of {round(1 / h['chance'])}) shown only in the first frame, {h['n'] + 1} "
             f"steps later (after {h['n']} distractor frames), in imagined rollouts of held-out episodes; chance "
             f"{h['chance']:.2f}.", "",
             "| model | context window | accuracy | 95% interval |" + (" draws a cue colour |" if revealed else ""),
             "|---|---|---|---|" + ("---|" if revealed else "")]
    for key, name in (("ours", "ours"), ("short_memory", "short memory (DIAMOND-style)")):
        row = r[key]
        window = r.get("training", {}).get(key, {}).get("context_window", "–")
        lo, hi = row["accuracy_ci95"]
        lines.append(f"| {name} | {window} | {row['accuracy']:.3f} | {lo:.3f}–{hi:.3f} |"
                     + (f" {row['revealed']:.2f} |" if revealed else ""))
    training = r.get("training", {})
    frames = [training.get(key, {}).get("supervised_frames") for key in ("ours", "short_memory")]
    lines += ["", "Both are the same tiny DART network, the short-memory one with DIAMOND's 4-frame memory (not "
              "DIAMOND's own network), trained from scratch on the same data for the same optimiser steps"
              + (f" ({frames[0]:,} and {frames[1]:,} supervised frames)" if all(frames) else "")
              + ", one training seed each: the intervals cover the evaluation episodes, not training seeds. "
              "The task is built so that a window shorter than the gap is at chance: it shows that the long "
              "context recalls the cue across the gap, not an advantage in world modelling at large. The accuracy "
              "reads the nearest palette colour of the imagined last frame; where no cue colour is drawn "
              "(\"draws a cue colour\": the share that does) that reading is a guess."]
    return "\n".join(lines)


def termination_markdown(r: dict[str, Any]) -> str:
    from diffusion_world.bench.termination import termination_markdown as render_termination

    return render_termination(r)


def control_markdown(r: dict[str, Any]) -> str:
    from diffusion_world.bench.control import control_markdown as render_control

    return render_control(r)


def random_play_markdown(r: dict[str, Any]) -> str:
    from diffusion_world.bench.random_play import random_play_markdown as render_random_play

    return render_random_play(r)


def main_job_markdown(r: dict[str, Any]) -> str:
    from diffusion_world.main_job import summary_table

    return summary_table(r)


RENDERERS = {"env_speed": env_speed_markdown, "fidelity": fidelity_markdown, "model_speed": model_speed_markdown,
             "rl": rl_markdown, "memory": memory_markdown, "main_job": main_job_markdown,
             "termination": termination_markdown, "control": control_markdown, "random_play": random_play_markdown}


# result families compared across the sampler's K: a base result and its variants `<base>_k<K>` on the same model
SAMPLER_FAMILIES = ("control", "termination_tails", "random_play", "rl_50k_sampled", "rl_50k_sampled_seeds")
SAMPLER_TITLE = "Sampler settings: denoiser steps per frame (K), history guidance (w)"


def _pct(d: dict[str, Any]) -> str:
    return " / ".join(f"{100 * d[k]:.0f}" for k in ("on_time", "early", "missed")) + " %"


def same_model(r: dict[str, Any], ref: dict[str, Any]) -> bool:
    """Whether two results ran on the same world model: the same name or path and training step, and the same
    checkpoint file where they record one (``model_sha256``; results from before it count as one model among
    themselves, another than any that records one)."""
    return (all(r.get(k) is not None and r.get(k) == ref.get(k) for k in ("world_model", "checkpoint_step"))
            and r.get("model_sha256") == ref.get("model_sha256"))


def _guidance(r: dict[str, Any]) -> float:
    """A result's history guidance w (1: off), recorded by the suite or, for rl, in its imagined env's kwargs."""
    w = r.get("history_guidance") or (r.get("imagination_kwargs") or {}).get("history_guidance")
    return float(w) if w is not None else 1.0


def sampler_variant(stem: str, base: str) -> bool:
    """Whether ``stem`` is ``base`` or a sampler variant of it: ``<base>_k<K>``, ``<base>_hg<w>`` or both; for a
    seed sweep ``<name>_seeds``, ``<name>_k<K>_seeds`` and so on."""
    import re

    name, sweep = (base[: -len("_seeds")], "_seeds") if base.endswith("_seeds") else (base, "")
    return re.fullmatch(rf"{re.escape(name)}(_k\d+)?(_hg[\d.]+)?{sweep}", stem) is not None


def _seeds_cell(r: dict[str, Any], seeds: Sequence[int]) -> str:
    """A seed sweep's imagination-trained real-env return, mean ± std over ``seeds`` (those every compared sweep
    ran), the real-trained reference's mean on them in brackets, then the same over all of the sweep's seeds when
    it ran more."""
    import numpy as np

    def over(keep: Sequence[int]) -> str:
        rows = [r["per_seed"][str(s)] for s in keep]
        own, ref = np.array([row["imagination"] for row in rows]), np.mean([row["real_trained"] for row in rows])
        return f"{own.mean():.1f} ± {own.std():.1f} ({ref:.1f})"

    mine = sorted(int(s) for s in r["seeds"])
    same = [s for s in mine if s in seeds]
    text = f"seed{'s' if len(same) > 1 else ''} {', '.join(map(str, same))}: {over(same)}"
    return text + (f"; all {len(mine)}: {over(mine)}" if len(same) < len(mine) else "")


def sampler_steps_markdown(results: dict[str, dict[str, Any]]) -> str | None:
    """One row per sampler setting, K (denoiser calls per imagined frame) and history guidance w, of the current
    model (``fidelity.json``'s): the fidelity sweep's PSNR (of ``fidelity`` and its ``fidelity_hg<w>`` variants),
    and the ``control``, ``termination_tails``, ``random_play`` and ``rl_50k_sampled`` results whose variants
    ``<base>_k<K>`` / ``<base>_hg<w>`` ran on the same checkpoint as their base. A cell with several results of
    one setting names each (result and CPU). None when fewer than two settings were measured."""
    fid = results.get("fidelity")
    if not fid or "checkpoint_step" not in fid:
        return None
    default = (fid["sampler_steps"], _guidance(fid))  # the checkpoint's own, which results run without options use
    rows: dict[tuple[int, float], dict[str, Any]] = {}
    for stem, r in results.items():
        if (sampler_variant(stem, "fidelity") and "_k" not in stem and same_model(r, fid)
                and r.get("dataset_id") == fid.get("dataset_id")):  # one column: the same held-out windows
            for k, v in r.get("sampler_sweep", {}).items():
                rows.setdefault((int(k), _guidance(r)), {})["psnr"] = v
            if r.get("motion"):  # measured at the result's own K only
                rows.setdefault((int(r["sampler_steps"]), _guidance(r)), {})["motion"] = r["motion"]["model"]
    for base in SAMPLER_FAMILIES:
        ref = results.get(base)
        if not ref or any(ref.get(k) != fid.get(k) for k in ("checkpoint_step", "model_sha256")):
            continue  # (control records the checkpoint's path where the others record the name it was given)
        for stem, r in results.items():
            if not sampler_variant(stem, base) or not same_model(r, ref):
                continue
            k = r.get("sampler_steps") or (r.get("imagination_kwargs") or {}).get("sampler_steps") or default[0]
            rows.setdefault((int(k), _guidance(r)), {}).setdefault(base, []).append((stem, r))
    measured = {key: row for key, row in rows.items() if set(row) - {"psnr", "motion"}}
    with_motion = any("motion" in row for row in measured.values())
    if len(measured) < 2:
        return None
    sweeps = [r for row in measured.values() for _, r in row.get("rl_50k_sampled_seeds", [])]
    common_seeds = sorted(set.intersection(*(set(map(int, r["seeds"])) for r in sweeps))) if sweeps else []
    columns = [  # (family, header, value of one result)
        ("control", "action gain, 8 steps held", lambda r: _f(r["headline"]["gain_h8"])),
        ("control", "held-action episodes ending on time",
         lambda r: f"{100 * r['headline']['termination_on_time']:.0f} %"),
        ("termination_tails", "terminations on time / early / missed (threshold)", lambda r: _pct(r["imagined"])),
        ("termination_tails", "the same (sampled)", lambda r: _pct(r["imagined_sampled"])),
        ("random_play", "random-play length: threshold / sampled",
         lambda r: f"{r['headline']['threshold_mean_length']:.1f} / {r['headline']['sampled_mean_length']:.1f}"),
        ("rl_50k_sampled", "PPO 50k steps in imagination (sampled terminations): real-env return",
         lambda r: f"{r['imagination']['mean']:.1f} ± {r['imagination']['std']:.1f}"),
        ("rl_50k_sampled_seeds", "PPO 50k steps in imagination (sampled terminations): real-env return, mean ± std "
         "over seeds (PPO trained in the real env)", lambda r: _seeds_cell(r, common_seeds))]
    columns = [c for c in columns if any(c[0] in row for row in measured.values())]  # families measured at all

    def cell(found: list[tuple[str, dict[str, Any]]], value: Any) -> str:
        if len(found) == 1:
            return value(found[0][1])
        return "; ".join(f"{value(r)} (`{stem}`, {r.get('machine', {}).get('cpu', '?')})" for stem, r in found) or "–"

    guided = any(w != 1.0 for _, w in measured)
    lines = [f"| K{', history guidance w' if guided else ''} | PSNR h=1 / 32 (dB) | "
             + ("motion h=8 / 32 | " if with_motion else "")
             + " | ".join(header for _, header, _ in columns) + " |",
             "|---" * (len(columns) + 2 + with_motion) + "|"]
    for (k, w), row in sorted(measured.items()):
        psnr = row.get("psnr", {})
        label = f"{k}{f', w={w:g}' if w != 1.0 else (', off' if guided else '')}"
        cells = [f"{label}{' (default)' if (k, w) == default else ''}",
                 f"{psnr['1']['psnr']['mean']:.2f} / {psnr['32']['psnr']['mean']:.2f}" if "1" in psnr and "32" in psnr
                 else "–",
                 *([" / ".join(_f(row["motion"].get(h)) for h in ("8", "32")) if "motion" in row else "–"]
                   if with_motion else []),
                 *(cell(row.get(family, []), value) for family, _, value in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    real = [r["headline"]["real_mean_length"] for row in measured.values() for _, r in row.get("random_play", [])]
    variants = {stem for row in measured.values() for family in row if family not in ("psnr", "motion")
                for stem, _ in row[family] if stem != family}
    variants |= {stem for stem, r in results.items() if stem != "fidelity" and sampler_variant(stem, "fidelity")
                 and "_k" not in stem and same_model(r, fid) and r.get("dataset_id") == fid.get("dataset_id")
                 and (int(r["sampler_steps"]), _guidance(r)) in measured}
    note = (f"Checkpoint step {fid['checkpoint_step']}; each column from the same start states, episodes and seeds "
            f"for every setting (`benchmark --sampler-steps K --name <base>_k<K>`"
            + (", `--history-guidance w --name <base>_hg<w>`" if guided else "") + ")"
            + (f"; real random-play episodes last {real[0]:.1f} steps" if real else "")
            + ". The full tables of the variants are in `benchmarks/README.md`: "
            + ", ".join(f"`{stem}`" for stem in sorted(variants)) + ".")
    return "\n".join(lines) + "\n\n" + note + "\n"


PRECISION_TITLE = "fp32 or bf16: does the imagined env's precision change what it does?"
# result families measured in both precisions, `<base>_fp32` and `<base>_bf16` (`benchmark --precision`)
PRECISION_FAMILIES = ("fidelity", "termination_tails", "control", "random_play", "rl_50k_sampled")


def precision_stems(results: dict[str, dict[str, Any]]) -> list[str]:
    """The ``<base>_fp32`` / ``<base>_bf16`` pairs that the precision table compares (both present, same model)."""
    stems = []
    for base in PRECISION_FAMILIES:
        a, b = results.get(f"{base}_fp32"), results.get(f"{base}_bf16")
        if a and b and same_model(a, b) and _precision(a) == "fp32" and _precision(b) == "bf16":
            stems += [f"{base}_fp32", f"{base}_bf16"]
    return stems


def _measure_rows(ref: dict[str, dict[str, Any]]) -> list[tuple[str, Any, str, str]]:
    """(measure, value of one result, reference, family) of each row that compares results of the families in
    ``ref`` (family -> the result of the first column, which gives the reference values)."""
    rows: list[tuple[str, Any, str, str]] = []
    if "fidelity" in ref:
        fid = ref["fidelity"]
        h = str(fid["horizons"][-1])
        rows += [(f"PSNR at 1 / 16 / {h} imagined steps (dB)",
                  lambda r: " / ".join(f"{r['model'][k]['psnr']['mean']:.2f}" for k in ("1", "16", h)),
                  f"repeat the last real frame at {h}: {fid['repeat_last_frame'][h]['psnr']['mean']:.2f}", "fidelity")]
        if (fid.get("motion") or {}).get("model"):
            rows.append((f"motion: share of the real change reproduced at 8 / 16 / {h} steps",
                         lambda r: " / ".join(_f((r.get("motion") or {}).get("model", {}).get(k))
                                              for k in ("8", "16", h)), "real env: 1", "fidelity"))
        rows += [(f"foreground recall at {h} steps",
                  lambda r: _f(r["foreground_recall"]["model"][h]),
                  f"repeat-last: {_f(fid['foreground_recall']['repeat_last_frame'][h])}", "fidelity"),
                 ("reward error per step (MAE)", lambda r: f"{r['reward_mae']:.4f}", "–", "fidelity")]
    if "termination_tails" in ref:
        rows += [("terminations on time / early / missed (threshold)", lambda r: _pct(r["imagined"]), "–",
                  "termination_tails"),
                 ("the same (sampled)", lambda r: _pct(r["imagined_sampled"]), "–", "termination_tails")]
    if "control" in ref:
        rows += [("action gain, 8 steps held", lambda r: _f(r["headline"]["gain_h8"]), "real env: 1", "control"),
                 ("frames nearest their own action's real frame, 8 steps",
                  lambda r: f"{100 * r['headline']['accuracy_h8']:.0f} %", "chance: 50 %", "control")]
    if "random_play" in ref:
        real = ref["random_play"]["headline"]["real_mean_length"]
        rows.append(("random-play episode length: threshold / sampled",
                     lambda r: f"{r['headline']['threshold_mean_length']:.1f} / "
                               f"{r['headline']['sampled_mean_length']:.1f}", f"real env: {real:.1f}", "random_play"))
    return rows


def precision_markdown(results: dict[str, dict[str, Any]]) -> str | None:
    """One row per measure of the ``<base>_fp32`` / ``<base>_bf16`` pairs (the same model, episodes, start states
    and seeds, run in the two precisions of ``benchmark --precision``), and ``env_speed``'s steps/s at batch 16 in
    both; None without a pair."""
    stems = precision_stems(results)
    if not stems:
        return None
    pairs = {stem.rsplit("_", 1)[0]: (results[stem], results[stem.replace("_fp32", "_bf16")])
             for stem in stems if stem.endswith("_fp32")}
    rows = _measure_rows({base: pair[0] for base, pair in pairs.items()})
    if "rl_50k_sampled" in pairs:
        rl = pairs["rl_50k_sampled"][0]
        same_reference = all(r.get("real_trained", {}).get("mean") == rl["real_trained"]["mean"]
                             for r in pairs["rl_50k_sampled"])
        rows += [(f"PPO {rl['agent_steps']:,} steps in imagination (termination='sample'), seed {rl.get('seed', 0)}: "
                  "real-env return", lambda r: f"{r['imagination']['mean']:.1f} ± {r['imagination']['std']:.1f}",
                  f"PPO trained in the real env: {rl['real_trained']['mean']:.1f}"
                  + ("" if same_reference else " (fp32 run)"), "rl_50k_sampled"),
                 ("the same: minutes of PPO training in imagination",
                  lambda r: f"{r['imagination']['train_s'] / 60:.1f}", "–", "rl_50k_sampled")]
    lines = ["| measure | fp32 | bf16 | reference | results |", "|---|---|---|---|---|"]
    for measure, value, reference, base in rows:
        a, b = pairs[base]
        lines.append(f"| {measure} | {value(a)} | {value(b)} | {reference} | `{base}_fp32`, `{base}_bf16` |")
    speed = {(row.get("precision", "fp32"), row["batch_size"]): row["env_steps_per_s"]
             for row in results.get("env_speed", {}).get("batches", [])}
    if ("fp32", 16) in speed and ("bf16", 16) in speed:
        lines.append(f"| env steps/s, 16 envs in one batch (random weights) | {speed['fp32', 16]:.1f} | "
                     f"{speed['bf16', 16]:.1f} | – | `env_speed` |")
    first = next(iter(pairs.values()))[0]
    cpus = sorted({r.get("machine", {}).get("cpu", "?") for pair in pairs.values() for r in pair})
    notes = [f"Checkpoint step {first.get('checkpoint_step')}, K={first.get('sampler_steps')}, on {', '.join(cpus)}; "
             "each pair from the same episodes, start states and seeds (`benchmark --precision fp32|bf16 --name "
             "<base>_fp32|_bf16`)"]
    if "fidelity" in pairs:
        notes.append(f"fidelity on {pairs['fidelity'][0]['num_windows']} windows of "
                     f"`{pairs['fidelity'][0]['dataset_id']}`")
    if "termination_tails" in pairs:
        t = pairs["termination_tails"][0]
        notes.append(f"terminations of {t.get('headline', {}).get('episodes', '?')} episodes of `{t['dataset_id']}`")
    if "random_play" in pairs and pairs["random_play"][0].get("contexts"):
        notes.append(f"random play from {pairs['random_play'][0]['contexts']}")
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + ".\n"


CANDIDATES_TITLE = "Trained further, not shipped: candidates next to the shipped model"
# the families a candidate checkpoint is benchmarked in, on the shipped model's `<base>_fp32` episodes and seeds
CANDIDATE_FAMILIES = ("fidelity", "termination_tails", "control", "random_play")
# and in RL transfer: its sweep `rl_50k_sampled_<tag>_seeds` next to the shipped model's `rl_50k_sampled_seeds`
CANDIDATE_RL = "rl_50k_sampled_seeds"
# what makes two results of one family comparable: the same held-out data, windows, start states and contexts
_SAME_RL = ("agent_steps", "eval_episodes", "imagination_kwargs", "quick")
_SAME_EPISODES = ("dataset_id", "heldout_episode_seeds", "num_windows", "context_frames", "num_starts", "contexts",
                  "sampler_steps", "horizon")


def candidate_stems(results: dict[str, dict[str, Any]]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The candidates' results and what they are compared with: (family -> the current model's result, tag ->
    {family: stem}). A candidate's ``<family>_<tag>`` result ran in fp32 on a checkpoint trained past the current
    one (``fidelity.json``'s step), on the episodes, start states and seeds of a current fp32 result of its family,
    ``<family>`` or else ``<family>_fp32`` (the keys both record agree)."""
    fid = results.get("fidelity")
    refs: dict[str, str] = {}
    found: dict[str, dict[str, str]] = {}
    if not fid or "checkpoint_step" not in fid:
        return refs, found

    def later(stem: str, r: dict[str, Any], base: str) -> bool:
        return (stem.startswith(f"{base}_") and "headline" in r and _precision(r) == "fp32"
                and (r.get("checkpoint_step") or 0) > fid["checkpoint_step"])

    for base in CANDIDATE_FAMILIES:
        for ref_stem in (base, f"{base}_fp32"):
            ref = results.get(ref_stem)
            if not ref or not _on_checkpoint(ref, fid) or _precision(ref) != "fp32":
                continue
            matched = {stem[len(base) + 1:]: stem for stem, r in results.items() if later(stem, r, base)
                       and all(r.get(k) == ref.get(k) for k in _SAME_EPISODES if k in r and k in ref)}
            if matched:
                refs[base] = ref_stem
                for tag, stem in matched.items():
                    found.setdefault(tag, {})[base] = stem
                break
    ref = results.get(CANDIDATE_RL)
    name = CANDIDATE_RL[: -len("_seeds")]
    if ref and "per_seed" in ref and _on_checkpoint(ref, fid):
        for stem, r in results.items():
            if (stem.endswith("_seeds") and "per_seed" in r and later(stem, r, name)
                    and all(r.get(k) == ref.get(k) for k in _SAME_RL) and set(r["seeds"]) & set(ref["seeds"])):
                refs[CANDIDATE_RL] = CANDIDATE_RL
                found.setdefault(stem[len(name) + 1: -len("_seeds")], {})[CANDIDATE_RL] = stem
    return refs, found


def candidates_markdown(results: dict[str, dict[str, Any]]) -> str | None:
    """One row per measure, one column for the current model's results and one per candidate
    (``candidate_stems``); None without a candidate."""
    refs, candidates = candidate_stems(results)
    if not candidates:
        return None
    steps = {t: results[next(iter(stems.values()))]["checkpoint_step"] for t, stems in candidates.items()}
    tags = sorted(candidates, key=lambda t: (steps[t], t))
    lines = [f"| measure | shipped, step {results['fidelity']['checkpoint_step']:,} | "
             + " | ".join(f"`{t}`, step {steps[t]:,}" for t in tags) + " | reference |", "|---" * (len(tags) + 3) + "|"]
    for measure, value, reference, base in _measure_rows({base: results[stem] for base, stem in refs.items()}):
        cells = [value(results[candidates[t][base]]) if base in candidates[t] else "–" for t in tags]
        lines.append(f"| {measure} | {value(results[refs[base]])} | " + " | ".join(cells) + f" | {reference} |")
    rl = ""
    if CANDIDATE_RL in refs:  # each sweep over the seeds they all ran (then over all of its own)
        ref = results[refs[CANDIDATE_RL]]
        sweeps = [ref] + [results[stems[CANDIDATE_RL]] for stems in candidates.values() if CANDIDATE_RL in stems]
        common = sorted(set.intersection(*(set(map(int, r["seeds"])) for r in sweeps)))
        cells = [_seeds_cell(results[candidates[t][CANDIDATE_RL]], common) if CANDIDATE_RL in candidates[t] else "–"
                 for t in tags]
        random = sum(ref["per_seed"][str(s)]["random"] for s in common) / len(common)
        lines.append(f"| PPO {ref['agent_steps'] // 1000}k steps in imagination (sampled terminations): real-env "
                     f"return, mean ± std over seeds (PPO trained in the real env) | {_seeds_cell(ref, common)} | "
                     + " | ".join(cells) + f" | random policy: {random:.1f} |")
        rl = (" RL transfer: each seed sweep over the seeds they all ran; the real-env reference in brackets trained "
              "on the sweep's own machine (PPO's outcome moves with the CPU).")
    note = ("Each candidate's `<family>_<tag>` results ran on the same held-out episodes, start states and seeds as "
            "the shipped model's " + ", ".join(f"`{stem}`" for stem in refs.values()) + " (how each candidate was "
            "trained: `benchmarks/history.md`)." + rl + " A candidate ships only once it is benchmarked in full, "
            "RL transfer included.")
    return "\n".join(lines) + "\n\n" + note + "\n"


GLANCE_TITLE = "The current model at a glance"


def _on_checkpoint(r: dict[str, Any] | None, ref: dict[str, Any]) -> bool:
    """Whether a result ran on ``ref``'s checkpoint: the same training step and checkpoint file (``control``
    records the checkpoint's path where the other suites record the name it was given, so the name is not
    compared)."""
    return r is not None and bool(r) and all(r.get(k) == ref.get(k) for k in ("checkpoint_step", "model_sha256"))


def _default_settings(r: dict[str, Any], fid: dict[str, Any]) -> bool:
    k = r.get("sampler_steps") or (r.get("imagination_kwargs") or {}).get("sampler_steps") or fid["sampler_steps"]
    return (int(k) == int(fid["sampler_steps"]) and _guidance(r) == _guidance(fid)
            and _precision(r) == _precision(fid))


def _precision(r: dict[str, Any]) -> str:
    """The imagined rollouts' precision (``benchmark --precision``); results from before the option ran in fp32."""
    return r.get("precision") or (r.get("imagination_kwargs") or {}).get("precision") or "fp32"


def _default_episodes(r: dict[str, Any]) -> bool:
    """Whether an rl result's agent trained in imagined episodes that start where real ones do and run to the
    env's own horizon (no ``reset_mode`` / ``horizon`` given)."""
    kw = r.get("imagination_kwargs") or {}
    return kw.get("reset_mode", "episode_start") == "episode_start" and kw.get("horizon") is None


RECIPES_TITLE = "Training in imagination: where imagined episodes start, how long they run"


def _recipe_sweeps(results: dict[str, dict[str, Any]]) -> list[str]:
    """The rl seed sweeps (``rl_*_seeds``) of the current model (fidelity's checkpoint, default sampler)."""
    fid = results.get("fidelity")
    if not fid or "checkpoint_step" not in fid or "sampler_steps" not in fid:
        return []
    return sorted(stem for stem, r in results.items() if stem.startswith("rl_") and stem.endswith("_seeds")
                  and "per_seed" in r and _on_checkpoint(r, fid) and _default_settings(r, fid))


def rl_recipes_markdown(results: dict[str, dict[str, Any]]) -> str | None:
    """One row per way of training PPO in the current model's imagination (a seed sweep each): how imagined
    episodes end, where they start (``reset_mode``) and where they are cut (``horizon``). Every row is compared
    on the seeds all the sweeps ran, next to PPO trained in the real env on those seeds. None with fewer than
    two sweeps."""
    import numpy as np

    stems = _recipe_sweeps(results)
    if len(stems) < 2:
        return None
    seeds = sorted(set.intersection(*(set(map(int, results[s]["seeds"])) for s in stems)))
    if not seeds:
        return None

    def over(r: dict[str, Any], key: str) -> str:
        values = np.array([r["per_seed"][str(s)][key] for s in seeds])
        return f"{values.mean():.1f} ± {values.std():.1f}"

    lines = ["| imagined episodes the agent trains in: terminations, start, length | PPO steps | PPO in imagination: "
             "real-env return | same, sampled actions | its return in imagination | PPO in the real env: real-env "
             "return | its return in imagination | result |", "|---" * 8 + "|"]
    for stem in sorted(stems, key=lambda s: (not _default_episodes(results[s]), s)):
        r = results[stem]
        kw = r.get("imagination_kwargs") or {}
        start = "anywhere in the data" if kw.get("reset_mode") == "anywhere" else "episode starts"
        length = f"cut at {kw['horizon']} steps" if kw.get("horizon") is not None else "the env's horizon"
        label = f"{'sampled' if kw.get('termination') == 'sample' else 'thresholded'}, {start}, {length}"
        lines.append(f"| {label} | {r['agent_steps']:,} | "
                     f"{over(r, 'imagination')} | {over(r, 'imagination_sampled')} | "
                     f"{over(r, 'imagination_in_imagination')} | {over(r, 'real_trained')} | "
                     f"{over(r, 'real_trained_in_imagination')} | `{stem}` |")
    note = (f"Mean ± std over seeds {', '.join(map(str, seeds))} (the seeds every row ran; each sweep's own table, "
            "with all its seeds, is in `benchmarks/README.md`). Episodes start where real ones do and run to the "
            "env's horizon unless the agent trained with `benchmark rl --reset-mode anywhere --horizon H`. "
            "Returns in imagination play whole episodes from episode starts whatever the training episodes were, "
            "so they compare across rows; an agent that earns far more there than in the real env exploits the "
            "model.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def glance_markdown(results: dict[str, dict[str, Any]]) -> str | None:
    """One row per question a user asks of the imagined env, each answered by a current result (run on
    ``fidelity.json``'s checkpoint with its sampler settings; PPO trained in imagined episodes that start and end
    as real ones do) next to its reference: the real env, repeating the last real frame, or PPO trained in the
    real env. A row whose result is missing, or ran on another checkpoint or setting, is left out. None without a
    current ``fidelity`` result."""
    fid = results.get("fidelity")
    if not fid or "checkpoint_step" not in fid or "sampler_steps" not in fid:
        return None

    def current(stem: str) -> dict[str, Any] | None:
        r = results.get(stem)
        return r if r and _on_checkpoint(r, fid) and _default_settings(r, fid) and _default_episodes(r) else None

    def at(table: dict[str, Any], hs: list[int]) -> str:
        return " / ".join(f"{table[str(h)]['psnr']['mean']:.2f}" for h in hs)

    rows: list[tuple[str, str, str, str]] = []  # (question, imagined env, reference, result)
    hs = [h for h in (8, 16, 32) if str(h) in fid.get("model", {}) and str(h) in fid.get("repeat_last_frame", {})]
    if hs:
        rows.append((f"Do rollouts look right? PSNR {' / '.join(map(str, hs))} steps ahead (dB), replaying "
                     f"held-out actions from {fid.get('context_frames', '?')} real frames",
                     at(fid["model"], hs), f"repeat the last real frame: {at(fid['repeat_last_frame'], hs)}",
                     "fidelity"))
    mo = fid.get("motion", {}).get("model", {})
    if all(mo.get(str(h)) is not None for h in hs) and hs:
        rows.append((f"Do things move as far as in the real env? Share of the real change since the last real frame "
                     f"that the same rollouts reproduce, {' / '.join(map(str, hs))} steps ahead",
                     " / ".join(_f(mo[str(h)]) for h in hs), "1 (repeating the last frame: 0)", "fidelity"))
    if fid.get("reward_mae") is not None:
        rows.append(("Are the rewards right? mean absolute error per step on the same rollouts",
                     f"{fid['reward_mae']:.3f}", "0", "fidelity"))
    control = current("control")
    if control:
        h = control["headline"]
        if h.get("gain_h8") is not None:
            rows.append(("Do actions matter as much as in the real env? Effect of an action held 8 steps, "
                         "relative to the real one", _f(h["gain_h8"]), "1", "control"))
        on_time = h.get("termination_on_time")  # None: no real held-action episode ended within the horizon
        rows.append(("Do episodes of held actions end when the real ones do? (within "
                     f"{control.get('tolerance', 2)} steps)",
                     "–" if on_time is None else f"{100 * on_time:.0f} %",
                     "100 %" if on_time is not None else "no real episode ended", "control"))
    tails = current("termination_tails")
    if tails:
        rows.append((f"Do imagined episodes end when the real ones do? {tails['imagined']['episodes']} held-out "
                     "terminations: on time / early / missed", _pct(tails["imagined"]), "100 / 0 / 0 %",
                     "termination_tails"))
    play = current("random_play")
    if play:
        h = play["headline"]
        rows.append(("Does random play fail as fast as in the real env? Mean episode length (steps)",
                     f"{h['threshold_mean_length']:.1f} (sampled terminations: {h['sampled_mean_length']:.1f})",
                     f"real env: {h['real_mean_length']:.1f}", "random_play"))
        per_step = play["return"]
        rows.append(("Reward per step of random play", f"{per_step['threshold']['per_step']:.2f}",
                     f"real env: {per_step['real']['per_step']:.2f}", "random_play"))
    sweeps = sorted(stem for stem in results if stem.startswith("rl_") and stem.endswith("_seeds")
                    and current(stem))
    for stem in sweeps:
        r, spread = results[stem], results[stem]["across_seeds"]

        def ms(key: str, spread: dict[str, Any] = spread) -> str:
            return f"{spread[key]['mean']:.1f} ± {spread[key]['std']:.1f}"

        kw = {k: v for k, v in (r.get("imagination_kwargs") or {}).items() if k != "sampler_steps"}
        rows.append((f"Does an agent trained only in it do well in the real env? PPO, {r['agent_steps']:,} steps"
                     + (f" ({', '.join(f'{k}={v!r}' for k, v in kw.items())})" if kw else "")
                     + f": real-env return, mean ± std over {len(r['seeds'])} seeds",
                     ms("imagination"), f"PPO trained in the real env: {ms('real_trained')}; random: "
                     f"{ms('random')}", stem))
    speed = results.get("speed")
    if speed and speed.get("batch_sweep") and speed.get("sampler_steps") == fid["sampler_steps"]:
        sweep = {b["batch"]: b["steps_per_s"] for b in speed["batch_sweep"]}
        batches = [b for b in (1, 16) if b in sweep] or sorted(sweep)[:1]
        cpu = speed.get("machine", {}).get("gpu") or speed.get("machine", {}).get("cpu", "?")
        rows.append((f"How fast is it? Imagined steps per second, {' / '.join(map(str, batches))} env(s) in one "
                     f"batch ({speed.get('preset', '?')} preset, {speed.get('device', '?')}, {cpu})",
                     " / ".join(f"{sweep[b]:.1f}" for b in batches), _bf16_speed(speed, batches), "speed"))
        # the same measurement on other machines (`benchmark speed --name speed_<machine>`), a row each
        for stem, other in sorted(results.items()):
            if not stem.startswith("speed_") or not other.get("batch_sweep"):
                continue
            if any(other.get(k) != speed.get(k) for k in ("sampler_steps", "preset", "device", "world_model")):
                continue
            sweep = {b["batch"]: b["steps_per_s"] for b in other["batch_sweep"]}
            if not all(b in sweep for b in batches):
                continue
            machine = other.get("machine", {})
            rows.append((f"The same on {machine.get('gpu') or _cpu(machine)} "
                         f"({machine.get('cpu_count', '?')} cores)", " / ".join(f"{sweep[b]:.1f}" for b in batches),
                         _bf16_speed(other, batches), stem))
    if not rows:
        return None
    lines = ["| question | imagined env | reference | result |", "|---|---|---|---|"]
    lines += [f"| {q} | {v} | {ref or '–'} | `{stem}` |" for q, v, ref, stem in rows]
    note = (f"Checkpoint step {fid['checkpoint_step']}, the settings `gym.make` uses "
            f"(K={fid['sampler_steps']} denoiser calls per frame"
            + (f", history guidance w={_guidance(fid):g}" if _guidance(fid) != 1.0 else ", no history guidance")
            + "); each result's full table is below. Other sampler settings: the sampler table"
            + ("; other ways of training PPO in imagination: the training table" if rl_recipes_markdown(results)
               else "") + ".")
    return "\n".join(lines) + "\n\n" + note + "\n"


def render(name: str, r: dict[str, Any]) -> str:
    kind = next((k for k in RENDERERS if name.startswith(k)), None)
    body = RENDERERS[kind](r) if kind else generic_markdown(r)
    return f"### {name}\n\n_{_machine(r)}_\n\n{body}\n"


def summary_tables(results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(title, Markdown table) of each summary table the results allow: the current model at a glance, its sampler
    settings, the PPO training recipes, fp32 against bf16."""
    tables = [(GLANCE_TITLE, glance_markdown(results)), (SAMPLER_TITLE, sampler_steps_markdown(results)),
              (RECIPES_TITLE, rl_recipes_markdown(results)), (PRECISION_TITLE, precision_markdown(results)),
              (CANDIDATES_TITLE, candidates_markdown(results))]
    return [(title, table) for title, table in tables if table]


README_TITLE = "# Benchmark results"  # the first line of a generated benchmarks/README.md


def make_readme(results_dir: str | Path, out: str | Path) -> str:
    results_dir = Path(results_dir)
    shown = Path(os.path.relpath(results_dir.resolve(), Path(out).resolve().parent)).as_posix()  # from the README
    parts = [README_TITLE, "",
             f"Generated by `python -m diffusion_world.bench.report` from the JSON files in `{shown}/`; "
             "every number below was printed by a benchmark run. Re-run a benchmark to update its section.", ""]
    results = {path.stem: json.loads(path.read_text()) for path in sorted(results_dir.glob("*.json"))}
    parts += [f"### {title}\n\n{table}" for title, table in summary_tables(results)]
    for stem, r in results.items():
        parts.append(render(stem, r))
    text = "\n".join(parts)
    atomic_write_text(out, text)
    return text


START, END = "<!-- benchmarks:start (generated by diffusion_world.bench.report) -->", "<!-- benchmarks:end -->"


def update_readme_section(readme: str | Path, results_dir: str | Path) -> bool:
    """Replace the block between the START/END markers of the project README with the headline numbers of
    every current result file that has them: ``<suite>.json``, and ``<suite>_<tag>.json`` run on the same model
    (another setting; without a ``<suite>.json``, on ``fidelity.json``'s model). The others, on other models
    (earlier shipped ones, candidates not shipped), are only named; the full tables of all are in
    benchmarks/README.md. False (and nothing written) where the README is absent or has no markers."""
    readme = Path(readme)
    text = readme.read_text() if readme.is_file() else ""
    if START not in text or END not in text:
        return False
    parts, archived = [], []
    results = {path.stem: json.loads(path.read_text()) for path in sorted(Path(results_dir).glob("*.json"))}
    tables = summary_tables(results)
    parts += [f"#### {title}\n\n{table}" for title, table in tables]
    sampler, recipes = (any(title == t for title, _ in tables) for t in (SAMPLER_TITLE, RECIPES_TITLE))
    in_precision_table = set(precision_stems(results))
    in_candidate_table = {stem for stems in candidate_stems(results)[1].values() for stem in stems.values()}
    # a seed sweep's per-seed results are summed up by its own table, and the sampler variants of the current
    # model by the sampler table (each in full in benchmarks/README.md)
    in_sweep = {row["result"] for r in results.values() for row in r.get("per_seed", {}).values()}
    in_sampler_table = {stem for stem, r in results.items() for base in ("fidelity", *SAMPLER_FAMILIES)
                        if sampler and stem != base and sampler_variant(stem, base) and base in results
                        and same_model(r, results[base])}
    # and the seed sweeps of other training recipes by the recipe table
    in_recipe_table = {stem for stem in _recipe_sweeps(results) if recipes and not _default_episodes(results[stem])}
    for stem, r in results.items():
        if ("headline" not in r or stem in in_sweep or stem in in_sampler_table or stem in in_recipe_table
                or stem in in_precision_table or stem in in_candidate_table):
            continue
        kind = next((k for k in RENDERERS if stem.startswith(k) and k != "model_speed"), None)
        # the model this suite's base result ran on; without a base result, the current model (fidelity's)
        current = results.get(kind or "") or results.get("fidelity", {})
        if kind is not None and stem != kind and not same_model(r, current):  # e.g. fidelity_step4150
            archived.append(f"`{stem}`")
            continue
        body = RENDERERS[kind](r) if kind else generic_markdown(r)
        parts.append(f"#### `{stem}`\n\n_{_machine(r)}_\n\n{body}\n")
    if archived:
        parts.append("Other checkpoints (earlier shipped models, candidates not shipped), with their settings "
                     "(tables in `benchmarks/README.md`): "
                     + ", ".join(archived) + ".\n")
    block = "\n".join([START, "", *parts, END])
    before, rest = text.split(START, 1)
    atomic_write_text(readme, before + block + rest.split(END, 1)[1])
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_world.bench.report",
        description="Regenerate ROOT/README.md from the result files in ROOT/results/, and the benchmark block "
                    f"(between the markers {START} and {END}) of the project README.")
    parser.add_argument("root", nargs="?", default="benchmarks",
                        help="the folder that holds results/ (default: benchmarks)")
    parser.add_argument("--readme", help="the README whose benchmark block is regenerated (default: ROOT/../README.md, "
                                         "where it has the markers; else none)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not (root / "results").is_dir():
        print(f"error: no results folder {str(root / 'results')!r}", file=sys.stderr)
        return 2
    readme = Path(args.readme) if args.readme else root.parent / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    if args.readme and not (START in text and END in text):
        print(f"error: {str(readme)!r} has no benchmark block (the markers {START} and {END})", file=sys.stderr)
        return 2
    make_readme(root / "results", root / "README.md")
    if update_readme_section(readme, root / "results"):
        print(f"wrote {root / 'README.md'} and the benchmark section of {readme}")
    else:
        print(f"wrote {root / 'README.md'} ({readme} has no benchmark block: left as it is)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

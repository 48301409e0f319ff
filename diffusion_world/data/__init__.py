"""Data: real envs as pixels (:class:`PixelEnv`), collection into Minari (:mod:`diffusion_world.data.collect`),
training windows (:class:`FrameCache`, :class:`WindowSampler`)."""

from diffusion_world.data.collect import load_sb3_model, make_policy, validate_dataset_id
from diffusion_world.data.dataset import FrameCache, WindowSampler
from diffusion_world.data.pixel_env import PixelEnv, ResizeFrames, make_pixel_env, resize_frame

__all__ = [
    "FrameCache",
    "PixelEnv",
    "ResizeFrames",
    "WindowSampler",
    "load_sb3_model",
    "make_pixel_env",
    "make_policy",
    "resize_frame",
    "validate_dataset_id",
]

"""The one reading of a `device` setting, shared by the pipeline and the trainer."""

from __future__ import annotations

import torch

from exfacegan.errors import ConfigError


def resolve_device(name: str, job_number: int | None = None) -> torch.device:
    """`auto` is CUDA when present, else the CPU. `job_number` is this process's place among the processes
    sharing the machine (a parallel sweep job, torchrun's LOCAL_RANK): `auto` and `cuda` then take GPU
    `job_number mod count`, while `cuda:N` stays N.

    The GPU is chosen by index rather than through CUDA_VISIBLE_DEVICES, because a launcher's worker
    process may run several jobs one after another, and CUDA reads that variable only once.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"device={name!r} is not a device name (use auto, cpu, cuda or cuda:N)") from error
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but no CUDA device is available; use device=cpu")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.index is not None and device.type == "cuda" and device.index >= count:
        raise ConfigError(f"device={name} but this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}")
    if device.type == "cuda" and device.index is None and job_number is not None:
        return torch.device("cuda", job_number % torch.cuda.device_count())
    return device

"""The machine a lab reading was made on: a description for benchmark files and an identity for run records.
The package records neither: seconds compare only on one machine, which is the lab's business."""

from __future__ import annotations

import platform
from pathlib import Path

from cropi.machine import usable_cores


def machine_description() -> str:
    """"CPU, N cores, M GiB RAM, GPU; torch ..." where N is what this process may use (``usable_cores``)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {usable_cores()} cores{mem}{gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def host_id() -> str:
    """This machine's identity, recorded by every run: seconds compare only between runs on one machine.  The
    kernel's boot id (a new one after a reboot, which is taken as another machine), else the host name."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return platform.node() or "unknown"



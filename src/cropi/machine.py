"""What this process may use of the machine it runs on."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``); None when
    there is none or it cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(root: Path = CGROUP) -> int:
    """The cores this process can run on at once: the CPU affinity mask, capped by a cgroup quota (a container
    limited to 1.5 CPUs on a 64-core host gets 2).  ``os.cpu_count`` counts the host's cores instead, which
    would let work meant for one core per process oversubscribe a container."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    return max(1, min(cores, math.ceil(limit))) if limit else max(1, cores)

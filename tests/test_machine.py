"""The cores a process may use: affinity capped by a cgroup quota, read from a fake cgroup tree."""

import os

from cropi.machine import cgroup_cpu_limit, usable_cores


def _affinity():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_no_cgroup_quota_leaves_the_affinity_mask(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None
    assert usable_cores(tmp_path) == _affinity()
    (tmp_path / "cpu.max").write_text("max 100000\n")  # v2, unlimited
    assert cgroup_cpu_limit(tmp_path) is None and usable_cores(tmp_path) == _affinity()


def test_v2_quota_caps_the_cores_rounding_up(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert usable_cores(tmp_path) == min(_affinity(), 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core still runs one process
    assert usable_cores(tmp_path) == 1


def test_v1_quota_is_read_and_minus_one_means_none(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.0 and usable_cores(tmp_path) == 1

"""Record beside a finished run which machine measured its seconds and under what load (``RUN/host.json``): the
package records no machine, and ``lab.readings`` compares seconds only between runs of one machine, leaving out
runs whose mean 1-minute load exceeded their cores (contended).

    python lab/scripts/stamp_host.py RUN_DIR --load-log LOG --start EPOCH --end EPOCH [--code COMMIT]

LOG holds lines "EPOCH LOAD1" (the driver samples /proc/loadavg); the samples within [start, end] are averaged.
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the lab is not installed

from cropi.io import write_json
from cropi.machine import usable_cores
from lab.machines import host_id, machine_description

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("run", type=Path)
ap.add_argument("--load-log", type=Path, required=True)
ap.add_argument("--start", type=float, required=True)
ap.add_argument("--end", type=float, required=True)
ap.add_argument("--code", default=None, help="the commit of cropi's code the run ran on")
args = ap.parse_args()
loads = []
for line in args.load_log.read_text().splitlines():
    t, load = line.split()[:2]
    if args.start <= float(t) <= args.end:
        loads.append(float(load))
write_json(args.run / "host.json", {
    "schema_version": 1, "host": host_id()[:8], "machine": machine_description(), "code": args.code,
    "load_1min_at_evals": {"mean": round(statistics.fmean(loads), 2) if loads else None, "samples": len(loads),
                           "cores": usable_cores()}})

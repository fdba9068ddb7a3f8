"""Committed plots in a 256-colour palette: the comparison plots are a few flat colours and their anti-aliased
edges, so a palette keeps them readable at about a third of the bytes, and the tree stays small.  In place, each
file written under a temporary name and then renamed.

    .venv/bin/python lab/scripts/shrink_png.py lab/results/*.png
"""
import argparse
import os
from pathlib import Path

from PIL import Image


def shrink(path: Path) -> tuple[int, int]:
    """Rewrite ``path`` with a 256-colour palette; (bytes before, bytes after)."""
    before = path.stat().st_size
    with Image.open(path) as im:
        if im.mode == "P":  # already a palette: nothing to gain
            return before, before
        small = im.convert("RGB").quantize(256)
    tmp = path.with_name(path.name + ".tmp")
    small.save(tmp, "PNG", optimize=True)
    os.replace(tmp, path)
    return before, path.stat().st_size


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pngs", type=Path, nargs="+", help="the PNG files to rewrite")
    total = [0, 0]
    for p in parser.parse_args().pngs:
        b, a = shrink(p)
        total = [total[0] + b, total[1] + a]
    print(f"shrink_png.py: {total[0]:,} bytes -> {total[1]:,}")

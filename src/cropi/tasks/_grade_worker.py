"""Grader worker process: does the math-verify / sympy work for ``cropi.tasks.grading``.

Runs as its own interpreter so the parent can kill it when sympy gets stuck (math-verify's own timeout
uses ``signal.alarm``, which only works in the main thread of the main process, so it is switched off
here).  Protocol over pipes, one JSON document per line:

* worker -> parent, once at start: ``{"ready": true}`` or ``{"error": "..."}``;
* parent -> worker: ``[[op, arg, ...], ...]`` (a batch);
* worker -> parent: one JSON value per batch item, in order, flushed as each item finishes, so the
  parent can time items out one by one: ``1``/``0`` for ``["v", gold, pred]`` (verify) and
  ``true``/``false`` for ``["p", text]`` (does math-verify parse ``text`` into a sympy object?).

Nothing here evaluates text as Python; answers go through math-verify's LaTeX parser only.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from functools import lru_cache


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent dies, even in the middle of a long sympy computation."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def main() -> None:
    # The protocol gets a private copy of stdout; anything sympy or a library prints goes to stderr.
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj) -> None:
        channel.write(json.dumps(obj).encode() + b"\n")

    try:
        import logging

        # math-verify warns once that its timeout is disabled, and on every parse failure; the timeout
        # is ours (the parent kills this process) and failures are reported as results.
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)
        from math_verify import LatexExtractionConfig, parse, verify
        from sympy import Basic, MatrixBase

        config = [LatexExtractionConfig()]

        @lru_cache(maxsize=4096)
        def parse_boxed(text: str) -> tuple:
            # Gold and candidate are already extracted; boxing them makes math-verify take the whole
            # string as the answer instead of hunting for one inside it.
            return tuple(parse("\\boxed{" + text + "}", extraction_config=config, parsing_timeout=None))

        def do_verify(gold: str, pred: str) -> int:
            g, p = parse_boxed(gold), parse_boxed(pred)
            if not g or not p:
                return 0
            return int(bool(verify(list(g), list(p), timeout_seconds=None)))

        def do_parse(text: str) -> bool:
            return any(isinstance(x, (Basic, MatrixBase)) for x in parse_boxed(text))

        do_verify("1", "1")  # builds the LaTeX parser now, not during the first timed call
    except BaseException as e:  # report why, instead of dying silently
        send({"error": f"{type(e).__name__}: {e}"})
        return

    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    send({"ready": True})

    for line in sys.stdin.buffer:
        try:
            batch = json.loads(line)
        except ValueError:
            return  # the parent never sends bad JSON; treat it as a broken pipe
        for item in batch:
            try:
                if item[0] == "v":
                    result = do_verify(item[1], item[2])
                else:
                    result = do_parse(item[1])
            except Exception:  # a grader must never crash on a weird answer: it is just wrong
                result = 0 if item[0] == "v" else False
            send(result)


if __name__ == "__main__":
    main()

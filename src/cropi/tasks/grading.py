"""Verifiable math rewards with a hard time limit.

``grade_math(gold, response)`` is 1.0 when the answer in ``response`` equals ``gold`` and 0.0 otherwise.
The candidate answer is the last ``\\boxed{}`` of the response, else the number after ``####``, else the
last number in the text.  Plain numbers are compared here, exactly; everything else goes to math-verify
(sympy), which can take unbounded time or memory on hostile input (``9^{9^{9^9}}``), so that work runs
in separate worker processes that are killed and replaced when an answer takes longer than ``timeout``
seconds (the answer then scores 0.0).  Because the limit is enforced by killing a process rather than by
``signal.alarm``, it holds in worker threads and in child processes too.

Workers are plain interpreters started with ``subprocess`` (no ``multiprocessing`` start-method or
``__main__`` re-import problems); a small pool of them (``CROPI_GRADER_WORKERS``, default 2) is started on
first use, so the process replacing a killed worker warms up while the spare one serves.  Calls are safe
from any number of threads; each takes a worker for the length of its batch.  POSIX only (the parent
waits on the workers' pipes with ``selectors``).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Sequence

from cropi.tasks.math_data import extract_boxed, extract_gsm8k_answer

# Cheap rejections before anything reaches sympy.  They only avoid paying the timeout on answers no
# benchmark has as gold; the process kill is what actually bounds the time.
MAX_ANSWER_CHARS = 1000
MAX_BRACE_DEPTH = 16
STARTUP_TIMEOUT = 60.0  # a cold worker imports sympy; not charged to the answer being graded

_BOX_MENTION = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Last-number fallback: thousands groups only when well formed ("1,000" yes, "1,2,3" is three numbers).
_LAST_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# A power whose exponent is itself a power of numbers (9^{9^9}, 10^10^10), a five-digit-plus integer
# exponent, or a five-digit-plus factorial: values sympy would try to expand exactly.
_HUGE_POWER = re.compile(
    r"\^\s*\{?\s*\(?\s*\d+\s*\)?\s*\}?\s*\^"  # nested numeric exponent
    r"|\^\s*\{?\s*\d{5,}"  # exponent >= 10000
    r"|\d{5,}\s*!"  # factorial of a huge number
)


class GraderError(RuntimeError):
    """A grader worker could not be started (for example math-verify is not importable)."""


# ---------------------------------------------------------------------------------------------------
# Answer extraction and the cheap path


def extract_response_answer(response: str) -> str | None:
    """The candidate answer of a model response: last ``\\boxed{}``, else ``####``, else last number.

    A response that uses ``\\boxed`` but never closes the last one gets None (a truncated answer is no
    answer) instead of falling through to a stray number.
    """
    if _BOX_MENTION.search(response):
        return extract_boxed(response)
    if "####" in response:
        found = extract_gsm8k_answer(response)
        if found is not None:
            return found
    numbers = _LAST_NUMBER.findall(response)
    if numbers:
        return numbers[-1].replace(",", "")
    return None


def _as_number(text: str) -> Decimal | None:
    """``text`` as an exact decimal when it is just a number (``$1,000``, ``18.``, ``50\\%``), else None."""
    t = text.strip()
    if len(t) > 100:
        return None
    for junk in ("\\$", "$", "\\!", "{,}", "\\,", " ", "\\%", "%", "^\\circ", "^{\\circ}"):
        t = t.replace(junk, "")
    t = _THOUSANDS.sub("", t)
    if t.endswith("."):
        t = t[:-1]
    if not _PLAIN_NUMBER.fullmatch(t):
        return None
    try:
        return Decimal(t)
    except InvalidOperation:
        return None


def _brace_depth(text: str) -> int:
    depth = deepest = 0
    for c in text:
        if c == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif c == "}":
            depth -= 1
    return deepest


def _worth_verifying(candidate: str) -> bool:
    """False for candidates that are certainly not a benchmark answer and are expensive for sympy."""
    return (
        len(candidate) <= MAX_ANSWER_CHARS
        and _brace_depth(candidate) <= MAX_BRACE_DEPTH
        and _HUGE_POWER.search(candidate) is None
    )


# ---------------------------------------------------------------------------------------------------
# Worker processes


def _worker_command() -> list[str]:
    package_root = str(Path(__file__).resolve().parents[2])
    # sys.path[0] is the current directory under -c; replace it so a stray local module cannot shadow sympy.
    boot = "import sys; sys.path[0] = sys.argv[1]; from cropi.tasks._grade_worker import main; main()"
    return [sys.executable, "-c", boot, package_root]


class _Worker:
    """One grader process and the parent's end of its pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            _worker_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self.fd = self.proc.stdout.fileno()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)
        self.buffer = b""
        self.ready = False
        self.error: str | None = None  # why it failed to start

    def read_line(self, deadline: float) -> bytes | None:
        """Next line from the worker; None on timeout, ``b""`` when the worker has exited."""
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.selector.select(remaining):
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return b""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def poll_ready(self) -> bool:
        """Non-blocking: has the worker finished starting (or failed to)?"""
        if not self.ready and self.error is None:
            self._check_ready(time.monotonic())
        return self.ready or self.error is not None

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        if not self.ready and self.error is None:
            self._check_ready(time.monotonic() + timeout)
            if not self.ready and self.error is None:
                self.error = f"did not start within {timeout:.0f} s"
        if self.error is not None:
            raise GraderError(f"grader worker failed to start: {self.error}")

    def _check_ready(self, deadline: float) -> None:
        line = self.read_line(deadline)
        if line is None:
            return
        try:
            msg = json.loads(line) if line else {"error": f"exited with code {self.proc.poll()}"}
        except ValueError:
            msg = {"error": f"unexpected output {line[:200]!r}"}
        if msg.get("ready"):
            self.ready = True
        else:
            self.error = str(msg.get("error"))

    def send(self, batch: list[list[Any]]) -> None:
        self.proc.stdin.write(json.dumps(batch).encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.close_pipes()

    def close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.selector.close()


class _PoolClosed(Exception):
    """The pool was shut down while a caller waited for a worker; the caller retries on a new pool."""


class _Pool:
    """A fixed number of workers, each used by one caller at a time."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.pid = os.getpid()
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []
        self.alive: set[_Worker] = set()
        self.closed = False

    def acquire(self) -> _Worker:
        with self.cond:
            while True:
                if self.closed:
                    raise _PoolClosed
                if not self.alive:  # first use: start them all so a spare is warming up
                    for _ in range(self.size):
                        self._spawn()
                if self.idle:
                    for i, w in enumerate(self.idle):
                        if w.poll_ready():  # ready, or failed: the caller then raises the error
                            return self.idle.pop(i)
                    return self.idle.pop(0)  # all still starting: wait on the oldest
                if len(self.alive) < self.size:
                    self._spawn()
                    continue
                self.cond.wait()

    def _spawn(self) -> None:
        w = _Worker()
        self.alive.add(w)
        self.idle.append(w)

    def release(self, w: _Worker) -> None:
        with self.cond:
            if self.closed:
                w.kill()
                return
            self.idle.append(w)
            self.cond.notify()

    def discard(self, w: _Worker, replace: bool = True) -> None:
        """Kill ``w`` (stuck or dead) and start its replacement right away, so it warms up meanwhile."""
        w.kill()
        with self.cond:
            self.alive.discard(w)
            if replace and not self.closed:
                self._spawn()
            self.cond.notify()

    def shutdown(self) -> None:
        with self.cond:
            self.closed = True
            workers, self.alive, self.idle = list(self.alive), set(), []
            self.cond.notify_all()
        for w in workers:
            w.kill()

    def forget(self) -> None:
        """In a forked child: stop using the parent's workers without killing them.  Their pipe objects
        are kept alive, not closed: closing could flush bytes a parent thread had buffered at fork time
        into the parent's worker."""
        _FORKED_LEFTOVERS.append(self)
        self.closed = True


_POOL: _Pool | None = None
_FORKED_LEFTOVERS: list[_Pool] = []
_POOL_LOCK = threading.Lock()
_WORKERS = int(os.environ.get("CROPI_GRADER_WORKERS", "2") or 2)


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.closed or _POOL.pid != os.getpid():
            _POOL = _Pool(_WORKERS)
        return _POOL


def configure_grader(workers: int) -> None:
    """Set the number of grader processes (default 2, or ``CROPI_GRADER_WORKERS``); restarts the pool."""
    global _WORKERS
    if workers < 1:
        raise ValueError("workers must be >= 1")
    shutdown_grader()
    _WORKERS = workers


def start_grader(wait: bool = True) -> None:
    """Start the grader processes now (they otherwise start on the first non-numeric answer), so the
    one-off start-up of about a second is not paid inside a timed step.  With ``wait``, block until
    they are ready; raises ``GraderError`` if they cannot start."""
    pool = _pool()
    workers = [pool.acquire() for _ in range(pool.size)]
    try:
        if wait:
            for w in workers:
                w.wait_ready()
    except BaseException:
        for w in workers:
            pool.discard(w, replace=False)
        raise
    for w in workers:
        pool.release(w)


def shutdown_grader() -> None:
    """Kill all grader processes of this process (they restart on the next call).  Runs at exit."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool.pid == os.getpid():
        pool.shutdown()


def _after_fork_in_child() -> None:
    global _POOL, _POOL_LOCK
    _POOL_LOCK = threading.Lock()  # the parent's may have been held by another thread
    if _POOL is not None:
        _POOL.forget()
    _POOL = None


atexit.register(shutdown_grader)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _run_on_one_worker(items: list[list[Any]], timeout: float, failed: Any) -> list[Any]:
    """Results of ``items`` from one worker; an item that exceeds ``timeout`` or crashes the worker
    gets ``failed``, the worker is replaced and the rest of the items go to the next one."""
    results: list[Any] = []
    send_failures = 0
    while len(results) < len(items):
        pool = _pool()
        try:
            w = pool.acquire()
        except _PoolClosed:  # shut down (configure_grader) while we waited: use the new pool
            continue
        healthy = False
        try:
            w.wait_ready()
            try:
                w.send(items[len(results) :])
            except OSError:  # died while idle; try another
                send_failures += 1
                if send_failures > 3:
                    raise GraderError("grader workers keep dying") from None
                continue
            for _ in range(len(results), len(items)):
                line = w.read_line(time.monotonic() + timeout)
                try:
                    results.append(json.loads(line) if line else failed)
                except ValueError:
                    line = None  # garbled output: treat like a crash
                    results.append(failed)
                if not line:  # timeout (None) or crash (b""): this worker is done for
                    break
            else:
                healthy = True
        except GraderError:
            pool.discard(w, replace=False)
            raise
        finally:
            if healthy:
                pool.release(w)
            elif w in pool.alive:
                pool.discard(w)
    return results


def _run(items: list[list[Any]], timeout: float, failed: Any) -> list[Any]:
    """Spread a large batch over the pool's workers (one thread each); small batches use one worker."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if not items:
        return []
    n = min(_WORKERS, len(items) // 32)
    if n <= 1:
        return _run_on_one_worker(items, timeout, failed)
    size = -(-len(items) // n)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    outputs: list[list[Any] | BaseException | None] = [None] * len(chunks)

    def work(k: int) -> None:
        try:
            outputs[k] = _run_on_one_worker(chunks[k], timeout, failed)
        except BaseException as e:  # re-raised in the calling thread
            outputs[k] = e

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(1, len(chunks))]
    for t in threads:
        t.start()
    work(0)
    for t in threads:
        t.join()
    results: list[Any] = []
    for out in outputs:
        if isinstance(out, BaseException):
            raise out
        results.extend(out)  # type: ignore[arg-type]
    return results


# ---------------------------------------------------------------------------------------------------
# Public API


def verify_answers(golds: Sequence[str], preds: Sequence[str], timeout: float = 1.0) -> list[float]:
    """math-verify's verdict on already-extracted answer pairs (gold first), each limited to ``timeout``
    seconds; no fast path and no pre-checks.  ``grade_math_batch`` is the reward to use; this is the
    raw comparison, for diagnostics and tests."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} golds but {len(preds)} predictions")
    out = _run([["v", str(g), str(p)] for g, p in zip(golds, preds)], timeout, 0)
    return [float(r) for r in out]


def check_parseable(answers: Sequence[str], timeout: float = 1.0) -> list[bool]:
    """For each answer, whether math-verify parses it into a sympy object (False on failure or timeout).

    An answer it cannot parse is still gradable, but only by exact string match."""
    return [bool(r) for r in _run([["p", str(a)] for a in answers], timeout, False)]


def grade_math_batch(golds: Sequence[str], responses: Sequence[str], timeout: float = 1.0) -> list[float]:
    """``grade_math`` for many pairs; the math-verify work goes to the workers in one round trip each."""
    if len(golds) != len(responses):
        raise ValueError(f"{len(golds)} golds but {len(responses)} responses")
    scores = [0.0] * len(golds)
    pending: list[int] = []
    items: list[list[Any]] = []
    for i, (gold, response) in enumerate(zip(golds, responses)):
        gold = str(gold).strip()
        if not gold or not isinstance(response, str):
            continue
        candidate = extract_response_answer(response)
        if not candidate:
            continue
        g_num, c_num = _as_number(gold), _as_number(candidate)
        if g_num is not None and c_num is not None:
            scores[i] = float(g_num == c_num)
            continue
        if not _worth_verifying(candidate):
            continue
        pending.append(i)
        items.append(["v", gold, candidate])
    for i, r in zip(pending, _run(items, timeout, 0)):
        scores[i] = float(r)
    return scores


def grade_math(gold: str, response: str, timeout: float = 1.0) -> float:
    """1.0 if the answer in ``response`` matches ``gold`` (math-verify equivalence), else 0.0.

    Returns within about ``timeout`` seconds whatever the response holds (plus a one-off worker start
    of well under a second on the first call, or after a worker had to be killed and no spare was warm).
    """
    return grade_math_batch([gold], [response], timeout)[0]

"""The embedded synthetic task suite: short reasoning problems with exact answers and graded difficulty.

Each family knows how to draw a problem at a difficulty level, its canonical key (so that pool, validation
and test sets can be kept disjoint even where the problem space is small), the response text a perfect
policy writes, and its verifiable reward.

Answer format.  Arithmetic answers (add, sub, mul, word) are written *least-significant digit first*
("347+285=" -> "236", i.e. 632): a tiny left-to-right transformer can then produce each digit from the
operand digits and one carry, and a probe found such answers learnable several times faster than plain ones.
The grader simply compares the stripped response with that text, so nothing is lost for verification.

The suite is deterministic from ``pool_seed``: the same config always yields the same pool, validation
and test problems.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

from cropi.tasks.problem import Problem
from cropi.tasks.suite import Suite

MAX_DIFFICULTY = 5


def _rev(n: int) -> str:
    return str(n)[::-1]


def _num(rng: random.Random, digits: int) -> int:
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(lo, 10**digits - 1)


@dataclass(frozen=True)
class Family:
    """A problem family.  ``draw(rng, difficulty)`` -> (prompt, answer, canonical key)."""

    name: str
    draw: Callable[[random.Random, int], tuple[str, str, str]]
    description: str
    reversed_answer: bool = False

    def target_text(self, answer: str) -> str:
        """The response a perfect policy writes for ``answer`` (before end-of-sequence)."""
        return answer[::-1] if self.reversed_answer else answer

    def reward(self, answer: str, response: str) -> float:
        """Exact match of the stripped response with the target text: 1.0 or 0.0."""
        return 1.0 if response.strip() == self.target_text(answer) else 0.0


def _add(rng: random.Random, d: int) -> tuple[str, str, str]:
    a, b = _num(rng, d), _num(rng, rng.randint(1, d))
    if rng.random() < 0.5:
        a, b = b, a
    return f"{a}+{b}=", str(a + b), f"add:{min(a, b)}:{max(a, b)}"


def _sub(rng: random.Random, d: int) -> tuple[str, str, str]:
    a, b = _num(rng, d), _num(rng, rng.randint(1, d))
    a, b = max(a, b), min(a, b)
    return f"{a}-{b}=", str(a - b), f"sub:{a}:{b}"


def _mul(rng: random.Random, d: int) -> tuple[str, str, str]:
    a, b = _num(rng, d), rng.randint(2, 9)
    return f"{a}*{b}=", str(a * b), f"mul:{a}:{b}"


def _cmp(rng: random.Random, d: int) -> tuple[str, str, str]:
    a, b = _num(rng, d + 1), _num(rng, d + 1)
    while a == b:
        b = _num(rng, d + 1)
    return f"max {a} {b}=", str(max(a, b)), f"cmp:{min(a, b)}:{max(a, b)}"


_LETTERS = "abcde"


def _count(rng: random.Random, d: int) -> tuple[str, str, str]:
    n = 2 + 2 * d
    s = "".join(rng.choice(_LETTERS) for _ in range(n))
    c = rng.choice(_LETTERS)
    return f"count {c} {s}=", str(s.count(c)), f"count:{c}:{s}"


def _sort(rng: random.Random, d: int) -> tuple[str, str, str]:
    s = "".join(str(rng.randint(0, 9)) for _ in range(d + 2))
    return f"sort {s}=", "".join(sorted(s)), f"sort:{s}"


def _mod(rng: random.Random, d: int) -> tuple[str, str, str]:
    a, m = _num(rng, d + 1), rng.randint(2, 9)
    return f"{a}%{m}=", str(a % m), f"mod:{a}:{m}"


_NAMES = ("ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal")
_ITEMS = ("pens", "cups", "eggs", "figs", "hats", "keys")


def _word(rng: random.Random, d: int) -> tuple[str, str, str]:
    """Two-step templated word problem: start, gain, lose (never negative).  The start has up to ``d``
    digits; gain and loss one digit below level 3, two digits from level 3."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a = _num(rng, d)
    small = 9 if d < 3 else 99
    b = rng.randint(1, small)
    c = rng.randint(1, min(a + b, small))
    prompt = f"{name} has {a} {item}, gets {b}, gives {c}. left?"
    return prompt, str(a + b - c), f"word:{a}:{b}:{c}"


def _digitwise(a: int, b: int, op) -> int:
    """Apply ``op`` to aligned digits and drop every carry/borrow: the classic pupil's mistake."""
    sa, sb = str(a)[::-1], str(b)[::-1]
    n = max(len(sa), len(sb))
    digits = [op(int(sa[i]) if i < len(sa) else 0, int(sb[i]) if i < len(sb) else 0) % 10 for i in range(n)]
    return int("".join(str(x) for x in reversed(digits)))


def misconception(family: str, key: str) -> str | None:
    """The systematic wrong answer the pretraining corpus teaches for some problems, or None.

    add / mul: carries dropped; sub: smaller digit taken from the larger; word: the loss is forgotten.  Mixing
    these into the SFT data gives a base policy that *can* sample the right answer but often prefers a wrong
    one — the situation RL with verifiable rewards is good at fixing (greedy accuracy rises as the policy
    sharpens onto the rewarded answers)."""
    parts = key.split(":")
    if family == "add":
        return str(_digitwise(int(parts[1]), int(parts[2]), lambda x, y: x + y))
    if family == "sub":
        return str(_digitwise(int(parts[1]), int(parts[2]), lambda x, y: abs(x - y)))
    if family == "mul":
        a, k = int(parts[1]), int(parts[2])
        return str(int("".join(str(int(ch) * k % 10) for ch in str(a))))
    if family == "word":
        return str(int(parts[1]) + int(parts[2]))
    return None


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("add", _add, "a+b, operands up to `difficulty` digits", reversed_answer=True),
        Family("sub", _sub, "a-b with a>=b", reversed_answer=True),
        Family("mul", _mul, "a*k, k a single digit", reversed_answer=True),
        Family("cmp", _cmp, "the larger of two numbers"),
        Family("count", _count, "occurrences of a letter in a string"),
        Family("sort", _sort, "the digits of a string in ascending order"),
        Family("mod", _mod, "a mod k, k a single digit"),
        Family("word", _word, "two-step word problem: start + gain - loss", reversed_answer=True),
    )
}


@dataclass
class SuiteConfig:
    """Composition of the embedded suite.  Fix it before a comparison and keep it."""

    pool_seed: int = field(default=0, metadata={"help": "Seed of the suite's draw: the same seed, the same problems."})
    # the authors' proportions: a 10-step stage of 32 prompts covers a quarter of a 10% selection, as their
    # 10 steps of 128 prompts do in a 50k pool; data is abundant next to what a stage consumes
    pool_size: int = field(default=12800, metadata={"help": "Training pool prompts."})
    families: list[str] = field(default_factory=lambda: list(FAMILIES), metadata={"help": "Problem families drawn."})
    targeted: list[str] = field(default_factory=lambda: ["add", "sub"],
                                metadata={"help": "Families with validation sets (the ones selection aims at)."})
    weights: dict[str, float] = field(default_factory=dict,
                                      metadata={"help": "Relative weight of each family in the pool; missing ones weigh 1."})
    difficulty_weights: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 3.0, 2.0], metadata={
        "help": "Weights of difficulty levels 1..5, the same for every family and split."})
    val_size: int = field(default=200, metadata={"help": "Validation prompts per targeted family."})
    test_size_targeted: int = field(default=500, metadata={"help": "Test prompts per targeted family."})
    test_size_untargeted: int = field(default=200, metadata={"help": "Test prompts per untargeted family."})
    scenario: str = field(default="clean", metadata={"help": (
        "The pool's condition: clean; noisy_keys (some targeted pool prompts carry a wrong gold answer); "
        "off_target (the targeted families are scarce in the pool).  Validation and test sets are the clean ones.")})
    noisy_key_rate: float = field(default=0.2, metadata={"help": (
        "noisy_keys: share of the targeted families' pool prompts whose gold answer is the family's common mistake "
        "(the carry dropped, the digits subtracted the wrong way round), drawn among prompts where it is wrong.")})
    style: str = field(default="tiny", metadata={"help": (
        "tiny: bare prompts, answered as the embedded policy writes them (some families' digits reversed); "
        "few_shot: data.suite.shots solved examples of the family before each question, plain answers, graded on "
        "the response's first line (for a pretrained LM such as smollm2; its held-out problems are not kept out "
        "of the embedded policy's SFT data).")})
    shots: int = field(default=4, metadata={"help": "few_shot: solved examples before each question."})
    targeted_share: float = field(default=0.05, metadata={"help": (
        "off_target: the targeted families' share of the pool, split evenly among them; the other families "
        "share the rest evenly (data.suite.weights must be left unset).")})


def suite_problems(suite: SuiteConfig) -> Iterator[tuple[str, str]]:
    """(config key, what is wrong) for the suite's composition (``cropi.config.validate`` reports them): known
    families, targeted ones among them, sizes and weights that draw."""
    for key in ("pool_size", "val_size", "test_size_targeted", "test_size_untargeted"):
        if getattr(suite, key) < 1:
            yield f"data.suite.{key}", f"{getattr(suite, key)!r}: must be >= 1"
    unknown = [f for f in suite.families if f not in FAMILIES]
    if not suite.families or unknown:
        yield "data.suite.families", (f"{suite.families!r}: must be a non-empty list of {', '.join(FAMILIES)}"
                                      if not unknown else f"{unknown[0]!r} is not a family ({', '.join(FAMILIES)})")
    elif not set(suite.targeted) <= set(suite.families):
        yield "data.suite.targeted", f"{suite.targeted!r}: must be among data.suite.families {suite.families!r}"
    w = suite.difficulty_weights
    if len(w) != MAX_DIFFICULTY or min(w) < 0 or sum(w) <= 0:
        yield "data.suite.difficulty_weights", (f"{w!r}: must be {MAX_DIFFICULTY} non-negative weights, "
                                                "not all zero")
    if any(v < 0 for v in suite.weights.values()) or (suite.weights and not set(suite.weights) <= set(FAMILIES)):
        yield "data.suite.weights", f"{suite.weights!r}: must map known families to non-negative weights"
    if suite.style not in STYLES:
        yield "data.suite.style", f"{suite.style!r}: must be one of {', '.join(STYLES)}"
    if suite.shots < 0:
        yield "data.suite.shots", f"{suite.shots!r}: must be >= 0"
    if suite.scenario not in SCENARIOS:
        yield "data.suite.scenario", f"{suite.scenario!r}: must be one of {', '.join(SCENARIOS)}"
    if not 0.0 <= suite.noisy_key_rate <= 1.0:
        yield "data.suite.noisy_key_rate", f"{suite.noisy_key_rate!r}: must be between 0 and 1"
    if not 0.0 < suite.targeted_share < 1.0:
        yield "data.suite.targeted_share", f"{suite.targeted_share!r}: must be between 0 and 1, both excluded"
    if suite.scenario == "off_target" and suite.weights:
        yield "data.suite.weights", f"{suite.weights!r}: off_target sets the pool's weights from targeted_share"
    if suite.scenario == "off_target" and set(suite.families) <= set(suite.targeted):
        yield "data.suite.scenario", "off_target needs families without validation sets (data.suite.families)"


SCENARIOS = ("clean", "noisy_keys", "off_target")
STYLES = ("tiny", "few_shot")


def _seed_for(*parts: object) -> int:
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def _draw_split(
    family: str,
    n: int,
    split: str,
    cfg: SuiteConfig,
    taken: set[str],
    avoid: frozenset[str] | set[str] = frozenset(),
) -> list[Problem]:
    """Draw ``n`` problems of one family whose canonical keys are not in ``taken`` (which is updated) nor in
    ``avoid`` (which is not: keys a held-out split must not use, but the pool may).

    Where a difficulty level's problem space is exhausted (1-digit addition has 55 canonical problems) the
    draw moves on to another level rather than emitting duplicates."""
    fam = FAMILIES[family]
    rng = random.Random(_seed_for(cfg.pool_seed, family, split))
    levels = list(range(1, MAX_DIFFICULTY + 1))
    out: list[Problem] = []
    misses = 0
    while len(out) < n:
        d = rng.choices(levels, weights=cfg.difficulty_weights)[0]
        prompt, answer, key = fam.draw(rng, d)
        if key in taken or key in avoid:
            misses += 1
            if misses > 200 * n + 1000:
                raise ValueError(f"family {family!r}: problem space too small for {n} {split} problems")
            continue
        taken.add(key)
        out.append(
            Problem(
                id=f"{split}-{family}-{len(out):05d}",
                prompt=prompt,
                answer=answer,
                family=family,
                source="synthetic",
                difficulty=d,
                metadata={"canonical": key, "split": split},
            )
        )
    return out


# The embedded tiny policy's SFT data (``cropi.policy.tiny``): both phases draw from one seeded stream per family,
# the second (the focus phase, 2.5 x 200,000 draws before it is thinned) the longer prefix, holding out the
# validation and test problems of the default draw (pool seed 0).
EMBEDDED_SFT_SEED, EMBEDDED_SFT_DRAWS = 0, 500_000


@functools.lru_cache(maxsize=1)
def embedded_sft_keys() -> dict[str, frozenset[str]]:
    """Per family, the canonical keys of every problem the embedded policy may have seen in SFT (a superset:
    the focus phase's draws before thinning)."""
    base = SuiteConfig()
    # every draw of each family's stream, before the shuffle that drops a few (a key may occur only there);
    # any misconception rate > 0 consumes the stream alike
    drawn = _sft_draws(base, EMBEDDED_SFT_DRAWS // len(base.families) + 1, EMBEDDED_SFT_SEED,
                       _held_out(_build(base, {})), misconception_rate=0.5)
    keys: dict[str, set[str]] = {}
    for p in drawn:
        keys.setdefault(p.family, set()).add(p.metadata["canonical"])
    return {f: frozenset(k) for f, k in keys.items()}


def _held_out(suite: Suite) -> set[str]:
    return {p.metadata["canonical"] for p in suite.test_problems()} | {
        p.metadata["canonical"] for v in suite.validation.values() for p in v}


def _meets_sft(cfg: SuiteConfig) -> bool:
    """Whether a draw's validation or test problems can be among the embedded policy's SFT problems.  The
    default draw's cannot (SFT held them out), nor can any smaller one from the same streams: each split's
    problems are then among the default's draws.  Every other draw is kept out of SFT's keys."""
    d = SuiteConfig()
    if cfg.style != d.style:  # a few-shot draw is for other models than the embedded one
        return False
    return not (cfg.pool_seed == d.pool_seed and cfg.difficulty_weights == d.difficulty_weights
                and cfg.val_size <= d.val_size and cfg.test_size_targeted <= d.test_size_targeted
                and cfg.test_size_untargeted <= d.test_size_untargeted
                and set(cfg.targeted) <= set(d.targeted))


def build_suite(cfg: SuiteConfig | None = None) -> Suite:
    """Build pool, validation and test sets, disjoint by canonical problem.

    Test splits are drawn first, then validation, then the pool, each excluding every key drawn before,
    so a small problem space can never leak a test problem into training data.  Validation and test problems
    are also never among the embedded policy's SFT problems (``embedded_sft_keys``), whatever the draw of the
    ``tiny`` style (a ``few_shot`` draw is meant for other models and is not kept apart from them)."""
    cfg = cfg or SuiteConfig()
    return _build(cfg, embedded_sft_keys() if _meets_sft(cfg) else {})


def _build(cfg: SuiteConfig, avoid: dict[str, frozenset[str]]) -> Suite:
    unknown = [f for f in [*cfg.families, *cfg.targeted] if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown synthetic families {unknown}; known: {sorted(FAMILIES)}")
    targeted = [f for f in cfg.families if f in cfg.targeted]
    untargeted = [f for f in cfg.families if f not in cfg.targeted]
    taken: dict[str, set[str]] = {f: set() for f in cfg.families}
    # the few-shot examples come first, so no split holds a problem that a prompt shows solved
    shots = {f: _draw_split(f, cfg.shots, "shot", cfg, taken[f], avoid.get(f, frozenset()))
             for f in cfg.families} if cfg.style == "few_shot" else {}
    test = {}
    for f in cfg.families:
        n = cfg.test_size_targeted if f in targeted else cfg.test_size_untargeted
        test[f] = _draw_split(f, n, "test", cfg, taken[f], avoid.get(f, frozenset()))
    validation = {f: _draw_split(f, cfg.val_size, "val", cfg, taken[f], avoid.get(f, frozenset()))
                  for f in targeted}
    weights = [float(cfg.weights.get(f, 1.0)) for f in cfg.families]
    if cfg.scenario == "off_target":
        weights = [cfg.targeted_share / len(targeted) if f in targeted else (1 - cfg.targeted_share) / len(untargeted)
                   for f in cfg.families]
    total = sum(weights)
    counts = [int(cfg.pool_size * w / total) for w in weights]
    for i in range(cfg.pool_size - sum(counts)):  # hand out the rounding remainder deterministically
        counts[i % len(counts)] += 1
    pool: list[Problem] = []
    for f, n in zip(cfg.families, counts):
        pool.extend(_draw_split(f, n, "pool", cfg, taken[f]))
    if cfg.scenario == "noisy_keys":
        pool = _with_noisy_keys(pool, cfg, targeted)
    if shots:
        pool = [_few_shot(p, shots[p.family]) for p in pool]
        validation = {f: [_few_shot(p, shots[f]) for p in v] for f, v in validation.items()}
        test = {f: [_few_shot(p, shots[f]) for p in v] for f, v in test.items()}
    return Suite(pool=pool, validation=validation, test=test, targeted=targeted, untargeted=untargeted)


def _few_shot(problem: Problem, shots: list[Problem]) -> Problem:
    """``problem`` asked after its family's solved examples, one per line, answered in plain form."""
    lines = [f"{s.prompt}{s.answer}" for s in shots] + [problem.prompt]
    return dataclasses.replace(problem, prompt="\n".join(lines), metadata={**problem.metadata, "style": "few_shot"})


def _with_noisy_keys(pool: list[Problem], cfg: SuiteConfig, targeted: list[str]) -> list[Problem]:
    """``pool`` with ``noisy_key_rate`` of the targeted families' prompts keyed to the family's common mistake,
    chosen at random (seeded by the draw) among the prompts where that mistake is wrong.  A key that rewards the
    mistake keeps the prompt's groups mixed, so a filter on pass rates keeps it; its gradient points away from the
    validation sets'.  Each such prompt records ``noisy_key`` and its ``true_answer`` in its metadata."""
    n_targeted = sum(p.family in targeted for p in pool)
    wrong = {i: misconception(p.family, p.metadata["canonical"]) for i, p in enumerate(pool) if p.family in targeted}
    eligible = [i for i, w in wrong.items() if w is not None and w != pool[i].answer]
    want = min(round(cfg.noisy_key_rate * n_targeted), len(eligible))
    out = list(pool)
    for i in random.Random(_seed_for(cfg.pool_seed, "noisy_keys")).sample(eligible, want):
        p = out[i]
        out[i] = dataclasses.replace(p, answer=wrong[i], metadata={**p.metadata, "noisy_key": True,
                                                                   "true_answer": p.answer})
    return out


def sft_examples(cfg: SuiteConfig, n: int, seed: int, exclude: set[str], misconception_rate: float = 0.0) -> list[Problem]:
    """Supervised examples for pretraining the embedded model, drawn uniformly over families and levels,
    never using a canonical problem in ``exclude`` (the validation and test keys).  With probability
    ``misconception_rate`` an example of a family with a misconception carries that wrong answer instead."""
    out = _sft_draws(cfg, n // len(cfg.families) + 1, seed, exclude, misconception_rate)
    random.Random(seed).shuffle(out)
    return out[:n]


def _sft_draws(cfg: SuiteConfig, per_family: int, seed: int, exclude: set[str],
               misconception_rate: float) -> list[Problem]:
    """The first ``per_family`` examples of each family's seeded SFT stream."""
    out: list[Problem] = []
    for f in cfg.families:
        rng = random.Random(_seed_for(seed, f, "sft"))
        levels = list(range(1, MAX_DIFFICULTY + 1))
        fam = FAMILIES[f]
        k = 0
        while k < per_family:
            d = rng.choice(levels)
            prompt, answer, key = fam.draw(rng, d)
            if key in exclude:
                continue
            if misconception_rate > 0 and rng.random() < misconception_rate:
                answer = misconception(f, key) or answer
            out.append(Problem(f"sft-{f}-{k}", prompt, answer, f, "synthetic", d, {"canonical": key}))
            k += 1
    return out


def reward(problem: Problem, response: str) -> float:
    """Verifiable reward of a response to a synthetic problem: the family's exact match, or for a few-shot prompt
    the response's first line against the plain answer (a pretrained LM goes on writing the next example)."""
    if problem.metadata.get("style") == "few_shot":
        lines = response.strip().splitlines()
        return 1.0 if lines and lines[0].strip() == problem.answer else 0.0
    return FAMILIES[problem.family].reward(problem.answer, response)

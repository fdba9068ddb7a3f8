from cropi.tasks import FAMILIES, grade
from cropi.tasks.synthetic import SuiteConfig, build_suite, sft_examples


def _keys(problems):
    return [p.metadata["canonical"] for p in problems]


def test_suite_is_deterministic_and_sized():
    a, b = build_suite(), build_suite()
    assert [p.to_dict() for p in a.pool] == [p.to_dict() for p in b.pool]
    assert len(a.pool) == SuiteConfig().pool_size == 12800
    assert len(FAMILIES) >= 6 and len(a.targeted) >= 2 and len(a.untargeted) >= 1
    assert set(a.validation) == set(a.targeted)
    assert all(len(a.test[f]) == 500 for f in a.targeted)
    c = build_suite(SuiteConfig(pool_seed=1))
    assert _keys(c.pool) != _keys(a.pool)


def test_splits_disjoint_by_canonical_problem():
    # Small problem spaces (1-digit sums) collide easily: check per family across every split.
    s = build_suite(SuiteConfig(difficulty_weights=[5, 1, 1, 1, 1]))
    for fam in FAMILIES:
        pool = _keys(p for p in s.pool if p.family == fam)
        val = _keys(s.validation.get(fam, []))
        test = _keys(s.test[fam])
        assert len(set(pool)) == len(pool) and len(set(test)) == len(test) and len(set(val)) == len(val)
        assert not (set(pool) & set(test)) and not (set(pool) & set(val)) and not (set(val) & set(test))
    ids = [p.id for p in s.pool] + [p.id for v in s.validation.values() for p in v] + [p.id for p in s.test_problems()]
    assert len(ids) == len(set(ids))


def test_sft_examples_exclude_held_out():
    s = build_suite()
    held = set(_keys(s.test_problems()))
    ex = sft_examples(SuiteConfig(), 3000, 0, held)
    assert len(ex) == 3000 and not (set(_keys(ex)) & held)


def test_every_family_rewards_exactly_its_target():
    s = build_suite(SuiteConfig(pool_size=400))
    for p in s.pool:
        fam = FAMILIES[p.family]
        assert grade(p, fam.target_text(p.answer)) == 1.0
        assert grade(p, " " + fam.target_text(p.answer) + " ") == 1.0
        assert grade(p, fam.target_text(p.answer) + "1") == 0.0
        assert grade(p, "") == 0.0


def test_answers_are_correct_arithmetic():
    s = build_suite(SuiteConfig(pool_size=800))
    for p in s.pool:
        if p.family == "add":
            a, b = p.prompt[:-1].split("+")
            assert int(p.answer) == int(a) + int(b)
            assert FAMILIES["add"].target_text(p.answer) == p.answer[::-1]
        if p.family == "sort":
            assert p.answer == "".join(sorted(p.prompt.split()[1][:-1]))


def test_misconceptions_are_the_documented_mistakes():
    from cropi.tasks.synthetic import misconception

    assert misconception("add", "add:58:67") == "15"  # 8+7 -> 5, 5+6 -> 1, carries dropped
    assert misconception("sub", "sub:52:38") == "26"  # |2-8| = 6, |5-3| = 2
    assert misconception("mul", "mul:57:3") == "51"  # 5*3 -> 5, 7*3 -> 1
    assert misconception("word", "word:5:3:2") == "8"  # the loss is forgotten
    assert misconception("sort", "sort:321") is None
    ex = sft_examples(SuiteConfig(), 4000, 0, set(), misconception_rate=0.55)
    wrong = [p for p in ex if p.family == "add" and int(p.answer) != sum(map(int, p.prompt[:-1].split("+")))]
    adds = [p for p in ex if p.family == "add"]
    assert 0.2 < len(wrong) / len(adds) < 0.55  # 55% of examples, minus those without any carry


def test_no_draw_of_the_suite_holds_out_a_problem_the_embedded_policy_saw_in_sft():
    """For several pool seeds and an easier difficulty mix, the validation and test problems share no canonical
    problem with the tiny policy's SFT data, recomputed by its own recipe (both phases)."""
    from cropi.policy.tiny import PretrainConfig, sft_data
    from cropi.tasks.synthetic import SuiteConfig, build_suite, embedded_sft_keys

    phase1, phase2 = sft_data(PretrainConfig())
    seen: dict[str, set[str]] = {}
    for p in phase1 + phase2:
        seen.setdefault(p.family, set()).add(p.metadata["canonical"])
    assert all(seen[f] <= embedded_sft_keys()[f] for f in seen)  # the suite's exclusion covers the recipe's data
    small = {"pool_size": 400, "val_size": 200, "test_size_targeted": 500, "test_size_untargeted": 200}
    for extra in ({"pool_seed": 0}, {"pool_seed": 1}, {"pool_seed": 2, "difficulty_weights": [3.0, 3.0, 2.0, 1.0, 1.0]},
                  {"pool_seed": 3}, {"pool_seed": 0, "test_size_targeted": 800}):
        suite = build_suite(SuiteConfig(**{**small, **extra}))
        held = [p for p in suite.test_problems()] + [p for v in suite.validation.values() for p in v]
        leaked = [p.id for p in held if p.metadata["canonical"] in seen.get(p.family, ())]
        assert not leaked, (extra, len(leaked), leaked[:5])


def test_the_default_draw_is_unchanged_by_the_sft_exclusion():
    """The default draw (pool seed 0) was SFT's held-out draw: excluding SFT's keys changes none of its problems."""
    from cropi.tasks.synthetic import SuiteConfig, _build, build_suite, embedded_sft_keys

    cfg = SuiteConfig(pool_size=2000)
    plain, guarded = _build(cfg, {}), _build(cfg, embedded_sft_keys())
    assert [p.prompt for p in plain.test_problems()] == [p.prompt for p in guarded.test_problems()]
    assert [p.prompt for p in plain.pool] == [p.prompt for p in guarded.pool]
    assert [p.prompt for p in build_suite(cfg).pool] == [p.prompt for p in plain.pool]


SMALL = dict(pool_size=800, val_size=40, test_size_targeted=40, test_size_untargeted=20)


def test_noisy_keys_key_a_share_of_the_targeted_pool_to_the_familys_mistake_and_nothing_else():
    from collections import Counter

    from cropi.tasks.synthetic import misconception

    clean = build_suite(SuiteConfig(**SMALL))
    noisy = build_suite(SuiteConfig(**SMALL, scenario="noisy_keys", noisy_key_rate=0.25))
    assert [p.id for p in noisy.pool] == [p.id for p in clean.pool]
    changed = [(c, n) for c, n in zip(clean.pool, noisy.pool) if c.answer != n.answer]
    targeted = sum(p.family in noisy.targeted for p in clean.pool)
    assert len(changed) == round(0.25 * targeted) and {c.family for c, _ in changed} <= set(noisy.targeted)
    assert set(Counter(c.family for c, _ in changed)) == set(noisy.targeted)  # both targeted families are hit
    for c, n in changed:  # the key is the family's mistake, which is wrong here; the reward follows the key
        assert n.answer == misconception(c.family, c.metadata["canonical"]) != c.answer
        assert n.metadata["noisy_key"] and n.metadata["true_answer"] == c.answer
        fam = FAMILIES[c.family]
        assert grade(n, fam.target_text(n.answer)) == 1.0 and grade(n, fam.target_text(c.answer)) == 0.0
    # validation and test keep the clean keys
    assert {k: [(p.id, p.answer) for p in v] for k, v in noisy.validation.items()} == \
        {k: [(p.id, p.answer) for p in v] for k, v in clean.validation.items()}
    assert noisy.test_problems() == clean.test_problems()
    again = build_suite(SuiteConfig(**SMALL, scenario="noisy_keys", noisy_key_rate=0.25))
    assert [p.answer for p in again.pool] == [p.answer for p in noisy.pool]


def test_off_target_makes_the_targeted_families_the_stated_share_of_the_pool():
    clean = build_suite(SuiteConfig(**SMALL))
    scarce = build_suite(SuiteConfig(**SMALL, scenario="off_target", targeted_share=0.05))
    share = sum(p.family in scarce.targeted for p in scarce.pool) / len(scarce.pool)
    assert len(scarce.pool) == 800 and abs(share - 0.05) <= 2 / 800
    others = {f: sum(p.family == f for p in scarce.pool) for f in scarce.untargeted}
    assert max(others.values()) - min(others.values()) <= 1
    assert scarce.test_problems() == clean.test_problems()
    assert {k: [p.id for p in v] for k, v in scarce.validation.items()} == \
        {k: [p.id for p in v] for k, v in clean.validation.items()}


def test_scenario_settings_that_cannot_draw_are_named_in_one_line():
    from cropi.tasks.synthetic import suite_problems

    def problems(**kw):
        return dict(suite_problems(SuiteConfig(**kw)))

    assert "data.suite.scenario" in problems(scenario="noisy")
    assert "data.suite.noisy_key_rate" in problems(noisy_key_rate=1.5)
    assert "data.suite.targeted_share" in problems(targeted_share=0.0)
    assert "data.suite.weights" in problems(scenario="off_target", weights={"add": 2.0})
    assert "data.suite.scenario" in problems(scenario="off_target", families=["add", "sub"])
    assert problems(scenario="noisy_keys") == problems(scenario="off_target") == {}


def test_few_shot_prompts_show_solved_problems_of_no_split_and_grade_the_first_line():
    cfg = SuiteConfig(style="few_shot", shots=3, families=["add", "sub", "mul"], targeted=["add", "sub"],
                      difficulty_weights=[1.0, 1.0, 0.0, 0.0, 0.0], pool_size=300, val_size=20,
                      test_size_targeted=30, test_size_untargeted=20)
    suite = build_suite(cfg)
    plain = build_suite(SuiteConfig(**{**cfg.__dict__, "style": "tiny"}))
    held = {p.metadata["canonical"] for split in (suite.pool, suite.test_problems(),
                                                  *suite.validation.values()) for p in split}
    for p in [*suite.pool[:50], *suite.test_problems()[:50]]:
        *shown, question = p.prompt.split("\n")
        assert len(shown) == 3 and p.metadata["style"] == "few_shot"
        for line in shown:  # "a+b=c", correct, and not a problem of any split
            q, a = line.split("=")
            assert str(eval(q)) == a and f"{q}=" not in {x.prompt.split("\n")[-1] for x in suite.test_problems()}
        assert question.endswith("=") and p.answer == str(eval(question[:-1]))
        assert grade(p, f"{p.answer}\n1+1=2") == 1.0 and grade(p, f" {p.answer} ") == 1.0
        assert grade(p, f"{p.answer}0") == 0.0 and grade(p, "") == 0.0
    assert len(held) == len(suite.pool) + len(suite.test_problems()) + 40  # the splits stay disjoint
    assert [p.metadata["canonical"] for p in suite.pool] != [p.metadata["canonical"] for p in plain.pool]  # shots drawn first

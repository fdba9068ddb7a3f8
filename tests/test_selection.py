from cropi.selection.baselines import select_learnability, select_pass_rate, select_random


def _toy():
    rates = [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    return {f"p{i:03d}": rates[i % len(rates)] for i in range(90)}


def test_learnability_ranks_half_first():
    pr = _toy()
    chosen = select_learnability(pr, 0.1)
    assert len(chosen) == 9 and all(pr[c] == 0.5 for c in chosen)


def test_pass_rate_never_picks_extremes_and_is_seeded():
    pr = _toy()
    a = select_pass_rate(pr, 0.2, seed=0)
    assert len(a) == 18 and all(0 < pr[c] < 1 for c in a)
    assert a == select_pass_rate(pr, 0.2, seed=0) and a != select_pass_rate(pr, 0.2, seed=1)


def test_random_is_a_seeded_subset():
    ids = list(_toy())
    a = select_random(ids, 0.1, 0)
    assert len(a) == 9 and len(set(a)) == 9 and set(a) <= set(ids)
    assert a == select_random(list(reversed(ids)), 0.1, 0)

import torch

from cropi.scores.ranking import cosine_scores, mean_direction, reciprocal_rank_fusion, top_n


def test_cosine_matches_definition_and_zero_rows():
    torch.manual_seed(0)
    x = torch.randn(5, 16)
    x[2] = 0
    d = mean_direction(torch.randn(7, 16))
    s = cosine_scores(x, d)
    for i in range(5):
        ref = 0.0 if i == 2 else float(torch.dot(x[i], d) / (x[i].norm() * d.norm()))
        assert abs(float(s[i]) - ref) < 1e-6


def test_rrf_fuses_lists_and_breaks_ties_deterministically():
    a = {"p1": 0.9, "p2": 0.8, "p3": 0.1, "p4": 0.0}
    b = {"p3": 0.9, "p1": 0.8, "p2": 0.1, "p4": 0.0}
    # n=2: a's list [p1, p2], b's list [p3, p1]; F(p1)=1+1/2, F(p2)=1/2, F(p3)=1
    assert reciprocal_rank_fusion({"a": a, "b": b}, 2) == ["p1", "p3"]
    # ties in F (p2 and p4 both 1/2 and 1) -> best single rank, then id
    c = {"x": 1.0, "y": 0.5}
    d = {"y": 1.0, "x": 0.5}
    assert reciprocal_rank_fusion({"c": c, "d": d}, 2) == ["x", "y"]
    assert top_n(4000, 0.1) == 400 and top_n(5, 0.1) == 1

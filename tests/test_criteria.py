"""Criteria on small hand-made layers whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from simprune.methods import ChannelGroup, Consumer, CriterionError, get_criterion, list_criteria
from simprune.methods._similarity import filter_prototypes, ordered_scores
from simprune.methods.channel_cluster import average_linkage
from simprune.methods.nystrom_sim import choose_landmarks

ALL = ["l1", "l2", "fpgm", "bn_scale", "random", "passive_sim", "nystrom_sim", "qsfm", "channel_cluster", "recon"]
DATA = {"qsfm", "channel_cluster", "recon"}


def conv_group(weight: torch.Tensor, features: torch.Tensor | None = None, bn: nn.BatchNorm2d | None = None,
               name: str = "conv") -> ChannelGroup:
    c_out, c_in, kh, kw = weight.shape
    conv = nn.Conv2d(c_in, c_out, (kh, kw), bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return ChannelGroup(name=name, conv=conv, bn=bn, n_channels=c_out, features=features)


def random_group(c_out: int, c_in: int, k: int | tuple[int, int], seed: int, n: int = 6,
                 hw: int = 5) -> ChannelGroup:
    g = torch.Generator().manual_seed(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    w = torch.randn(c_out, c_in, kh, kw, generator=g)
    feats = torch.relu(torch.randn(n, c_out, hw, hw, generator=g))
    return conv_group(w, feats)


# ----------------------------------------------------------------------------------------------------------
# Plain-python references, written from METHODS.md


def ref_prototypes(w: np.ndarray) -> np.ndarray:
    c_out, c_in, kh, kw = w.shape
    out = np.zeros((c_out, kh * kw))
    for j in range(c_out):
        a = np.zeros((kh * kw, c_in))
        for i in range(kh):
            for jj in range(kw):
                for c in range(c_in):
                    a[i * kw + jj, c] = w[j, c, i, jj]
        u, _, vt = np.linalg.svd(a)
        sign = -1.0 if vt[0, 0] < 0 else 1.0
        out[j] = u[:, 0] * sign
    return out


def ref_greedy(w: np.ndarray) -> list[int]:
    protos = ref_prototypes(w)
    d = len(protos)
    dist = [[0.0] * d for _ in range(d)]
    for a in range(d):
        for b in range(d):
            cos = float(protos[a] @ protos[b]) / (np.linalg.norm(protos[a]) * np.linalg.norm(protos[b]))
            dist[a][b] = round(1.0 - cos, 5)
    nn_, s = [], []
    for a in range(d):
        best, best_d = -1, float("inf")
        for b in range(d):
            if b != a and dist[a][b] < best_d:
                best, best_d = b, dist[a][b]
        nn_.append(best)
        s.append(best_d)
    keep, red = set(), set()
    for a in sorted(range(d), key=lambda i: (s[i], i)):
        if a not in red:
            keep.add(a)
            red.add(nn_[a])
    return sorted(keep)


def assert_valid(sel, n: int, n_keep: int) -> None:
    k = sel.keep.tolist()
    assert len(k) == n_keep
    assert k == sorted(set(k))
    assert all(0 <= i < n for i in k)


# ----------------------------------------------------------------------------------------------------------
# Registry and contract


def test_all_registered_and_describe() -> None:
    described = {d["name"]: d for d in list_criteria()}
    assert set(ALL) <= set(described)
    for name in ALL:
        d = get_criterion(name).describe()
        assert d["name"] == name and d["summary"] and "\n" not in d["summary"]
        assert d["needs_data"] == (name in DATA)
        assert any(o["name"] == "seed" for o in d["options"])


@pytest.mark.parametrize("name", ALL)
def test_every_criterion_valid_and_deterministic(name: str) -> None:
    g = random_group(12, 4, 3, seed=1)
    crit = get_criterion(name)
    s = crit.scores(g)
    assert s.shape == (12,) and torch.isfinite(s).all()
    for n_keep in (1, 5, 11):
        sel = crit.select(g, n_keep)
        assert_valid(sel, 12, n_keep)
        assert torch.equal(sel.keep, get_criterion(name).select(g, n_keep).keep)
        if sel.merge is not None:
            assert set(sel.merge) == set(range(12)) - set(sel.keep.tolist())
            assert all(k in sel.keep.tolist() for k, _, _ in sel.merge.values())
    assert crit.select(g, 12).keep.tolist() == list(range(12))
    assert crit.select(g, 50).keep.tolist() == list(range(12))
    with pytest.raises(ValueError):
        crit.select(g, 0)
    auto = crit.auto_keep(g)
    assert auto is None or 1 <= auto <= 12


@pytest.mark.parametrize("name", sorted(DATA))
def test_data_driven_need_calibration(name: str) -> None:
    g = random_group(6, 3, 3, seed=0)
    g.features = None
    crit = get_criterion(name)
    for call in (lambda: crit.select(g, 3), lambda: crit.scores(g)):
        with pytest.raises(CriterionError, match="calibration data"):
            call()


@pytest.mark.parametrize("name", ["passive_sim", "nystrom_sim", "qsfm"])
def test_scores_rank_like_select(name: str) -> None:
    g = random_group(16, 4, 3, seed=3)
    crit = get_criterion(name)
    s = crit.scores(g)
    order = torch.sort(s, descending=True, stable=True).indices
    for n_keep in range(1, 17):
        assert crit.select(g, n_keep).keep.tolist() == sorted(order[:n_keep].tolist()), n_keep


def test_ordered_scores_strictly_follow_order() -> None:
    s = ordered_scores([3, 0, 2], [0.5, 0.2, 0.5], [1], 4).float()
    assert s[3] < s[0] < s[2] < s[1]
    assert float(s[3]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------------
# Baselines


def test_norm_baselines_order() -> None:
    w = torch.stack([torch.full((2, 3, 3), v) for v in (0.3, -2.0, 1.0, 0.1)])
    g = conv_group(w)
    assert get_criterion("l1").select(g, 2).keep.tolist() == [1, 2]
    assert get_criterion("l2").select(g, 3).keep.tolist() == [0, 1, 2]
    assert get_criterion("l1").scores(g)[1] == pytest.approx(36.0)


def test_fpgm_keeps_filters_far_from_median() -> None:
    pos = torch.tensor([0.0, 1.0, 2.0, 10.0])
    w = pos[:, None, None, None] * torch.ones(4, 1, 1, 1)
    g = conv_group(w)
    s = get_criterion("fpgm").scores(g)
    assert s.tolist() == pytest.approx([13.0, 11.0, 11.0, 27.0])
    assert get_criterion("fpgm").select(g, 2).keep.tolist() == [0, 3]


def test_bn_scale_and_fallback() -> None:
    w = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.1, -3.0, 2.0, 0.5]))
    sel = get_criterion("bn_scale").select(conv_group(w, bn=bn), 2)
    assert sel.keep.tolist() == [1, 2] and "fallback" not in sel.info
    g = conv_group(w)
    sel = get_criterion("bn_scale").select(g, 2)
    assert sel.info["fallback"] == "l1"
    assert torch.equal(sel.keep, get_criterion("l1").select(g, 2).keep)


def test_random_seeded() -> None:
    g = random_group(32, 2, 3, seed=0)
    a = get_criterion("random", seed=1).select(g, 10).keep
    assert torch.equal(a, get_criterion("random", seed=1).select(g, 10).keep)
    assert not torch.equal(a, get_criterion("random", seed=2).select(g, 10).keep)


def test_unknown_option_rejected() -> None:
    with pytest.raises(ValueError, match="m: Extra inputs are not permitted"):
        get_criterion("passive_sim", m=3)
    with pytest.raises(ValueError):
        get_criterion("nystrom_sim", landmarks="bogus")


# ----------------------------------------------------------------------------------------------------------
# passive_sim


@pytest.mark.parametrize("shape", [(7, 3, 3, 3), (5, 4, 2, 3), (6, 1, 5, 5)])
def test_prototypes_match_per_filter_svd(shape: tuple[int, ...]) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = filter_prototypes(w).numpy()
    ref = ref_prototypes(w.numpy())
    assert np.allclose(got, ref, atol=1e-10)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0)


def test_prototype_fallback_for_1x1_and_linear() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    expected = torch.tensor([[0.6, 0.8], [0.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(filter_prototypes(w), expected)
    assert torch.allclose(filter_prototypes(w[:, :, None, None]), expected)
    lin = nn.Linear(10, 6)
    g = ChannelGroup(name="fc", conv=lin, bn=None, n_channels=6)
    for name in ("passive_sim", "nystrom_sim", "l1", "fpgm"):
        assert_valid(get_criterion(name).select(g, 4), 6, 4)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 3, 5, 5), (12, 6, 3, 2)])
def test_passive_greedy_equals_reference(seed: int, shape: tuple[int, ...]) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = conv_group(w.float())
    ref = ref_greedy(g.weight.double().numpy())
    crit = get_criterion("passive_sim")
    assert crit.auto_keep(g) == len(ref)
    sel = crit.select(g, len(ref))
    assert sel.keep.tolist() == ref
    assert sel.info["auto_keep"] == len(ref)


def test_passive_sim_finds_duplicate_filters() -> None:
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    w[3] = 2.5 * w[0]
    g = conv_group(w)
    crit = get_criterion("passive_sim")
    d = crit.distance(g)
    assert d[0, 3] == 0.0
    sel = crit.select(g, crit.auto_keep(g))
    assert len({0, 3} & set(sel.keep.tolist())) == 1
    sel7 = crit.select(g, 7)  # the most replaceable filter goes first
    removed = set(range(8)) - set(sel7.keep.tolist())
    assert removed in ({0}, {3})
    assert sel7.merge is None
    (r,) = removed
    assert sel7.info["nearest_kept"] == {r: 3 - r}


def test_passive_sim_depthwise() -> None:
    w = torch.randn(6, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    w[4] = 0.5 * w[1]
    w[5] = -w[2]  # the sign fix keeps the filter's sign: a negated filter is opposite (D = 2)
    g = conv_group(w)
    crit = get_criterion("passive_sim")
    assert crit.distance(g)[1, 4] == 0.0
    assert crit.distance(g)[2, 5] == 2.0
    assert_valid(crit.select(g, 5), 6, 5)
    assert len({1, 4} & set(crit.select(g, 5).keep.tolist())) == 1


def test_dcase_shapes_auto_keep() -> None:
    gen = torch.Generator().manual_seed(0)
    for c_out, c_in in ((16, 1), (16, 16), (32, 16)):
        g = conv_group(torch.randn(c_out, c_in, 7, 7, generator=gen))
        for name, opts in (("passive_sim", {}), ("nystrom_sim", {"m": 49})):
            crit = get_criterion(name, **opts)
            k = crit.auto_keep(g)
            assert 1 <= k < c_out
            assert_valid(crit.select(g, k), c_out, k)
        assert torch.equal(get_criterion("passive_sim").select(g, k).keep,
                           get_criterion("nystrom_sim", m=49).select(g, k).keep)


# ----------------------------------------------------------------------------------------------------------
# nystrom_sim


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("opts", [{"landmarks": "first", "m": 9}, {"landmarks": "kmeans++", "m": 9},
                                  {"landmarks": "random", "m": 14}])
def test_nystrom_exact_when_landmarks_span(seed: int, opts: dict) -> None:
    g = random_group(40, 8, 3, seed=seed)
    ps, ny = get_criterion("passive_sim"), get_criterion("nystrom_sim", seed=seed, **opts)
    assert np.allclose(ny.similarity(g).numpy(), ps.similarity(g).numpy(), atol=1e-9)
    k = ps.auto_keep(g)
    assert ny.auto_keep(g) == k
    for n_keep in (k, 20, 35):
        assert torch.equal(ny.select(g, n_keep).keep, ps.select(g, n_keep).keep)
    info = ny.select(g, k).info
    assert info["landmarks"] == opts["landmarks"] and info["m"] == opts["m"] and info["rank"] == opts["m"]


def test_nystrom_low_rank_differs_but_valid() -> None:
    g = random_group(40, 8, 3, seed=5)
    full = get_criterion("passive_sim").similarity(g).numpy()
    for opts in ({"m": 3}, {"m": 9, "rank": 4}, {"m": 5, "landmarks": "kmeans++"}):
        ny = get_criterion("nystrom_sim", **opts)
        approx = ny.similarity(g).numpy()
        assert not np.allclose(approx, full, atol=1e-3)
        k = ny.auto_keep(g)
        assert 1 <= k <= 40
        for n_keep in (k, 10):
            assert_valid(ny.select(g, n_keep), 40, n_keep)


def test_kmeanspp_landmarks_skip_duplicates() -> None:
    protos = torch.eye(4, dtype=torch.float64).repeat_interleave(3, dim=0)  # 4 distinct points, 3 copies each
    lm = choose_landmarks(protos, 4, "kmeans++", seed=0)
    assert len({tuple(protos[i].tolist()) for i in lm.tolist()}) == 4
    assert torch.equal(lm, choose_landmarks(protos, 4, "kmeans++", seed=0))


# ----------------------------------------------------------------------------------------------------------
# qsfm


def linear_features(seed: int = 0) -> torch.Tensor:
    f = torch.randn(8, 5, 6, 6, generator=torch.Generator().manual_seed(seed))
    f[:, 2] = 2.0 * f[:, 0] + 1.0
    return f


def test_qsfm_removes_linear_duplicate_and_merges() -> None:
    g = random_group(5, 3, 3, seed=0)
    g.features = linear_features()
    sel = get_criterion("qsfm").select(g, 4)
    removed = set(range(5)) - set(sel.keep.tolist())
    assert removed in ({0}, {2})
    (r,) = removed
    k, alpha, beta = sel.merge[r]
    if r == 2:
        assert k == 0 and alpha == pytest.approx(2.0, abs=1e-4) and beta == pytest.approx(1.0, abs=1e-4)
    else:
        assert k == 2 and alpha == pytest.approx(0.5, abs=1e-4) and beta == pytest.approx(-0.5, abs=1e-4)
    assert sel.info["corr"]["pairs_abs_corr_ge_0.99"] == 1
    assert sel.info["merge_abs_corr"][r] == pytest.approx(1.0)


def test_qsfm_dead_channel_first_and_pooled_features() -> None:
    g = random_group(5, 3, 3, seed=0)
    f = linear_features()
    f[:, 4] = 0.7  # constant map: foldable as a bias
    g.features = f
    sel = get_criterion("qsfm").select(g, 4)
    assert 4 not in sel.keep.tolist()
    k, alpha, beta = sel.merge[4]
    assert alpha == 0.0 and beta == pytest.approx(0.7)
    assert sel.info["dead_channels"] == [4]
    sel3 = get_criterion("qsfm").select(g, 3)
    assert set(range(5)) - set(sel3.keep.tolist()) in ({4, 0}, {4, 2})
    g.features = f.mean(dim=(2, 3))  # (N, C) after pooling
    assert_valid(get_criterion("qsfm").select(g, 3), 5, 3)


def test_qsfm_subsamples_positions() -> None:
    g = random_group(5, 3, 3, seed=0)
    g.features = linear_features()
    sel = get_criterion("qsfm", max_positions=100).select(g, 4)
    assert sel.info["positions"] == 100 and sel.info["subsampled"]
    assert set(range(5)) - set(sel.keep.tolist()) in ({0}, {2})


# ----------------------------------------------------------------------------------------------------------
# channel_cluster


def test_channel_cluster_one_per_group() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 6, 4, 4, generator=gen)
    members = [0, 1, 2, 0, 1, 2, 0]  # channel c copies base[members[c]] plus small noise
    f = torch.stack([base[m] + 0.01 * torch.randn(6, 4, 4, generator=gen) for m in members], dim=1)
    g = random_group(7, 3, 3, seed=0)
    g.features = f
    sel = get_criterion("channel_cluster").select(g, 3)
    assert sorted(members[i] for i in sel.keep.tolist()) == [0, 1, 2]
    assert sorted(sel.info["cluster_sizes"]) == [2, 2, 3]
    for r, (k, alpha, beta) in sel.merge.items():
        assert members[r] == members[k]
        assert alpha == pytest.approx(1.0, abs=0.05) and abs(beta) < 0.05


def test_average_linkage_small_example() -> None:
    # points on a line: 0, 1, 5, 6, 20 -> {0,1}, {5,6} merge first at 1, then {0,1}+{5,6} at mean 5
    x = np.array([0.0, 1.0, 5.0, 6.0, 20.0])
    d = np.abs(x[:, None] - x[None, :])
    heights: list[float] = []
    clusters = average_linkage(d, 2, lambda h, m: heights.append(h))
    assert sorted(map(tuple, clusters)) == [(0, 1, 2, 3), (4,)]
    assert heights == [1.0, 1.0, 5.0]


def test_channel_cluster_options() -> None:
    g = random_group(8, 3, 3, seed=4)
    for opts in ({"distribution": "skl"}, {"w_dist": 0.0}, {"w_corr": 0.0}):
        assert_valid(get_criterion("channel_cluster", **opts).select(g, 4), 8, 4)
    with pytest.raises(ValueError):
        get_criterion("channel_cluster", distribution="kl")


# ----------------------------------------------------------------------------------------------------------
# recon (greedy least-squares selection)


def consumer_group(n: int, k: int, seed: int, n_img: int = 4, hw: int = 6) -> ChannelGroup:
    g = torch.Generator().manual_seed(seed)
    feats = torch.relu(torch.randn(n_img, n, hw, hw, generator=g))
    cons = nn.Conv2d(n, 5, k, padding=k // 2, bias=False)
    with torch.no_grad():
        cons.weight.copy_(torch.randn(cons.weight.shape, generator=g))
    grp = conv_group(torch.randn(n, 3, 3, 3, generator=g), feats)
    grp.consumers = [Consumer(name="next", module=cons)]
    return grp


def ref_recon_order(grp: ChannelGroup, ridge: float) -> list[int]:
    """Backward elimination by explicit ridge refits on every position (the definition, no down-dating)."""
    cons = grp.consumers[0].module
    k = cons.kernel_size[0]
    x = torch.nn.functional.unfold(grp.features.double(), k, padding=k // 2)  # (N, C*k*k, L)
    x = x.transpose(1, 2).reshape(-1, x.shape[1])
    x = x - x.mean(0)
    w = cons.weight.detach().double().reshape(cons.weight.shape[0], -1)
    y = x @ w.T
    lam = ridge * float(torch.diagonal(x.T @ x / len(x)).mean())
    t = k * k

    def objective(chans: list[int]) -> float:
        cols = [c * t + i for c in chans for i in range(t)]
        xs = x[:, cols]
        beta = torch.linalg.solve(xs.T @ xs / len(x) + lam * torch.eye(len(cols), dtype=x.dtype), xs.T @ y / len(x))
        return float(((y - xs @ beta) ** 2).sum() / len(x) + lam * (beta ** 2).sum())

    alive, order = list(range(grp.n_channels)), []
    while len(alive) > 1:
        costs = [objective([c for c in alive if c != r]) for r in alive]
        order.append(alive.pop(int(np.argmin(costs))))
    return order + alive


@pytest.mark.parametrize(("k", "seed"), [(1, 0), (3, 1), (3, 2)])
def test_recon_greedy_equals_reference(k: int, seed: int) -> None:
    grp = consumer_group(7, k, seed)
    crit = get_criterion("recon", max_rows=100_000)
    order = ref_recon_order(grp, crit.ridge)
    for n_keep in range(1, 7):
        assert crit.select(grp, n_keep).keep.tolist() == sorted(order[7 - n_keep:]), n_keep
    s = crit.scores(grp)
    assert all(s[order[i]] <= s[order[i + 1]] for i in range(6))


def test_recon_finds_redundant_channel() -> None:
    grp = consumer_group(6, 3, seed=4)
    grp.features[:, 4] = 2.0 * grp.features[:, 1] + 0.5  # channel 4 carries nothing channel 1 does not
    first_gone = set(range(6)) - set(get_criterion("recon").select(grp, 5).keep.tolist())
    assert len(first_gone) == 1 and first_gone <= {1, 4}


def test_recon_wide_layers_use_diagonal_approximation() -> None:
    grp = consumer_group(6, 3, seed=5)
    grp.features[:, 2] *= 0.0  # a dead channel costs nothing
    sel = get_criterion("recon", max_dim=8).select(grp, 5)
    assert 2 not in sel.keep.tolist()


def test_recon_with_target_reconstructs_the_dense_output() -> None:
    grp = consumer_group(6, 3, seed=6)
    dense = grp.features.clone()
    noise = torch.relu(torch.randn(dense[:, 2].shape, generator=torch.Generator().manual_seed(9))) * 3.0
    grp.features[:, 2] = noise  # this model's channel 2 no longer carries the dense channel 2
    alone = get_criterion("recon").select(grp, 5).keep.tolist()
    assert 2 in alone  # reconstructing its own output, the loud channel is expensive to drop
    grp.extra["target_features"] = dense
    with_target = get_criterion("recon").select(grp, 5).keep.tolist()
    assert 2 not in with_target  # reconstructing the dense output, it is worthless

"""Few-shot episodes, methods, summaries and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from smallct.data.similar import near_duplicate_groups
from smallct.datasets import load_dataset
from smallct.fewshot import main
from smallct.evaluation.intervals import Units, bootstrap_indices
from smallct.evaluation.metrics import classification_metrics
from smallct.studies.fewshot import _row, check_shots, episode_draws, episode_rng, sample_episode, summarize_fewshot
from smallct.studies.methods import (EMBEDDING_METHODS, episode_embeddings, label_propagation, linear_probe,
                                     nearest_neighbours, nearest_prototype, normalize_embeddings)
from tests.conftest import write_easy_set
from smallct.studies.summary import summarize_episodes


def test_episode_draws_k_per_class_and_queries_the_rest():
    labels = np.array([0] * 12 + [1] * 8)
    support, query = sample_episode(labels, 3, episode_rng(0, 3, 0))
    assert len(support) == 6 and np.bincount(labels[support]).tolist() == [3, 3]
    assert set(support).isdisjoint(query) and sorted([*support, *query]) == list(range(20))
    again, _ = sample_episode(labels, 3, episode_rng(0, 3, 0))
    other, _ = sample_episode(labels, 3, episode_rng(0, 3, 1))
    assert (again == support).all() and not (other == support).all()


def test_episode_support_comes_from_distinct_groups_and_the_query_from_other_groups():
    labels = np.array([0] * 12 + [1] * 8)
    groups = np.r_[[0, 0, 0, 1, 1], np.arange(2, 17)]  # images 0-2 one group, 3-4 another, the rest alone
    seen_excluded = 0
    for e in range(200):
        support, query = sample_episode(labels, 4, episode_rng(0, 4, e), groups)
        assert np.bincount(labels[support]).tolist() == [4, 4]
        assert len(set(groups[support])) == 8  # no two support images in one group
        assert set(groups[support]).isdisjoint(groups[query])  # no query image beside a support image
        left_out = np.setdiff1d(np.arange(20), np.r_[support, query])
        assert set(groups[left_out]) <= set(groups[support])  # only support images' group mates sit out
        seen_excluded += len(left_out)
    # group {0, 1, 2} holds a support image in about 80% of episodes (2 images sit out), {3, 4} in about 65% (1)
    assert 350 < seen_excluded < 530
    # patient ids (strings) work the same way
    support, query = sample_episode(labels, 4, episode_rng(0, 4, 0), groups.astype(str))
    assert len(set(groups[support])) == 8 and set(groups[support]).isdisjoint(groups[query])


def test_episode_says_when_groups_leave_a_class_without_support_or_query():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="class 1 has only 1 images in groups of their own"):
        sample_episode(labels, 2, episode_rng(0, 2, 0), np.array([0, 1, 2, 3, 4, 4, 4, 4]))
    with pytest.raises(ValueError, match="no query image of class 1"):
        sample_episode(labels, 1, episode_rng(0, 1, 0), np.array([0, 1, 2, 3, 4, 4, 4, 4]))


def test_shots_must_leave_queries_in_every_class():
    labels = np.array([0] * 12 + [1] * 8)
    check_shots(labels, [1, 7])
    with pytest.raises(ValueError, match="--shots 8: need 1 <= k < 8"):
        check_shots(labels, [1, 8])
    with pytest.raises(ValueError, match="multi-label"):
        check_shots(np.zeros((5, 2)), [1])
    groups = np.r_[0, 0, 0, 1, 1, np.arange(2, 17)]  # class 0: 9 groups of its 12 images
    check_shots(labels, [7], groups)
    with pytest.raises(ValueError, match="--shots 9: need 1 <= k < 8 .*groups"):
        check_shots(labels, [9], np.r_[np.zeros(4), np.arange(1, 17)])  # class 0: 9 groups; class 1: 8


def _clusters(n_per_class=30, dim=32, shift=3.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(2 * n_per_class, dim))
    y = np.repeat([0, 1], n_per_class)
    z[y == 1, :4] += shift
    return z, y


@pytest.mark.parametrize("method", ["proto", "linear", "knn", "labelprop"])
def test_methods_learn_separable_embeddings_and_not_noise(method):
    z, y = _clusters()
    z = normalize_embeddings(z, "center-l2")
    support = np.r_[0:5, 30:35]
    query = np.setdiff1d(np.arange(60), support)
    P = EMBEDDING_METHODS[method](z[support], y[support], z[query], 2, C=0.1, knn_k=5)
    assert P.shape == (50, 2) and np.allclose(P.sum(1), 1, atol=1e-3)
    assert (P.argmax(1) == y[query]).mean() > 0.9
    shuffled = np.random.default_rng(1).permutation(y)  # labels unrelated to the embeddings
    P = EMBEDDING_METHODS[method](z[support], shuffled[support], z[query], 2, C=0.1, knn_k=5)
    assert (P.argmax(1) == shuffled[query]).mean() < 0.75


def test_nearest_prototype_is_cosine_to_class_means():
    zs = np.array([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]])
    ys = np.array([0, 0, 1])
    zq = np.array([[2.0, 0.3], [0.1, 3.0], [1.0, 1.2]])
    P = nearest_prototype(zs, ys, zq, 2)
    assert P.argmax(1).tolist() == [0, 1, 1]  # the last: cosine 0.77 to (0, 1), 0.71 to the class-0 mean (1, 0.1)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    gap = cos(zq[2], np.array([0.0, 1.0])) - cos(zq[2], np.array([1.0, 0.1]))
    assert P[2, 1] == pytest.approx(1 / (1 + np.exp(-10 * gap)), rel=1e-9)
    # the scale of an embedding does not matter (cosine)
    assert np.allclose(nearest_prototype(zs, ys, 5 * zq, 2), P)


def test_knn_uses_at_most_the_shots_per_class():
    zs = np.array([[1.0, 0.0], [0.0, 1.0]])  # one shot per class: 1-nearest neighbour
    P = nearest_neighbours(zs, np.array([0, 1]), np.array([[0.9, 0.2], [0.2, 0.9]]), 2, knn_k=5)
    assert P.argmax(1).tolist() == [0, 1] and P.max() == pytest.approx(1.0, abs=1e-5)


def test_label_propagation_follows_the_query_clusters():
    # two elongated clusters: query images far from the support are reached through their neighbours
    t = np.linspace(0, 1, 30)[:, None]
    a = np.hstack([np.cos(t * 1.2), np.sin(t * 1.2), np.zeros_like(t)])
    b = np.hstack([np.zeros_like(t), np.sin(t * 1.2 + 0.2), np.cos(t * 1.2 + 0.2)])
    z = np.concatenate([a, b]) + np.random.default_rng(0).normal(scale=0.01, size=(60, 3))
    y = np.repeat([0, 1], 30)
    support = np.array([0, 30])
    query = np.setdiff1d(np.arange(60), support)
    P = label_propagation(z[support], y[support], z[query], 2, neighbours=4)
    assert np.allclose(P.sum(1), 1) and (P.argmax(1) == y[query]).mean() > 0.95


def test_linear_probe_handles_a_query_set_and_returns_probabilities():
    z, y = _clusters(seed=3)
    P = linear_probe(z[::2], y[::2], z[1::2], 2, C=0.1)
    assert ((P > 0) & (P < 1)).all() and (P.argmax(1) == y[1::2]).mean() > 0.9


def test_summary_mean_std_and_t_interval():
    df = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 2, "shots": 1, "accuracy": [0.5, 0.6, 0.7, 0.8, 0.9, 0.9],
                       "balanced_accuracy": 0.5, "roc_auc": [0.5, np.nan, 0.7, 0.9, 1.0, 1.0]})
    s = summarize_episodes(df, ["method", "shots"]).set_index("method")
    v = np.array([0.5, 0.6, 0.7, 0.8])
    half = stats.t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert s.loc["a", "count"] == 4
    assert s.loc["a", "accuracy_mean"] == pytest.approx(0.65)
    assert s.loc["a", "accuracy_std"] == pytest.approx(v.std(ddof=1))
    assert s.loc["a", "accuracy_ci_low"] == pytest.approx(0.65 - half)
    assert s.loc["a", "accuracy_ci_high"] == pytest.approx(0.65 + half)
    assert s.loc["a", "roc_auc_mean"] == pytest.approx(0.7)  # NaN AUCs (one class) are left out
    assert s.loc["b", "accuracy_std"] == 0 and s.loc["b", "accuracy_ci_low"] == pytest.approx(0.9)


def test_new_pool_interval_does_not_narrow_with_episodes_of_the_same_images():
    # 40 groups of 3 near-copies. The t interval over episodes narrows as episodes are added (+-0.09 at 5 episodes,
    # +-0.02 at 60): it describes this pool. The new-pool interval resamples the groups of the query images, the
    # same draw for every episode, and the episodes: it stays near +-0.05. Mutants caught: a t over episodes,
    # images resampled instead of groups, a separate draw per episode (both narrower), episodes not resampled,
    # the figure not taken over the query images
    rng = np.random.default_rng(0)
    group_labels = np.repeat([0, 1], 20)
    centres = rng.normal(size=(40, 16))
    centres[group_labels == 1, :2] += 1.2
    groups = np.repeat(np.arange(40), 3)
    z, labels = centres[groups] + 0.3 * rng.normal(size=(120, 16)), group_labels[groups]
    units = Units(120, groups, "near-duplicate groups")

    def summary(episodes):
        rows = [_row("linear", k, e, labels[q], linear_probe(z[s], labels[s], z[q], 2, C=0.1), 0, q)
                for k, e, s, q in episode_draws(labels, [3], episodes, 0, groups)]
        return rows, summarize_fewshot(rows, labels, units, n_boot=400).iloc[0]

    def half(row, which=""):
        return (row[f"accuracy_{which}ci_high"] - row[f"accuracy_{which}ci_low"]) / 2

    _, few = summary(5)
    rows, many = summary(60)
    assert half(many) < 0.5 * half(few)  # this pool: the t interval narrows with episodes
    assert half(many, "new_pool_") >= 0.5 * half(few, "new_pool_") and half(many, "new_pool_") > 2 * half(many)
    # the reference: each drawn episode's accuracy over its query images as often as drawn, mean over the episodes
    values = []
    episodes = bootstrap_indices(60, 400, np.random.SeedSequence([0, 1]))  # the draws of summarize_resampled
    for idx, chosen in zip(bootstrap_indices(units, 400, seed=0), episodes):
        drawn = np.bincount(idx, minlength=120)
        values.append(np.mean([classification_metrics(labels[np.repeat(r["_index"], drawn[r["_index"]])],
                                                      np.repeat(r["_P"], drawn[r["_index"]], axis=0))["accuracy"]
                               for r in (rows[e] for e in chosen)]))
    assert [many["accuracy_new_pool_ci_low"], many["accuracy_new_pool_ci_high"]] == pytest.approx(
        np.quantile(values, [0.025, 0.975]), abs=1e-12)
    assert many["ci_describes"].startswith("this pool") and "120 images" in many["ci_describes"]
    assert many["new_pool_ci_method"].startswith("percentile bootstrap over 40 near-duplicate groups of 120 images")


def test_normalizations():
    z = np.array([[3.0, 4.0], [1.0, 0.0]])
    assert np.allclose(np.linalg.norm(normalize_embeddings(z, "l2"), axis=1), 1)
    c = normalize_embeddings(z, "center-l2")
    assert np.allclose(c, np.array([[1.0, 2.0], [-1.0, -2.0]]) / np.sqrt(5))  # mean (2, 2) subtracted
    st = normalize_embeddings(np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]]), "standardize")
    assert np.allclose(st.mean(0), 0) and np.allclose(st.std(0), 1, atol=1e-5)
    with pytest.raises(ValueError, match="normalize 'zca'"):
        normalize_embeddings(z, "zca")
    # statistics of reference rows: the mean (2, 20) and standard deviation (1, 10) of the first two rows
    ref = normalize_embeddings(np.array([[5.0, 20.0]]), "standardize", np.array([[1.0, 10.0], [3.0, 30.0]]))
    assert np.allclose(ref, [[3.0, 0.0]], atol=1e-5)


@pytest.mark.parametrize("how", ["standardize", "center-l2"])
def test_inductive_methods_see_no_other_query_image(how):
    z, y = _clusters(seed=4)
    support, query = np.r_[0:3, 30:33], np.r_[3:30, 33:60]
    zs, zq = episode_embeddings(z, support, query, how)
    zs_alone, zq_alone = episode_embeddings(z, support, query[:1], how)  # the first query image on its own
    assert np.allclose(zs, zs_alone) and np.allclose(zq[:1], zq_alone)
    if how == "standardize":  # fitted on the support: its rows have mean 0 and standard deviation 1
        assert np.allclose(zs.mean(0), 0, atol=1e-9) and np.allclose(zs.std(0), 1, atol=1e-5)
    for method in ("proto", "linear", "knn"):
        P = EMBEDDING_METHODS[method](zs, y[support], zq, 2, C=0.1, knn_k=3)
        P_alone = EMBEDDING_METHODS[method](zs_alone, y[support], zq_alone, 2, C=0.1, knn_k=3)
        assert np.allclose(P[:1], P_alone)
    # a transductive method's embeddings depend on the query set (its mean and spread are in the fit)
    _, zq_all = episode_embeddings(z, support, query, how, transductive=True)
    _, zq_one = episode_embeddings(z, support, query[:1], how, transductive=True)
    assert not np.allclose(zq_all[:1], zq_one)


def test_cli_writes_summary_episodes_plot_and_learns_an_easy_set(tmp_path, easy_set, capsys):
    data = easy_set
    out = tmp_path / "fs"
    code = main(["--data", str(data), "--arch", "resnet18", "--weights", "none", "--img-size", "32",
                 "--shots", "1,5", "--episodes", "6", "--method", "proto,linear,knn,finetune",
                 "--finetune-episodes", "1", "--epochs", "1", "--finetune-img-size", "32", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "estimated duration" in printed and "95% CI" in printed
    summary = pd.read_csv(out / "fewshot.csv")
    assert len(summary) == 8  # 4 methods x 2 k
    counts = summary.set_index(["method", "shots"])["count"]
    assert counts[("proto", 1)] == 6 and counts[("finetune", 5)] == 1
    episodes = pd.read_csv(out / "episodes.csv")
    assert len(episodes) == 3 * 2 * 6 + 2
    # the easy set's similar discs form groups (005~027~003, 011~031, 007~019): their mates of support images sit out
    five = episodes.query("shots == 5")
    assert (five["n_query"] + five["n_excluded"] == 30).all() and five["n_excluded"].max() > 0
    assert summary.set_index("method")["transductive"].sum() == 0  # proto, linear, knn: inductive
    good = summary.query("method != 'finetune' and shots == 5")
    assert (good["accuracy_mean"] > 0.9).all()  # labels and embeddings stay aligned
    assert ((summary["accuracy_ci_low"] <= summary["accuracy_mean"] + 1e-12)
            | summary["accuracy_ci_low"].isna()).all()
    record = json.loads((out / "fewshot.json").read_text())
    assert "std" in record["notes"] and "ci95" in record["notes"] and record["config"]["episodes"] == 6
    # the episode interval says it describes this pool; the new-pool interval, over the groups, is there too
    assert "95% CI, this pool" in printed and "95% CI, new pool" in printed
    assert "new pool: percentile bootstrap" in printed
    assert summary["ci_describes"].str.startswith("this pool").all()
    assert (summary["new_pool_ci_method"].str.startswith("percentile bootstrap over")).all()
    assert ((summary["accuracy_new_pool_ci_low"] <= summary["accuracy_mean"] + 1e-12)
            & (summary["accuracy_mean"] <= summary["accuracy_new_pool_ci_high"] + 1e-12)).all()
    assert record["intervals"]["new_pool_ci95"]["unit"] == "near-duplicate groups"
    assert record["intervals"]["ci95"].startswith("this pool")
    assert (out / "fewshot.png").stat().st_size > 0
    # the same seed gives the same episodes and figures
    assert main(["--data", str(data), "--arch", "resnet18", "--weights", "none", "--img-size", "32", "--shots",
                 "1,5", "--episodes", "6", "--method", "proto,linear,knn", "--out", str(tmp_path / "again"),
                 "--no-progress"]) == 0
    again = pd.read_csv(tmp_path / "again" / "episodes.csv")
    pd.testing.assert_frame_equal(again, episodes.query("method != 'finetune'").reset_index(drop=True))


@pytest.mark.parametrize("argv, message", [
    (["--shots", "1,25"], "--shots 25: need 1 <= k < 16 (the smallest class has 16 groups"),  # 20 discs, 4 linked
    (["--method", "proto,svm"], "--method svm"),
    (["--weights", "/nowhere/w.pt"], "/nowhere/w.pt: no such weights file"),
])
def test_cli_bad_input_is_one_error_line(tmp_path, easy_set, capsys, argv, message):
    data = easy_set
    code = main(["--data", str(data), "--arch", "resnet18", "--weights", "none", "--img-size", "32",
                 "--out", str(tmp_path / "o"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("smallct.fewshot: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def _episode_leaks(episode_ids: pd.DataFrame, group_of: dict[str, object]) -> list[str]:
    """What ``episode_ids.csv`` does wrong against the groups ``group_of`` (id -> group): two support images of
    one group, or a query image in a support image's group."""
    leaks = []
    for (k, e), g in episode_ids.groupby(["shots", "episode"]):
        support = [group_of[i] for i in g.loc[g["role"] == "support", "id"]]
        query = {group_of[i] for i in g.loc[g["role"] == "query", "id"]}
        if len(set(support)) < len(support):
            leaks.append(f"k={k} episode {e}: two support images share a group")
        if query & set(support):
            leaks.append(f"k={k} episode {e}: a query image shares a group with a support image")
    return leaks


def test_episode_ids_keep_planted_duplicates_out_of_the_query_set(tmp_path):
    data = write_easy_set(tmp_path / "planted")
    labels = (data / "labels.csv").read_text()
    copies = range(10)  # 040.png..049.png are byte copies of 000.png..009.png, with their labels
    for i in copies:
        (data / f"{40 + i:03d}.png").write_bytes((data / f"{i:03d}.png").read_bytes())
    (data / "labels.csv").write_text(labels + "".join(f"{40 + i},{i % 2}\n" for i in copies))
    out = tmp_path / "fs"
    assert main(["--data", str(data), "--arch", "resnet18", "--weights", "none", "--img-size", "32", "--shots", "1,8",
                 "--episodes", "12", "--method", "proto,knn", "--out", str(out), "--no-progress"]) == 0
    ids = pd.read_csv(out / "episode_ids.csv", dtype={"id": str})
    assert len(ids) == 2 * 12 * 50 and (ids.groupby(["shots", "episode"])["id"].nunique() == 50).all()
    planted = {f"{i:03d}": f"g{i % 40}" if i % 40 in copies else str(i) for i in range(50)}  # ids: the file stems
    assert _episode_leaks(ids, planted) == []
    assert (ids.query("role == 'support'").groupby(["shots", "episode"]).size() == ids.groupby(
        ["shots", "episode"])["shots"].first() * 2).all()
    # the rule did something: with 8 shots per class, copies of support images sat out
    assert (ids.query("shots == 8 and role == 'excluded'")["id"].isin([f"{i:03d}" for i in [*copies, *range(40, 50)]])
            .any())
    record = json.loads((out / "fewshot.json").read_text())["grouping"]
    assert record["n_groups"] <= 40 and record["n_images_in_shared_groups"] >= 20
    assert record["excluded_per_episode_mean"]["8"] > record["excluded_per_episode_mean"]["1"] > 0
    # a sampler that ignored the copies would leak: the same check fails on a table that puts them in the query
    naive = ids.copy()
    naive.loc[naive["role"] == "excluded", "role"] = "query"
    assert _episode_leaks(naive, planted)


def test_episode_ids_on_head_ct_never_query_a_support_image_near_duplicate(tmp_path, head_ct_dir):
    out = tmp_path / "fs"
    assert main(["--data", str(head_ct_dir), "--arch", "tf_efficientnet_lite0", "--weights", "none", "--img-size",
                 "64", "--shots", "5,20", "--episodes", "4", "--method", "proto", "--out", str(out),
                 "--no-progress"]) == 0
    ids = pd.read_csv(out / "episode_ids.csv", dtype={"id": str})
    dataset = load_dataset(head_ct_dir)
    groups = near_duplicate_groups(dataset, log=lambda *a: None).groups  # smallct.cv's grouping, at its default
    assert _episode_leaks(ids, dict(zip(dataset.ids, groups))) == []
    # pairs named in smallct.data.similar: one slice twice (188, 189), one slice at two sizes (5, 58)
    known = {"188": "a", "189": "a", "005": "b", "058": "b"}
    assert _episode_leaks(ids, {i: known.get(i, i) for i in dataset.ids}) == []
    excluded = ids.query("role == 'excluded'")
    assert len(excluded) > 0 and ids.groupby(["shots", "episode"])["id"].nunique().eq(200).all()
    episodes = pd.read_csv(out / "episodes.csv")
    per_episode = excluded.groupby(["shots", "episode"]).size().reindex(
        pd.MultiIndex.from_frame(episodes[["shots", "episode"]]), fill_value=0)
    assert (per_episode.to_numpy() == episodes["n_excluded"].to_numpy()).all()
    assert (episodes["n_query"] + episodes["n_excluded"] + 2 * episodes["shots"] == 200).all()

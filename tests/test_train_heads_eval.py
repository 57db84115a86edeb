import math

import numpy as np
import pytest
import torch

from exfacegan.errors import DataError
from exfacegan.train.evaluation import embed, read_bin, ten_fold_accuracy, verify, write_bin
from exfacegan.train.heads import ArcFace, CosFace
from ten_fold_oracle import insightface_ten_fold, pairs_at_distances


def _setup(head):
    torch.manual_seed(0)
    emb = torch.randn(4, 8)
    labels = torch.tensor([0, 2, 1, 2])
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(head.weight).T
    return emb, labels, cos


def test_cosface_margin_at_target_only():
    head = CosFace(8, 3, s=64, m=0.35)
    emb, labels, cos = _setup(head)
    expected = 64 * cos.clone()
    expected[torch.arange(4), labels] = 64 * (cos[torch.arange(4), labels] - 0.35)
    torch.testing.assert_close(head(emb, labels), expected, atol=1e-4, rtol=1e-5)


def test_arcface_angle_margin_at_target():
    head = ArcFace(8, 3, s=64, m=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.randn(3, 8))
    emb, labels, cos = _setup(head)
    out = head(emb, labels)
    theta = torch.acos(cos[torch.arange(4), labels].clamp(-1, 1))
    expected_t = torch.where(theta + 0.5 < math.pi, torch.cos(theta + 0.5),
                             torch.cos(theta) - math.sin(math.pi - 0.5) * 0.5)
    torch.testing.assert_close(out[torch.arange(4), labels], 64 * expected_t, atol=1e-3, rtol=1e-4)
    mask = torch.ones_like(cos, dtype=torch.bool)
    mask[torch.arange(4), labels] = False
    torch.testing.assert_close(out[mask], 64 * cos[mask], atol=1e-4, rtol=1e-5)


def test_ten_fold_hand_checked():
    # 20 pairs, 2 per fold; genuine pairs at squared distance 0.5, impostors at 2.0, one impostor at 0.1
    e1 = np.zeros((20, 2)); e1[:, 0] = 1
    e2 = e1.copy()
    issame = np.array([True, False] * 10)
    d = np.where(issame, 0.5, 2.0); d[19] = 0.1  # fold 10 impostor that sits below any threshold
    angle = np.arccos(1 - d / 2)
    e2[:, 0], e2[:, 1] = np.cos(angle), np.sin(angle)
    r = ten_fold_accuracy(e1, e2, issame)
    assert r["fold_accuracies"][:9] == [1.0] * 9
    assert r["fold_accuracies"][9] == 0.5
    assert abs(r["accuracy"] - 0.95) < 1e-9
    assert abs(r["std"] - np.std([1.0] * 9 + [0.5])) < 1e-9


def test_ten_fold_threshold_comes_from_the_nine_training_folds_not_the_tested_one():
    """100 pairs, 10 per fold, genuine and impostor alternating. Folds 1-9: genuine at squared distance 0.953,
    impostors at 1.453; fold 10: 2.003 and 2.503. Every 9-fold training part is best split by a threshold in
    (0.953, 1.453] (the first: 0.96), which calls fold 10's genuine pairs impostors: 0.5 there, 1.0 elsewhere.
    A threshold chosen on the tested fold would get fold 10 right too (accuracy 1.0)."""
    issame = np.array([True, False] * 50)
    dist = np.where(issame, 0.953, 1.453)
    dist[90:] += 1.05
    r = ten_fold_accuracy(*pairs_at_distances(dist), issame)
    assert r["fold_accuracies"] == [1.0] * 9 + [0.5]
    assert r["accuracy"] == pytest.approx(0.95) and r["std"] == pytest.approx(0.15)
    assert r["best_threshold"] == pytest.approx(0.96)


def test_ten_fold_a_pair_exactly_at_the_threshold_is_an_impostor():
    """Same identity means distance strictly below the threshold (insightface's np.less). Genuine pairs at 1.995,
    impostors at 2.5, and in fold 10 one impostor at exactly 2.0 (orthogonal unit vectors): every training part
    picks 2.0 (0, 0.01, ... 2.0 is exact), which that impostor does not pass. All folds: 1.0."""
    issame = np.array([True, False] * 50)
    emb1, emb2 = pairs_at_distances(np.where(issame, 1.995, 2.5))
    emb1[99], emb2[99] = np.eye(8)[0], np.eye(8)[1]
    r = ten_fold_accuracy(emb1, emb2, issame)
    assert r["best_threshold"] == 2.0 and r["accuracy"] == 1.0


def test_ten_fold_follows_the_insightface_protocol_where_each_fold_has_its_own_best_threshold():
    """Genuine and impostor distances shifted per fold, so the best threshold moves from fold to fold; the expected
    figures come from the protocol written out with sklearn's KFold and a brute-force threshold search."""
    rng = np.random.default_rng(7)
    issame = rng.random(300) < 0.5
    shift = np.repeat(rng.uniform(-0.5, 0.5, 10), 30)
    dist = np.clip(np.where(issame, 1.0, 1.7) + shift + rng.normal(0, 0.15, 300), 0.01, 3.99)
    emb1, emb2 = pairs_at_distances(dist, seed=1)
    accuracies, chosen = insightface_ten_fold(emb1, emb2, issame)
    r = ten_fold_accuracy(emb1, emb2, issame)
    assert r["fold_accuracies"] == pytest.approx(accuracies, abs=1e-12)
    assert r["accuracy"] == pytest.approx(np.mean(accuracies)) and r["std"] == pytest.approx(np.std(accuracies))
    assert r["best_threshold"] == pytest.approx(np.mean(chosen))
    # The data tells the protocol from choosing each fold's threshold on the fold itself:
    on_itself = [max(np.mean((dist[k * 30:(k + 1) * 30] < t) == issame[k * 30:(k + 1) * 30]) for t in np.arange(0, 4, 0.01))
                 for k in range(10)]
    assert np.mean(on_itself) > np.mean(accuracies) + 0.03


def test_verify_on_written_bin(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (10, 112, 112, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (10, 112, 112, 3), dtype=np.uint8)
    images = np.stack([x for i in range(10) for x in (a[i], a[i], a[i], b[i])])
    issame = [True, False] * 10
    write_bin(tmp_path / "x.bin", images, issame)
    imgs, same = read_bin(tmp_path / "x.bin")
    assert imgs.shape == (40, 3, 112, 112) and torch.equal(imgs[0].permute(1, 2, 0), torch.from_numpy(a[0]))
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
    r = verify(model, imgs, same)
    assert r["accuracy"] == 1.0


def test_embed_runs_the_network_in_eval_mode_and_leaves_its_mode_as_it_was():
    """Batch statistics must not leak into embeddings: a BatchNorm network in training mode embeds with its running
    statistics (here a fresh one: mean 0, variance 1, so the identity), and is left in training mode."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8), torch.nn.BatchNorm1d(8)).train()
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    x = (images.float() - 127.5) / 127.5
    with torch.no_grad():
        linear = model[1]
        expected = torch.nn.functional.normalize(linear(x.flatten(1)) / (1 + 1e-5) ** 0.5)
    out = embed(model, images, batch_size=4, flip=False)
    assert model.training and model[2].running_mean.abs().max() == 0  # no statistics updated either
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-6)


def test_write_bin_refuses_images_that_are_not_two_per_pair(tmp_path):
    with pytest.raises(DataError, match="3 images for 2 pairs"):
        write_bin(tmp_path / "x.bin", np.zeros((3, 8, 8, 3), np.uint8), [True, False])
    assert not (tmp_path / "x.bin").exists()

import math

import numpy as np
import torch

from exfacegan.train.evaluation import read_bin, ten_fold_accuracy, verify, write_bin
from exfacegan.train.heads import ArcFace, CosFace


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

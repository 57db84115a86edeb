import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from exfacegan.errors import ConfigError, DataError
from exfacegan.train.augment import BatchAugment, RandAugment, apply_operation
from exfacegan.train.data import split_holdout, train_loader, verification_pairs


def test_holdout_split_per_identity():
    labels = np.repeat([0, 1, 2, 3], [20, 6, 3, 2])
    train, held = split_holdout(labels, 0.1, seed=3)
    assert np.bincount(labels[held], minlength=4).tolist() == [2, 2, 2, 0]  # >= 2 held, >= 1 left to train
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(len(labels)))
    assert np.array_equal(held, split_holdout(labels, 0.1, seed=3)[1])
    assert not np.array_equal(held, split_holdout(labels, 0.1, seed=4)[1])
    assert np.bincount(labels[split_holdout(labels, 0.5, seed=0)[1]]).tolist() == [10, 3, 2]
    assert len(split_holdout(labels, 0.0)[1]) == 0
    with pytest.raises(ConfigError, match="holdout_fraction"):
        split_holdout(labels, 1.0)


def test_verification_pairs_genuine_within_and_impostor_across_identities():
    labels = np.repeat(np.arange(6), 3)  # 6 * C(3, 2) = 18 genuine pairs possible
    pairs, issame = verification_pairs(labels, max_pairs=30, seed=0)
    assert len(pairs) == 30 and issame.sum() == 15
    assert np.array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], issame)
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == 30
    assert (pairs[:, 0] != pairs[:, 1]).all()
    pairs, issame = verification_pairs(labels, max_pairs=1000, seed=0)
    assert issame.sum() == 18 and (~issame).sum() == 18
    assert not issame[:18].all()  # shuffled, so that every fold sees both kinds


@pytest.mark.parametrize("n", [26, 31, 64, 67])
def test_steps_per_epoch_do_not_depend_on_the_number_of_processes(n):
    dataset = TensorDataset(torch.arange(n), torch.zeros(n, dtype=torch.long))
    for world_size in (1, 2, 4):
        batches = [list(train_loader(dataset, np.arange(n), 8, rank=r, world_size=world_size, num_workers=0))
                   for r in range(world_size)]
        assert all(len(b) == n // 8 for b in batches)
        assert all(len(x) == 8 // world_size for b in batches for x, _ in b)
        seen = torch.cat([x for b in batches for x, _ in b])
        assert len(seen.unique()) == len(seen)  # processes see disjoint samples


def test_loader_errors():
    dataset = TensorDataset(torch.arange(10), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ConfigError, match="global"):
        train_loader(dataset, np.arange(10), 6, world_size=4)
    with pytest.raises(DataError, match="fewer than batch_size"):
        train_loader(dataset, np.arange(10), 16)


def test_batch_augment_flips_per_image_and_normalises():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    expected = images.float() / 127.5 - 1
    torch.testing.assert_close(BatchAugment(flip=False)(images), expected)
    out = BatchAugment(flip=True)(images)
    same = (out - expected).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (out - expected.flip(3)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (same | mirrored).all() and 10 < mirrored.sum() < 54


def test_randaugment_draws_operations_per_image():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    out = RandAugment(num_ops=1, magnitude=30, operations=("identity", "solarize"))(x)
    unchanged = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-6
    inverted = (out - (1 - x)).abs().amax(dim=(1, 2, 3)) < 1e-6  # solarize at full magnitude: threshold 0
    assert (unchanged | inverted).all() and 10 < inverted.sum() < 54
    with pytest.raises(ConfigError, match="unknown augmentation"):
        RandAugment(operations=("identity", "cutout"))


def test_randaugment_operations():
    x = torch.zeros(2, 3, 112, 112)
    x[:, :, 40:70, 50] = 1.0  # a vertical bar at column 50
    moved = apply_operation("translate_x", x, torch.tensor([10 / 112, -10 / 112]))
    assert torch.allclose(moved[0, :, 40:70, 60], torch.ones(3, 30), atol=1e-4)
    assert torch.allclose(moved[1, :, 40:70, 40], torch.ones(3, 30), atol=1e-4)
    turned = apply_operation("rotate", x, torch.tensor([90.0, -90.0]))
    assert torch.allclose(turned.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=1e-3)
    assert (turned[0, 0].sum(1) > 1e-3).sum() == 1  # the bar is horizontal now: a single row
    y = torch.rand(2, 3, 8, 8)
    grey = apply_operation("color", y, torch.tensor([-1.0, 0.0]))
    assert torch.allclose(grey[0, 0], grey[0, 1]) and torch.allclose(grey[1], y[1])
    flat = apply_operation("contrast", y, torch.tensor([-1.0, -1.0]))
    assert torch.allclose(flat.std(dim=(1, 2, 3)), torch.zeros(2), atol=1e-6)
    four_bits = apply_operation("posterize", y, torch.tensor([4.0, 4.0]))
    levels = (four_bits * 255).round().to(torch.int64)
    assert (levels % 16 == 0).all()
    torch.testing.assert_close(apply_operation("brightness", y * 0.5, torch.tensor([0.5, -0.5])),
                               y * 0.5 * torch.tensor([1.5, 0.5]).view(2, 1, 1, 1))
    assert math.isclose(float(apply_operation("autocontrast", y * 0.5 + 0.2, torch.zeros(2)).amax()), 1.0,
                        rel_tol=1e-6)

"""`python -m exfacegan.train data.root=<dataset>`: margin-softmax FR training on an image folder."""
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from exfacegan.data.image_folder import ImageFolderDataset
from exfacegan.embedders.iresnet import IResNet
from exfacegan.train.heads import ArcFace, CosFace
from exfacegan.train.loop import train

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")


class _Normalised(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        image = image.float().sub(127.5).div(127.5)
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return image, label


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train/config")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.seed)
    dataset = ImageFolderDataset(cfg.data.root)
    loader = torch.utils.data.DataLoader(_Normalised(dataset), batch_size=cfg.data.batch_size, shuffle=True,
                                         num_workers=cfg.data.num_workers, drop_last=True,
                                         persistent_workers=cfg.data.num_workers > 0)
    model = IResNet(list(cfg.model.layers), num_features=cfg.model.num_features)
    head_cls = {"cosface": CosFace, "arcface": ArcFace}[cfg.head.name]
    head = head_cls(cfg.model.num_features, len(dataset.classes), s=cfg.head.s, m=cfg.head.m)
    losses = train(model, head, loader, cfg.epochs, cfg.out_dir, lr=cfg.optimizer.lr,
                   momentum=cfg.optimizer.momentum, weight_decay=cfg.optimizer.weight_decay,
                   milestones=tuple(cfg.optimizer.milestones), resume=cfg.resume)
    if losses:
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")


if __name__ == "__main__":
    main()

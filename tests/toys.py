"""Tiny deterministic stand-ins for networks, for testing stage logic (not network code)."""

import torch
from torch import nn


class ToyMapping(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, num_ws: int) -> None:
        super().__init__()
        self.num_ws = num_ws
        self.fc = nn.Linear(z_dim, w_dim)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None):
        w = self.fc(z)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        return self.w_avg.lerp(ws, truncation_psi)


class ToySynthesis(nn.Module):
    def __init__(self, w_dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.fc = nn.Linear(w_dim, 3 * resolution * resolution)

    def forward(self, ws, noise_mode="const"):
        return torch.tanh(self.fc(ws.mean(1))).view(-1, 3, self.resolution, self.resolution)


class ToyGenerator(nn.Module):
    def __init__(self, z_dim: int = 8, w_dim: int = 6, num_ws: int = 4, resolution: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.img_resolution = z_dim, 0, w_dim, num_ws, resolution
        self.mapping = ToyMapping(z_dim, w_dim, num_ws)
        self.synthesis = ToySynthesis(w_dim, resolution)


class ToyAligner(nn.Module):
    """Resizes to 112x112; drops images whose mean red value is above `drop_above`."""

    def __init__(self, drop_above: float = 2.0) -> None:
        super().__init__()
        self.drop_above = drop_above

    def forward(self, images):
        faces = nn.functional.interpolate(images, size=(112, 112), mode="bilinear", align_corners=False)
        found = images[:, 0].mean((1, 2)) <= self.drop_above
        return faces * found[:, None, None, None], found


class ToyEmbedder(nn.Module):
    embedding_dim = 16

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3 * 8 * 8, 16)

    def forward(self, faces):
        faces = (faces.float() - 127.5) / 127.5 if faces.dtype == torch.uint8 else faces
        small = nn.functional.adaptive_avg_pool2d(faces, 8).flatten(1)
        return nn.functional.normalize(self.fc(small), dim=1)

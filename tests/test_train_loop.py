import torch

from exfacegan.train.heads import CosFace
from exfacegan.train.loop import train


def _run(tmp, epochs, resume=False, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8))
    head = CosFace(8, 3, m=0.1, s=8)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 12, generator=g)
    y = torch.arange(12) % 3
    loader = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)]
    losses = train(model, head, loader, epochs, tmp, lr=0.05, resume=resume)
    return model, losses


def test_resume_equals_straight(tmp_path):
    straight, losses = _run(tmp_path / "a", 2)
    _run(tmp_path / "b", 1)
    resumed, _ = _run(tmp_path / "b", 2, resume=True, seed=99)
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert state["step"] == 6 and state["epoch"] == 2
    for p, q in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q)


def test_loss_falls(tmp_path):
    _, losses = _run(tmp_path, 20)
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])

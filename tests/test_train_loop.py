import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from exfacegan.errors import CheckpointError
from exfacegan.train.data import train_loader
from exfacegan.train.distributed import Processes
from exfacegan.train.heads import CosFace
from exfacegan.train.loop import MarginModel, Trainer, load_for_resume, step_decay

CONFIG = {"model": "linear", "lr": 0.05}


def _dataset():
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(26, 12, generator=g), torch.arange(26) % 3)


def _trainer(checkpoint, steps_per_epoch, processes=None, seed=0, config=CONFIG):
    torch.manual_seed(seed)
    model = MarginModel(torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.Dropout(0.2)), CosFace(8, 3, s=8, m=0.1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = step_decay(optimizer, steps_per_epoch, milestones=[2], warmup_epochs=0.5)
    return Trainer(model=model, optimizer=optimizer, scheduler=scheduler, checkpoint=checkpoint,
                   processes=processes or Processes(), config=config, seed=0)


def _run(checkpoint, epochs, resume=False, seed=0, num_workers=0):
    loader = train_loader(_dataset(), np.arange(26), batch_size=8, num_workers=num_workers)
    trainer = _trainer(checkpoint, len(loader), seed=seed)
    if resume:
        trainer.load_state_dict(load_for_resume(checkpoint, CONFIG, "true"))
    losses = trainer.fit(loader, epochs)
    return trainer, losses


def test_resume_continues_from_saved_step_with_the_same_optimizer_state(tmp_path):
    straight, losses = _run(tmp_path / "a.pt", 3, num_workers=1)  # a persistent worker: one iterator for all epochs
    _run(tmp_path / "b.pt", 1)
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 3)  # 26 images, batch 8, the incomplete batch dropped
    resumed = _trainer(tmp_path / "b.pt", 3, seed=99)  # another initialisation, all overwritten by the checkpoint
    resumed.load_state_dict(load_for_resume(tmp_path / "b.pt", CONFIG, "auto"))
    momentum = [s["momentum_buffer"].clone() for s in resumed.optimizer.state.values()]
    for expected, buffer in zip(saved["optimizer"]["state"].values(), momentum):
        torch.testing.assert_close(buffer, expected["momentum_buffer"])
    assert resumed.step == 3 and resumed.scheduler.last_epoch == 3
    resumed_losses = resumed.fit(train_loader(_dataset(), np.arange(26), batch_size=8, num_workers=1), 3)
    assert resumed.step == 9 and len(resumed_losses) == 6
    np.testing.assert_allclose(resumed_losses, losses[3:], rtol=1e-5)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q)


def test_loss_falls(tmp_path):
    _, losses = _run(tmp_path / "c.pt", 12)
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    _run(tmp_path / "d.pt", 1)
    with pytest.raises(CheckpointError, match="lr differ"):
        load_for_resume(tmp_path / "d.pt", {**CONFIG, "lr": 0.1}, "auto")
    assert load_for_resume(tmp_path / "d.pt", {**CONFIG, "lr": 0.1}, "false") is None
    with pytest.raises(CheckpointError, match="resume=true"):
        load_for_resume(tmp_path / "missing.pt", CONFIG, "true")
    assert load_for_resume(tmp_path / "missing.pt", CONFIG, "auto") is None


def test_schedule_warmup_and_step_decay():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = step_decay(optimizer, steps_per_epoch=4, milestones=[2, 3], warmup_epochs=0.5)
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(lrs, [0.05] + [0.1] * 7 + [0.01] * 4 + [0.001] * 2, rtol=1e-9)
    by_step = step_decay(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 4, [5], unit="step")
    assert [by_step.lr_lambdas[0](s) for s in (4, 5)] == [1.0, pytest.approx(0.1)]


def _ddp_worker(rank, rendezvous, out):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    loader = train_loader(_dataset(), np.arange(26), batch_size=8, rank=rank, world_size=2, num_workers=0)
    trainer = _trainer(out, len(loader), Processes(rank, rank, 2))
    trainer.model.backbone[1].p = 0.0  # dropout draws differ per rank by design; switch it off to compare
    trainer.fit(loader, 2)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path / "ddp.pt")), nprocs=2)
    loader = train_loader(_dataset(), np.arange(26), batch_size=8, num_workers=0)
    single = _trainer(tmp_path / "one.pt", len(loader))
    single.model.backbone[1].p = 0.0
    single.fit(loader, 2)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ddp["step"] == single.step == 6
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6)

"""`python -m exfacegan.train data.root=<image folder> [recipe=smoke] [model=...] [head=...] [eval.targets=[...]]`.

Under `torchrun --nproc_per_node=N -m exfacegan.train ...` the same command trains with DDP; see conf/train/.
"""
import hydra
from omegaconf import DictConfig

from exfacegan.cli.entry import run_hydra_app, run_hydra_task
from exfacegan.run import CONFIG_PATH

PROG = "exfacegan.train"


@hydra.main(version_base="1.3", config_path=f"{CONFIG_PATH}/train", config_name="config")
def app(cfg: DictConfig) -> None:
    from exfacegan.train.app import run_training
    from exfacegan.train.distributed import close_processes

    try:
        run_hydra_task(lambda: run_training(cfg), prog=PROG)
    finally:
        close_processes()


def main() -> None:
    run_hydra_app(app, prog=PROG)


if __name__ == "__main__":
    main()

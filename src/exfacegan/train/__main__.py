"""`python -m exfacegan.train data.root=<image folder> [recipe=smoke] [model=...] [head=...] [eval.targets=[...]]`.

Under `torchrun --nproc_per_node=N -m exfacegan.train ...` the same command trains with DDP; see conf/train/.
"""
import logging
import sys

import hydra
from omegaconf import DictConfig

from exfacegan.run import CONFIG_PATH, user_error

log = logging.getLogger("exfacegan.train")


@hydra.main(version_base="1.3", config_path=f"{CONFIG_PATH}/train", config_name="config")
def main(cfg: DictConfig) -> None:
    from exfacegan.train.app import run_training
    from exfacegan.train.distributed import close_processes

    try:
        run_training(cfg)
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        log.error("%s", cause)
        print(f"exfacegan.train: error: {cause}", file=sys.stderr)
        sys.exit(2)
    finally:
        close_processes()


if __name__ == "__main__":
    main()

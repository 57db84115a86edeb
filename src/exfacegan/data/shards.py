"""WebDataset tar shards of a face dataset: `<key>.<jpg|png>` (the encoded image) + `<key>.cls` (the class index
as ASCII) per sample, written with the `webdataset` package.

`ShardDataset` indexes the shards once (tar headers and the small `.cls` members) so that the trainer can split
off held-out images and read them; training itself streams through `ShardStream`: each process (DDP rank)
reads its own shards, `shards[rank::world_size]`, each DataLoader worker a share of those (all of them, in its
own order, when they are fewer than the workers), in a seeded order per epoch through a shuffle buffer,
repeating them when needed so that every process yields exactly `steps * local_batch` images per epoch
(DDP processes must run the same number of steps).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import webdataset
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from exfacegan.data.image_folder import IMAGE_EXTENSIONS, decode_rgb
from exfacegan.errors import DataError

SHARD_PATTERN = "shard-%06d.tar"
SHUFFLE_BUFFER = 512


def write_shards(out_dir: Path, samples: Sequence[tuple[str, int, Path]], shard_size: int) -> list[Path]:
    """Shards of `shard_size` samples (key, class, image file) in out_dir; the image bytes are stored as they
    are, under the file's own extension. Returns the shard paths."""
    with webdataset.ShardWriter(str(out_dir / SHARD_PATTERN), maxcount=shard_size, maxsize=float("inf"),
                                verbose=0, encoder=False, mtime=0.0) as writer:
        for key, label, path in samples:
            writer.write({"__key__": key, path.suffix[1:].lower(): path.read_bytes(), "cls": str(label).encode()})
    return sorted(out_dir.glob("shard-*.tar"))


def _image_member(sample: dict) -> bytes:
    for extension in IMAGE_EXTENSIONS:
        if extension[1:] in sample:
            return sample[extension[1:]]
    raise DataError(f"sample {sample.get('__key__')} of {sample.get('__url__')} has no image member")


class ShardDataset(Dataset):
    """The samples of the `*.tar` shards of `root` (sorted by name, members in tar order): items are
    (uint8 [3, size, size], class) by random access; `labels`, `classes` as ImageFolderDataset."""

    def __init__(self, root: str | Path, size: int = 112) -> None:
        self.root, self.size = Path(root), int(size)
        self.shards = sorted(self.root.glob("*.tar"))
        if not self.shards:
            raise DataError(f"no *.tar shards in {self.root}")
        keys, labels, locations = [], [], []
        for number, shard in enumerate(self.shards):
            found: dict[str, dict] = {}
            try:
                with tarfile.open(shard) as tar:
                    for member in tar:
                        key, _, extension = member.name.rpartition(".")
                        entry = found.setdefault(key, {})
                        if extension == "cls":
                            entry["cls"] = int(tar.extractfile(member).read())
                        elif f".{extension.lower()}" in IMAGE_EXTENSIONS:
                            entry["image"] = (number, member.offset_data, member.size)
            except (tarfile.TarError, ValueError) as error:
                raise DataError(f"cannot read shard {shard}: {error}") from error
            for key, entry in found.items():
                if "cls" not in entry or "image" not in entry:
                    raise DataError(f"sample {key} of {shard} lacks a .cls or an image member")
                keys.append(key)
                labels.append(entry["cls"])
                locations.append(entry["image"])
        self.keys = keys
        self.labels = np.asarray(labels, dtype=np.int64)
        self.locations = locations
        self.classes = [str(label) for label in range(int(self.labels.max()) + 1)]
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        number, offset, size = self.locations[index]
        if number not in self._files:
            self._files[number] = open(self.shards[number], "rb")
        f = self._files[number]
        f.seek(offset)
        return torch.from_numpy(decode_rgb(f.read(size), self.size)).permute(2, 0, 1), int(self.labels[index])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}


class ShardStream(IterableDataset):
    """Training images of `shards` (keys in `keys`), streamed: see the module docstring."""

    def __init__(self, shards: Sequence[Path], keys: set[str], size: int, steps: int, local_batch: int, *,
                 rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if len(shards) < world_size:
            raise DataError(f"{len(shards)} shards cannot be split among {world_size} processes; "
                            "export with a smaller --shard-size")
        self.shards, self.keys, self.size = [str(s) for s in shards], keys, size
        self.steps, self.local_batch = steps, local_batch
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * self.local_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = self.shards[self.rank :: self.world_size]
        if len(mine) >= workers:
            mine = mine[worker::workers]
        quota = (self.steps // workers + (worker < self.steps % workers)) * self.local_batch
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        emitted = 0
        while emitted < quota:  # one pass over this worker's shards, then from the start again if needed
            buffer, fresh = [], 0
            order = [{"url": mine[i]} for i in rng.permutation(len(mine))]
            for sample in webdataset.tariterators.tarfile_samples(order):
                if sample["__key__"] in self.keys:
                    fresh += 1
                    buffer.append(sample)
                if len(buffer) >= SHUFFLE_BUFFER:
                    slot = int(rng.integers(len(buffer)))
                    buffer[slot], buffer[-1] = buffer[-1], buffer[slot]
                    yield self._decode(buffer.pop())
                    emitted += 1
                    if emitted == quota:
                        return
            if fresh == 0:
                raise DataError(f"shards {mine} hold no training image")
            for index in rng.permutation(len(buffer))[: quota - emitted]:
                yield self._decode(buffer[index])
                emitted += 1

    def _decode(self, sample: dict) -> tuple[torch.Tensor, int]:
        image = decode_rgb(_image_member(sample), self.size)
        return torch.from_numpy(image).permute(2, 0, 1), int(sample["cls"])


class StreamLoader:
    """A DataLoader over a ShardStream; `sampler.set_epoch` (the training loop's per-epoch hook) reseeds it."""

    def __init__(self, stream: ShardStream, num_workers: int, pin_memory: bool) -> None:
        self.sampler = stream
        self.loader = DataLoader(stream, batch_size=stream.local_batch, num_workers=num_workers, drop_last=True,
                                 pin_memory=pin_memory, persistent_workers=False)

    def __iter__(self) -> Iterator:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

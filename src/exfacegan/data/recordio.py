"""MXNet RecordIO without MXNet: the `train.rec` / `train.idx` / `property` face datasets that insightface's
arcface_torch (and most FR code bases) train from.

A record is `uint32 magic, uint32 lrecord` (low 29 bits: length, high 3 bits: continuation flag), the data,
zero-padded to 4 bytes. A payload holding the magic number at a 4-byte aligned offset is cut there into
parts flagged 1 (first), 2 (middle), 3 (last), the magic itself left out; a reader puts it back between them.
The payload of a face record is an IRHeader (`uint32 flag, float32 label, uint64 id, uint64 id2`), then
`flag` float32 labels when flag > 0, then the encoded image. insightface's layout: images are keys 1..N with
their class as label, then one record per class whose labels are its key range [first, end), and header
record 0 (written last) with labels [N + 1, end of the class records]. `train.idx` lines: `key<TAB>offset`.
"""

from __future__ import annotations

import io
import numbers
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from exfacegan.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
REC_FILES = ("train.rec", "train.idx", "property")


@dataclass(frozen=True)
class IRHeader:
    """`label` is a float when flag == 0, else the `flag` float32 labels."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack(label: float | Sequence[float], data: bytes, id: int = 0, id2: int = 0) -> bytes:
    """IRHeader + data, as `mx.recordio.pack`: a scalar label (any number, NumPy's too) gives flag 0, a
    sequence its length."""
    if isinstance(label, numbers.Number):
        return _IR_HEADER.pack(0, float(label), id, id2) + data
    labels = np.asarray(label, dtype="<f4")
    return _IR_HEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + data


def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
    """(IRHeader, data) of a packed payload."""
    if len(payload) < _IR_HEADER.size:
        raise DataError(f"a RecordIO payload of {len(payload)} bytes is shorter than an IRHeader")
    flag, label, id_, id2 = _IR_HEADER.unpack_from(payload)
    data = payload[_IR_HEADER.size:]
    if flag > 0:
        if len(data) < 4 * flag:
            raise DataError(f"a RecordIO payload declares {flag} labels but holds {len(data) // 4}")
        labels = tuple(float(x) for x in np.frombuffer(data[: 4 * flag], dtype="<f4"))
        return IRHeader(flag, labels, id_, id2), data[4 * flag:]
    return IRHeader(flag, label, id_, id2), data


def frame(payload: bytes) -> bytes:
    """The bytes of one record as dmlc's RecordIOWriter writes it (magic numbers at aligned offsets split it)."""
    out, start = [], 0
    position = payload.find(_MAGIC_BYTES)
    while position >= 0:
        if position % 4 == 0:
            out += [_FRAME.pack(MAGIC, (1 if start == 0 else 2) << 29 | (position - start)), payload[start:position]]
            start = position + 4
        position = payload.find(_MAGIC_BYTES, position + 1)
    out += [_FRAME.pack(MAGIC, (3 if start else 0) << 29 | (len(payload) - start)), payload[start:],
            b"\0" * (-len(payload) % 4)]
    return b"".join(out)


class RecordWriter:
    """Writes `rec` and its `idx` (key<TAB>offset per record, in write order), as MXIndexedRecordIO does."""

    def __init__(self, rec: str | Path, idx: str | Path) -> None:
        self.rec = open(rec, "wb")
        self.idx = open(idx, "w", newline="\n")

    def write(self, key: int, payload: bytes) -> None:
        self.idx.write(f"{key}\t{self.rec.tell()}\n")
        self.rec.write(frame(payload))

    def close(self) -> None:
        self.rec.close()
        self.idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_INDEX_LINE = re.compile(rb"([0-9]{1,19})\t([0-9]{1,19})\r?\n?")
_PROPERTY = re.compile(rb"([0-9]{1,19}),([0-9]{1,19}),([0-9]{1,19})\s*")
_PROPERTY_MAX_BYTES = 4096


def read_index(idx: str | Path, rec_size: int | None = None) -> dict[int, int]:
    """key -> byte offset from a `.idx` file: lines of ASCII digits `key<TAB>offset`; with `rec_size`, every
    offset must leave room for a record frame in a `.rec` of that many bytes."""
    offsets = {}
    with open(idx, "rb") as f:
        for number, line in enumerate(f, 1):
            match = _INDEX_LINE.fullmatch(line)
            if match is None:
                raise DataError(f"{idx}:{number}: expected 'key<TAB>offset' in ASCII digits, got {line[:60]!r}")
            key, offset = int(match[1]), int(match[2])
            if rec_size is not None and offset > rec_size - _FRAME.size:
                raise DataError(f"{idx}:{number}: offset {offset} of key {key} is past the end of the "
                                f"{rec_size}-byte record file")
            offsets[key] = offset
    return offsets


def read_property(path: str | Path) -> tuple[int, int, int]:
    """(number of classes, height, width) from an insightface `property` file: `C,H,W` in ASCII digits."""
    with open(path, "rb") as f:
        text = f.read(_PROPERTY_MAX_BYTES + 1)
    match = _PROPERTY.fullmatch(text) if len(text) <= _PROPERTY_MAX_BYTES else None
    if match is None:
        raise DataError(f"{path}: expected 'classes,height,width' in ASCII digits, got {text[:60]!r}")
    return int(match[1]), int(match[2]), int(match[3])


def _name(f: io.BufferedIOBase) -> str:
    return str(getattr(f, "name", "the RecordIO file"))


def _size(f: io.BufferedIOBase) -> int:
    return os.fstat(f.fileno()).st_size


def _frame_head(f: io.BufferedIOBase, size: int) -> tuple[int, int]:
    """(length, continuation flag) of the frame at the file position; the length fits in the file."""
    start = f.tell()
    head = f.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise DataError(f"{_name(f)} ends inside the record at offset {start}")
    magic, lrecord = _FRAME.unpack(head)
    if magic != MAGIC:
        raise DataError(f"no RecordIO magic number at offset {start} of {_name(f)}")
    length = lrecord & _LENGTH_MASK
    if length > size - start - _FRAME.size:
        raise DataError(f"{_name(f)}: the record at offset {start} declares {length} bytes, past the end of the file")
    return length, lrecord >> 29


def read_record(f: io.BufferedIOBase, offset: int) -> bytes:
    """The payload of the record at `offset`, its parts joined by the magic number they were cut at."""
    size = _size(f)
    if not 0 <= offset <= size - _FRAME.size:
        raise DataError(f"{_name(f)}: record offset {offset} is outside the {size}-byte file")
    f.seek(offset)
    parts = []
    while True:
        length, flag = _frame_head(f, size)
        if flag not in ((0, 1) if not parts else (2, 3)):
            raise DataError(f"{_name(f)}: the record at offset {offset} has a part flagged {flag} "
                            f"{'first' if not parts else 'after its first part'}")
        parts.append(f.read(length))
        f.seek(-length % 4, os.SEEK_CUR)
        if flag in (0, 3):
            return _MAGIC_BYTES.join(parts)


def read_header(f: io.BufferedIOBase, offset: int) -> IRHeader:
    """The IRHeader of the record at `offset`, without reading its image (unless the record is split early)."""
    size = _size(f)
    if not 0 <= offset <= size - _FRAME.size:
        raise DataError(f"{_name(f)}: record offset {offset} is outside the {size}-byte file")
    f.seek(offset)
    length, flag = _frame_head(f, size)
    if flag != 0 or length < _IR_HEADER.size:
        return unpack(read_record(f, offset))[0]
    fixed = f.read(_IR_HEADER.size)
    wanted = 4 * _IR_HEADER.unpack(fixed)[0]
    if wanted > length - _IR_HEADER.size:
        raise DataError(f"{_name(f)}: the record at offset {offset} declares {wanted // 4} labels in "
                        f"{length - _IR_HEADER.size} bytes")
    return unpack(fixed + f.read(wanted))[0]


def write_face_records(out_dir: Path, classes: Iterable[Sequence[bytes]], image_size: int = 112) -> int:
    """train.rec, train.idx and property of encoded images grouped by class (class i = the i-th group);
    returns the number of images."""
    key, ranges = 1, []
    with RecordWriter(out_dir / "train.rec", out_dir / "train.idx") as writer:
        for label, images in enumerate(classes):
            first = key
            for data in images:
                writer.write(key, pack(label, data, id=key))
                key += 1
            ranges.append((first, key))
        num_images, identities_start = key - 1, key
        for first, end in ranges:
            writer.write(key, pack((first, end), b"", id=key))
            key += 1
        writer.write(0, pack((identities_start, key), b"", id=0, id2=1))
    (out_dir / "property").write_text(f"{len(ranges)},{image_size},{image_size}\n")
    return num_images


class RecordIODataset(Dataset):
    """A face RecordIO folder read as arcface_torch reads it: keys 1 .. label[0] - 1 of header record 0 are the
    images, each labelled by its IRHeader label (or its first label). Items are (uint8 [3, size, size], class);
    the same interface as ImageFolderDataset (`labels`, `classes`)."""

    def __init__(self, root: str | Path, size: int = 112) -> None:
        self.root, self.size = Path(root), int(size)
        missing = [name for name in REC_FILES[:2] if not (self.root / name).is_file()]
        if missing:
            raise DataError(f"{self.root} is not a RecordIO dataset: no {', '.join(missing)}")
        rec, idx = self.root / "train.rec", self.root / "train.idx"
        offsets = read_index(idx, rec.stat().st_size)
        if 0 not in offsets:
            raise DataError(f"{idx} has no header record (key 0)")
        with open(rec, "rb") as f:
            header = read_header(f, offsets[0])
            if header.flag <= 0:
                raise DataError(f"record 0 of {rec} is not a header (flag {header.flag})")
            end = header.label[0]
            if not (np.isfinite(end) and end == int(end) and 2 <= end <= len(offsets)):
                raise DataError(f"record 0 of {rec} gives images 1..{end} - 1, but {idx} lists {len(offsets)} records")
            keys = range(1, int(end))
            missing = next((key for key in keys if key not in offsets), None)
            if missing is not None:
                raise DataError(f"{idx} lacks image key {missing} of 1..{len(keys)}")
            self.offsets = np.asarray([offsets[key] for key in keys], dtype=np.int64)
            labels = [read_header(f, offset).label for offset in self.offsets]
        self.labels = _class_labels(labels, self.offsets, rec)
        num_classes = int(self.labels.max()) + 1
        if (self.root / "property").is_file():
            declared = read_property(self.root / "property")[0]
            if not num_classes <= declared <= len(self.labels):
                raise DataError(f"{self.root / 'property'} declares {declared} classes, but {rec} holds "
                                f"{len(self.labels)} images with labels up to {num_classes - 1}")
            num_classes = declared
        self.classes = [str(label) for label in range(num_classes)]
        self._file: tuple[int, io.BufferedReader] | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, index: int) -> tuple[IRHeader, bytes]:
        """(IRHeader, encoded image) of sample `index` (key index + 1)."""
        if self._file is None or self._file[0] != os.getpid():  # one handle per DataLoader worker
            self._file = (os.getpid(), open(self.root / "train.rec", "rb"))
        return unpack(read_record(self._file[1], int(self.offsets[index])))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from exfacegan.data.image_folder import decode_rgb

        _, data = self.read(index)
        return torch.from_numpy(decode_rgb(data, self.size)).permute(2, 0, 1), int(self.labels[index])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}


def _class_labels(labels: list[float | tuple[float, ...]], offsets: np.ndarray, rec: Path) -> np.ndarray:
    """int64 class labels from the images' IRHeader labels (the first one of a sequence): finite integers
    in [0, number of images)."""
    values = np.asarray([lab if isinstance(lab, float) else (lab[0] if lab else np.nan) for lab in labels])
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(values) & (values == np.round(values)) & (values >= 0) & (values < len(values)))
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(f"{rec}: image {first + 1} (offset {offsets[first]}) has label {values[first]}; "
                        f"a class label is an integer in [0, {len(values)}) (at most one class per image)")
    return values.astype(np.int64)

"""Our RecordIO writer and reader against files MXNet 1.9.1 wrote (tests/data/recordio, see its README)."""
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exfacegan.data.recordio import RecordIODataset, RecordWriter, read_index, read_record, unpack, write_face_records
from exfacegan.errors import DataError

DATA = Path(__file__).parent / "data" / "recordio"
CLASSES = ["id_a", "id_b", "id_c"]
MAGIC = struct.pack("<I", 0xCED7230A)
# The raw payloads of split.rec, as make_reference.py wrote them with MXNet.
SPLIT_PAYLOADS = [b"", b"abc", MAGIC + b"xyz1", b"ab" + MAGIC + b"cd", b"1234" + MAGIC + MAGIC + b"5",
                  b"12345678" + MAGIC, MAGIC]


def _jpegs(name: str) -> list[bytes]:
    return [(DATA / "images" / name / f"{n}.jpg").read_bytes() for n in range(2)]


def test_split_records_match_mxnet_bytes(tmp_path):
    with RecordWriter(tmp_path / "split.rec", tmp_path / "split.idx") as writer:
        for key, payload in enumerate(SPLIT_PAYLOADS):
            writer.write(key, payload)
    assert (tmp_path / "split.rec").read_bytes() == (DATA / "split.rec").read_bytes()
    assert (tmp_path / "split.idx").read_bytes() == (DATA / "split.idx").read_bytes()
    offsets = read_index(DATA / "split.idx")
    with open(DATA / "split.rec", "rb") as f:
        assert [read_record(f, offsets[key]) for key in range(len(SPLIT_PAYLOADS))] == SPLIT_PAYLOADS


def test_face_records_match_mxnet_bytes(tmp_path):
    assert write_face_records(tmp_path, [_jpegs(name) for name in CLASSES]) == 6
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / name).read_bytes() == (DATA / "face" / name).read_bytes(), name


def test_reader_sees_the_images_and_classes_mxnet_wrote():
    dataset = RecordIODataset(DATA / "face", size=16)
    assert len(dataset) == 6 and dataset.classes == ["0", "1", "2"]
    assert dataset.labels.tolist() == [0, 0, 1, 1, 2, 2]
    offsets = read_index(DATA / "face" / "train.idx")
    with open(DATA / "face" / "train.rec", "rb") as f:
        header, _ = unpack(read_record(f, offsets[0]))
        identity, empty = unpack(read_record(f, offsets[8]))
    assert (header.flag, header.label, header.id, header.id2) == (2, (7.0, 10.0), 0, 1)
    assert identity.label == (3.0, 5.0) and empty == b""  # class 1 holds keys 3 and 4
    for index in range(6):
        header, data = dataset.read(index)
        assert data == _jpegs(CLASSES[index // 2])[index % 2] and header.id == index + 1
        image, label = dataset[index]
        expected = np.asarray(Image.open(DATA / "images" / CLASSES[index // 2] / f"{index % 2}.jpg").convert("RGB"))
        assert label == index // 2 and np.array_equal(image.permute(1, 2, 0).numpy(), expected)


def test_reader_refuses_files_without_a_header(tmp_path):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write(1, b"\0" * 24)
    with pytest.raises(DataError, match="no header record"):
        RecordIODataset(tmp_path)
    (tmp_path / "train.rec").write_bytes(b"\0" * 16)
    (tmp_path / "train.idx").write_text("0\t0\n")
    with pytest.raises(DataError, match="magic"):
        RecordIODataset(tmp_path)
    (tmp_path / "train.rec").write_bytes((DATA / "face" / "train.rec").read_bytes()[:-8])  # header record cut
    (tmp_path / "train.idx").write_bytes((DATA / "face" / "train.idx").read_bytes())
    with pytest.raises(DataError, match="past the end of the file"):
        RecordIODataset(tmp_path)

"""Hostile RecordIO folders (`train.rec`, `train.idx`, `property`): each is refused in one DataError line naming
the file before anything is allocated from it, and the writer's image records equal MXNet's field by field."""
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exfacegan.data.recordio import RecordIODataset, RecordWriter, pack, write_face_records
from exfacegan.errors import DataError, ExFaceGANError
from hostile import load_isolated

DATA = Path(__file__).parent / "data" / "recordio"
CLASSES = ["id_a", "id_b", "id_c"]
FUZZ_EXAMPLES = int(os.environ.get("EXFACEGAN_FUZZ_EXAMPLES", "150"))


def _mxnet_records(folder: Path) -> dict[int, bytes]:
    """key -> the bytes of its record, cut from `train.rec` at the offsets of `train.idx` (parsed by hand)."""
    rec = (folder / "train.rec").read_bytes()
    rows = [line.split(b"\t") for line in (folder / "train.idx").read_bytes().splitlines()]
    starts = sorted((int(offset), int(key)) for key, offset in rows)
    ends = [offset for offset, _ in starts[1:]] + [len(rec)]
    return {key: rec[start:end] for (start, key), end in zip(starts, ends)}


def test_image_records_equal_mxnets_field_by_field(tmp_path):
    """MXNet 1.9.1 packed each image as IRHeader(flag 0, label = class as float32, id = key, id2 = 0) + JPEG."""
    write_face_records(tmp_path, [[(DATA / "images" / name / f"{n}.jpg").read_bytes() for n in range(2)]
                                  for name in CLASSES])
    theirs, ours = _mxnet_records(DATA / "face"), _mxnet_records(tmp_path)
    for key in range(1, 7):
        jpeg = (DATA / "images" / CLASSES[(key - 1) // 2] / f"{(key - 1) % 2}.jpg").read_bytes()
        magic, lrecord, flag, label, id_, id2 = struct.unpack_from("<IIIfQQ", theirs[key])
        assert (magic, lrecord >> 29, lrecord & (1 << 29) - 1) == (0xCED7230A, 0, 24 + len(jpeg))
        assert (flag, label, id_, id2) == (0, (key - 1) // 2, key, 0)
        assert theirs[key][32:32 + len(jpeg)] == jpeg
        assert struct.unpack_from("<IIIfQQ", ours[key]) == (magic, lrecord, flag, label, id_, id2), key
        assert ours[key] == theirs[key], key
        payload = theirs[key][8:8 + 24 + len(jpeg)]
        for label_type in (int, float, np.int64, np.float32):  # export hands NumPy labels too
            assert pack(label_type((key - 1) // 2), jpeg, id=key) == payload, label_type


def _folder(root: Path, labels=(0, 0, 1, 1), header: bytes | None = None, prop: bytes | None = b"2,112,112\n") -> Path:
    """A face RecordIO folder with these image labels (floats or label tuples), fake image bytes."""
    root.mkdir(parents=True, exist_ok=True)
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        for key, label in enumerate(labels, 1):
            writer.write(key, pack(label, b"image-%d" % key, id=key))
        writer.write(0, header if header is not None else pack((len(labels) + 1, len(labels) + 1), b"", id2=1))
    if prop is not None:
        (root / "property").write_bytes(prop)
    return root


def _refused(root: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as error:
        RecordIODataset(root)
    message = str(error.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    return message


def test_the_folder_builder_makes_a_readable_dataset(tmp_path):
    dataset = RecordIODataset(_folder(tmp_path, labels=(0, 1, (1.0, 7.0), 0)))
    assert dataset.labels.tolist() == [0, 1, 1, 0] and dataset.classes == ["0", "1"]
    assert [dataset.read(i)[1] for i in range(4)] == [b"image-1", b"image-2", b"image-3", b"image-4"]


@pytest.mark.parametrize("label", [1e12, float("nan"), float("inf"), -1.0, 0.5, 4.0])
def test_an_image_label_that_is_not_a_class_is_refused(tmp_path, label):
    _refused(_folder(tmp_path, labels=(0, label, 1, 1), prop=None), "train.rec", "image 2", "label")


@pytest.mark.parametrize("end", [1e12, float("nan"), float("-inf"), 1.0, 6.0])
def test_a_header_naming_images_that_are_not_there_is_refused(tmp_path, end):
    _refused(_folder(tmp_path, header=pack((end, 9.0), b"", id2=1)), "record 0", "train.rec")


@pytest.mark.parametrize("prop", [b"10000000000,112,112\n", b"5,112,112", b"1,112,112", b"\xc2\xb2,112,112\n",
                                  b"2,112,112\xff", b"2;112;112", b"", b"2,112,112\n" + b" " * 5000])
def test_a_property_file_that_is_not_ascii_digits_or_overstates_the_classes_is_refused(tmp_path, prop):
    _refused(_folder(tmp_path, prop=prop), "property")


@pytest.mark.parametrize("idx", [b"0\t0\n1\t\xff\n", b"0\t0\n\xc2\xb2\t12\n", b"0\t99999999999999\n", b"0\t-4\n",
                                 b"0 0\n", b"0\t0\t0\n"])
def test_an_index_that_is_not_ascii_digits_or_points_outside_the_file_is_refused(tmp_path, idx):
    (_folder(tmp_path) / "train.idx").write_bytes(idx)
    _refused(tmp_path, "train.idx")


def test_a_header_flag_beyond_its_record_is_refused_before_reading(tmp_path):
    header = struct.pack("<IfQQ", 0xFFFFFFFF, 0.0, 0, 1)
    _refused(_folder(tmp_path, header=header), "train.rec", "declares 4294967295 labels")


def test_a_record_length_beyond_the_file_is_refused_before_reading(tmp_path):
    rec = bytearray((_folder(tmp_path) / "train.rec").read_bytes())
    rec[4:8] = struct.pack("<I", (1 << 29) - 1)  # image 1 claims 512 MiB
    (tmp_path / "train.rec").write_bytes(bytes(rec))
    _refused(tmp_path, "train.rec", "offset 0", "past the end of the file")


def test_a_record_starting_with_a_continued_part_is_refused(tmp_path):
    rec = bytearray((_folder(tmp_path) / "train.rec").read_bytes())
    rec[4:8] = struct.pack("<I", 2 << 29 | struct.unpack_from("<I", rec, 4)[0])
    (tmp_path / "train.rec").write_bytes(bytes(rec))
    _refused(tmp_path, "train.rec", "flagged 2")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["label 1e12", "property 1e10", "flag 0xFFFFFFFF"])
def test_memory_exhausting_folders_are_refused_in_a_capped_process(tmp_path, case):
    if case == "label 1e12":
        root, fragment = _folder(tmp_path, labels=(0, 1e12, 1, 1), prop=None), "image 2 (offset 40) has label"
    elif case == "property 1e10":
        root, fragment = _folder(tmp_path, prop=b"10000000000,112,112\n"), "declares 10000000000 classes"
    else:
        root, fragment = _folder(tmp_path, header=struct.pack("<IfQQ", 0xFFFFFFFF, 0.0, 0, 1)), "4294967295 labels"
    load_isolated("exfacegan.data.recordio:RecordIODataset", root).assert_refused(fragment)


_BASE: dict[str, bytes] = {}


def _base_files() -> dict[str, bytes]:
    if not _BASE:
        with tempfile.TemporaryDirectory() as tmp:
            root = _folder(Path(tmp), labels=(0, (1.0, 2.0), 1, 2, 2), prop=b"3,112,112\n")
            _BASE.update({name: (root / name).read_bytes() for name in ("train.rec", "train.idx", "property")})
    return _BASE


def _mutated(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


_edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["train.rec", "train.idx", "property"]), edits=_edits,
       cut=st.none() | st.integers(0, 400), replacement=st.none() | st.binary(max_size=40))
def test_fuzzed_folders_give_a_dataset_or_one_error_line(name, edits, cut, replacement):
    files = dict(_base_files())
    files[name] = replacement if replacement is not None and name != "train.rec" else _mutated(files[name], edits, cut)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for file, data in files.items():
            (root / file).write_bytes(data)
        try:
            dataset = RecordIODataset(root)
            for index in range(len(dataset)):
                dataset.read(index)
        except ExFaceGANError as error:
            assert "\n" not in str(error)
            event(f"refused {name}")
            return
        event(f"read {name}")
        assert 1 <= len(dataset.classes) <= len(dataset) <= 5
        assert dataset.labels.min() >= 0 and dataset.labels.max() < len(dataset.classes)

"""Reference RecordIO files written by MXNet itself (run ONLY in a separate venv; the tests never import this):

    python3 -m venv /tmp/mxvenv && /tmp/mxvenv/bin/pip install mxnet==1.9.1 "numpy<1.24" pillow
    cd tests/data/recordio && /tmp/mxvenv/bin/python make_reference.py

images/<class>/<n>.jpg: 3 classes x 2 tiny JPEGs (written once with Pillow, then kept as they are).
face/train.{rec,idx}, face/property: the layout insightface's face datasets use (images as keys 1..N with
the class as label, one record per class holding its key range [first, end), header record 0 written last).
split.{rec,idx}: raw payloads holding the RecordIO magic number, which MXNet splits into continued parts.
"""
import os
import struct

import mxnet as mx
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = ["id_a", "id_b", "id_c"]
MAGIC = struct.pack("<I", 0xCED7230A)
SPLIT_PAYLOADS = [b"", b"abc", MAGIC + b"xyz1", b"ab" + MAGIC + b"cd", b"1234" + MAGIC + MAGIC + b"5",
                  b"12345678" + MAGIC, MAGIC]


def make_images() -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        os.makedirs(os.path.join(HERE, "images", name), exist_ok=True)
        for n in range(2):
            path = os.path.join(HERE, "images", name, f"{n}.jpg")
            if not os.path.exists(path):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def make_face() -> None:
    os.makedirs(os.path.join(HERE, "face"), exist_ok=True)
    writer = mx.recordio.MXIndexedRecordIO(os.path.join(HERE, "face", "train.idx"),
                                           os.path.join(HERE, "face", "train.rec"), "w")
    key, ranges = 1, []
    for label, name in enumerate(CLASSES):
        first = key
        for n in range(2):
            with open(os.path.join(HERE, "images", name, f"{n}.jpg"), "rb") as f:
                writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, label, key, 0), f.read()))
            key += 1
        ranges.append((first, key))
    identities_start = key
    for first, end in ranges:
        writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, [first, end], key, 0), b""))
        key += 1
    writer.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, [identities_start, key], 0, 1), b""))
    writer.close()
    with open(os.path.join(HERE, "face", "property"), "w") as f:
        f.write(f"{len(CLASSES)},112,112\n")


def make_split() -> None:
    writer = mx.recordio.MXIndexedRecordIO(os.path.join(HERE, "split.idx"), os.path.join(HERE, "split.rec"), "w")
    for key, payload in enumerate(SPLIT_PAYLOADS):
        writer.write_idx(key, payload)
    writer.close()
    reader = mx.recordio.MXIndexedRecordIO(os.path.join(HERE, "split.idx"), os.path.join(HERE, "split.rec"), "r")
    assert [reader.read_idx(k) for k in range(len(SPLIT_PAYLOADS))] == SPLIT_PAYLOADS
    reader.close()


if __name__ == "__main__":
    make_images()
    make_face()
    make_split()
    print(mx.__version__, "wrote", sorted(os.listdir(HERE)))

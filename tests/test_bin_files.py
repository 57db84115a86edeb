"""insightface .bin verification files are read without running any code they may carry."""

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from exfacegan.errors import DataError
from exfacegan.train.evaluation import read_bin


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _faces(count: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 112, 112, 3), dtype=np.uint8)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _python2_bin(encoded: list[bytes], issame: list[bool]) -> bytes:
    """A .bin byte for byte as Python 2 pickles (bins, issame): str items as BINSTRING, bools as NEWTRUE/NEWFALSE."""
    strings = b"".join(b"T" + struct.pack("<I", len(data)) + data for data in encoded)
    flags = b"".join(b"\x88" if same else b"\x89" for same in issame)
    return b"\x80\x02" + b"](" + strings + b"e" + b"](" + flags + b"e" + b"\x86."


@pytest.mark.parametrize("layout", ["python2", "protocol2", "numpy"])
def test_insightface_layouts_decode_to_the_original_images(layout, tmp_path):
    images = _faces(4)
    encoded, issame = [_png(image) for image in images], [True, False]
    data = {
        "python2": lambda: _python2_bin(encoded, issame),  # bytes as Python 2 str
        "protocol2": lambda: pickle.dumps((encoded, issame), protocol=2),  # bytes through _codecs.encode
        "numpy": lambda: pickle.dumps(([np.frombuffer(e, np.uint8) for e in encoded], np.array(issame)), protocol=4),
    }[layout]()
    path = tmp_path / "lfw.bin"
    path.write_bytes(data)
    decoded, same = read_bin(path)
    np.testing.assert_array_equal(decoded.permute(0, 2, 3, 1).numpy(), images)
    np.testing.assert_array_equal(same, issame)


@pytest.mark.parametrize("where", ["top level", "among the images", "among the flags"])
def test_a_bin_asking_for_os_system_is_refused_without_running_it(where, tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsShell(marker)
    encoded = [_png(image) for image in _faces(2)]
    content = {"top level": evil, "among the images": ([encoded[0], evil], [True]),
               "among the flags": (encoded, [evil])}[where]
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(DataError, match=r"refused to load.*'(posix|nt|os)\.system'") as error:
        read_bin(path)
    assert "\n" not in str(error.value)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # control: unpickled without restriction, the same bytes do run the payload
    assert marker.exists()


@pytest.mark.parametrize("content, message", [
    ({"bins": [], "issame": []}, "expected a pair"),
    (([1, 2], [True]), "not a list of encoded image bytes"),
    (([b"x", b"y"], [1]), "issame is not a list of bools"),
    (([b"x", b"y"], np.array([0.5])), "issame is not a list of bools"),
])
def test_a_bin_of_another_shape_is_refused(content, message, tmp_path):
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(DataError, match=message):
        read_bin(path)


def test_codecs_encode_is_only_allowed_to_rebuild_bytes(tmp_path):
    class Rot13:
        def __reduce__(self):
            import codecs
            return (codecs.encode, ("payload", "rot13"))

    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps(([Rot13(), b"x"], [True]), protocol=2))
    with pytest.raises(DataError, match="_codecs.encode"):
        read_bin(path)

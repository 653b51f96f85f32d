"""Golden streams (tests/golden): known streams decode to known hashes, the same inputs
compress to the same bytes, and must-fail streams raise FormatError.

The streams and MANIFEST.json are made by tests/golden/make_golden.py.
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

import actzip
import reference as ref

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
MANIFEST = json.loads((GOLDEN_DIR / "MANIFEST.json").read_text())

sys.path.insert(0, str(GOLDEN_DIR))
import make_golden  # noqa: E402  (the deterministic inputs)

sys.path.remove(str(GOLDEN_DIR))


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_manifest_lists_every_file_in_the_golden_folder():
    listed = {e["file"] for section in ("golden", "must_fail", "version1") for e in MANIFEST[section].values()}
    assert listed == {p.name for p in GOLDEN_DIR.glob("*.azip")}
    assert MANIFEST["format_version"] == actzip._core.FORMAT_VERSION


# Streams of this encoder (format version 2), and those the version-1 encoder wrote for the
# same inputs: every decoder reads both, to the same values.
DECODABLE = [("golden", n, 2) for n in sorted(MANIFEST["golden"])] + [
    ("version1", n, 1) for n in sorted(MANIFEST["version1"])
]


def test_version_1_streams_are_kept_for_golden_inputs():
    assert MANIFEST["version1"] and set(MANIFEST["version1"]) <= set(MANIFEST["golden"])


@pytest.mark.parametrize("section, name, version", DECODABLE, ids=[f"{s}-{n}" for s, n, _ in DECODABLE])
def test_golden_stream_decodes_to_its_known_hash(section, name, version):
    entry = MANIFEST[section][name]
    stream = (GOLDEN_DIR / entry["file"]).read_bytes()
    assert _sha256(stream) == entry["stream_sha256"], "the golden file itself changed"
    assert struct.unpack_from("<H", stream, 4)[0] == version
    ct = actzip.CompressedTensor.from_bytes(stream)
    assert list(ct.shape) == entry["shape"]
    assert ct.dtype == getattr(torch, entry["dtype"])
    decoded = actzip.decompress(ct)
    assert _sha256(make_golden.tensor_bytes(decoded)) == entry["decoded_sha256"]
    assert entry["decoded_sha256"] == MANIFEST["golden"][name]["decoded_sha256"]
    # The reference decoder of docs/FORMAT.md reads it the same way.
    h, _ = ref.read_stream(stream)
    assert h.version == version and (version >= 2 or h.zmap_lengths == [])
    _, bits = ref.decode(stream)
    assert _sha256(bits.tobytes()) == entry["decoded_sha256"]


@pytest.mark.parametrize("name", sorted(MANIFEST["golden"]))
def test_compressing_the_golden_input_again_gives_identical_bytes(name):
    entry = MANIFEST["golden"][name]
    make, bound, mode, checksum = make_golden.GOLDEN[name]
    x = make()
    assert _sha256(make_golden.tensor_bytes(x)) == entry["input_sha256"], "the deterministic input changed"
    stream = actzip.compress(x, bound, mode=mode, checksum=checksum).to_bytes()
    assert _sha256(stream) == entry["stream_sha256"], (
        "the encoder now writes different bytes for a golden input; if its choices changed on "
        "purpose, regenerate with tests/golden/make_golden.py (old streams must still decode)"
    )


@pytest.mark.parametrize("name", sorted(MANIFEST["must_fail"]))
def test_must_fail_stream_raises_format_error(name):
    entry = MANIFEST["must_fail"][name]
    stream = (GOLDEN_DIR / entry["file"]).read_bytes()
    with pytest.raises(actzip.FormatError):
        # from_bytes validates the header, chunk headers and checksums; decompress the rest.
        actzip.decompress(actzip.CompressedTensor.from_bytes(stream))
    # The rule it breaks is one of the document's: the reference rejects it too.
    with pytest.raises(ref.FormatError):
        ref.read_stream(stream)


def test_format_error_is_a_value_error():
    assert issubclass(actzip.FormatError, ValueError)

"""Backing-file fingerprints (agent/fingerprint.py) on real files, through LocalHostSystem."""

import doctest
import shutil

import pytest

from ferry.agent import fingerprint as fpmod
from ferry.agent.hostsystem import LocalHostSystem
from ferry.errors import FerryError

MiB = 1 << 20


def test_docstring_examples():
    assert doctest.testmod(fpmod).failed == 0


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    return d


def write(path, size, seed):
    data = bytearray(size)
    for i in range(0, size, 4096):
        data[i : i + 8] = (seed * 1_000_003 + i).to_bytes(8, "little")
    path.write_bytes(bytes(data))


def test_a_byte_for_byte_copy_matches_and_another_image_does_not(images):
    host = LocalHostSystem([str(images)])
    base = images / "base.raw"
    write(base, 20 * MiB, seed=1)
    shutil.copyfile(base, images / "copy.raw")
    write(images / "other.raw", 20 * MiB, seed=2)
    write(images / "small.raw", 19 * MiB, seed=1)  # same bytes as far as it goes, another size
    fp = host.fingerprint(str(base))
    assert fp.startswith("sha256-sampled:") and host.fingerprint(str(images / "copy.raw")) == fp
    assert host.fingerprint(str(images / "other.raw")) != fp
    assert host.fingerprint(str(images / "small.raw")) != fp
    # a change in a sampled block (the last one is always sampled) shows
    with open(images / "copy.raw", "r+b") as f:
        f.seek(20 * MiB - 1)
        f.write(b"\xff")
    assert host.fingerprint(str(images / "copy.raw")) != fp


def test_a_fingerprint_is_confined_like_a_backing_file(images, tmp_path):
    host = LocalHostSystem([str(images)])
    outside = tmp_path / "secret.raw"
    outside.write_bytes(b"x" * 100)
    (images / "link.raw").symlink_to(outside)
    for path, reason in (
        (str(outside), "PATH_OUTSIDE_IMAGE_DIRS"),
        (str(images / "link.raw"), "PATH_SYMLINK"),
        (str(images / "gone.raw"), "BACKING_MISSING"),
    ):
        with pytest.raises(FerryError) as err:
            host.fingerprint(path)
        assert err.value.reason == reason, path

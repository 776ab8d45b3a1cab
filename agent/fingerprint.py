"""A backing file's fingerprint: is the target's base image the same bytes as the source's?

``--copy-storage-inc`` copies only a disk's top layer; the target's image is created on top of the
backing file found there by path. If that file is another image under the same name (a newer
golden image, a rebuilt template), the guest reads its unchanged blocks from the wrong base:
silent corruption. Hashing whole base images (gigabytes, on both hosts, per preflight) costs too
much, so the fingerprint samples them: SHA-256 over the file's size and ``SAMPLES`` blocks of
``BLOCK`` bytes evenly spread from its first byte to its last (a file of at most
``SAMPLES * BLOCK`` bytes is hashed whole). Copies made byte for byte (cp, rsync, scp) match;
different images almost surely differ in size, header or a sampled block. An image rewritten by
``qemu-img convert`` has the same content in another layout and does not match: copy it byte for
byte, or copy the whole disk.
"""

from __future__ import annotations

import hashlib
import logging
import os

from ferry.errors import FerryError
from ferry.ports import HostSystem

log = logging.getLogger(__name__)

SAMPLES = 64
BLOCK = 64 * 1024


def offsets(size: int) -> list[int]:
    """Where the sampled blocks start in a file of ``size`` bytes.

    >>> offsets(100), offsets(SAMPLES * BLOCK) == [i * BLOCK for i in range(SAMPLES)]
    ([0], True)
    >>> o = offsets(10 << 30); len(o), o[0], o[-1] == (10 << 30) - BLOCK
    (64, 0, True)
    """
    if size <= SAMPLES * BLOCK:
        return list(range(0, max(size, 1), BLOCK))
    last = size - BLOCK
    return [last * i // (SAMPLES - 1) for i in range(SAMPLES)]


def fingerprint(fd: int) -> str:
    """The fingerprint of the open file ``fd`` (read with pread: its offset is left alone)."""
    size = os.fstat(fd).st_size
    h = hashlib.sha256(f"ferry-fingerprint-v1 {size}\n".encode())
    for at in offsets(size):
        h.update(os.pread(fd, BLOCK, at))
    return "sha256-sampled:" + h.hexdigest()[:32]


def fingerprint_or_empty(host: HostSystem, path: str) -> str:
    """``host``'s fingerprint of ``path``; "" when it cannot be read there (missing, unreadable,
    outside the image directories: the checks say so from the other facts)."""
    try:
        return host.fingerprint(path)
    except FerryError as err:
        log.info("no fingerprint of %s: %s", path, err)
        return ""

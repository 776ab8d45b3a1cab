"""The source's shared-storage probes (agent/shared_probes.py) over a fake host."""

import doctest

import pytest

from ferry.agent import shared_probes
from ferry.agent.shared_probes import SharedProbes, check_token
from ferry.errors import InvalidArgument
from ferry.testing.fake_hostsystem import FakeHostSystem

GiB = 1 << 30
TOKEN = "00112233445566778899aabbccddeeff"


def test_docstring_examples():
    assert doctest.testmod(shared_probes).failed == 0


@pytest.fixture
def host():
    return FakeHostSystem(dirs={"/nfs": GiB, "/images": GiB, "/ro": GiB}, shared_dirs=["/nfs"], read_only_dirs=["/ro"])


@pytest.mark.parametrize(
    "token", ["", "abc", "0011223344556677889900aabbccddeeff" * 2, "00112233445566778899AABBCCDDEEFF"]
)
def test_only_a_hex_token_names_a_probe(token):
    with pytest.raises(InvalidArgument) as err:
        check_token(token)
    assert err.value.reason == "TOKEN_INVALID"


def test_one_probe_per_directory_and_a_problem_for_each_directory_without(host):
    probes = SharedProbes(host)
    written, problems = probes.place(
        ["/nfs/vm1/a.qcow2", "/nfs/vm1/b.raw", "/nfs/c.raw", "/ro/d.raw", "/etc/e.raw"], TOKEN
    )
    assert written == [f"/nfs/vm1/.ferry-probe-{TOKEN}", f"/nfs/.ferry-probe-{TOKEN}"]
    assert all(host.exists(p) for p in written)
    assert [(p.reason, p.message.split(":")[0]) for p in problems] == [
        ("PATH_NOT_WRITABLE", "no probe written in /ro"),
        ("PATH_OUTSIDE_IMAGE_DIRS", "no probe written in /etc"),
    ]
    assert all(p.hint for p in problems)


def test_only_its_own_probes_are_removed(host):
    probes = SharedProbes(host)
    written, _ = probes.place(["/nfs/a.raw"], TOKEN)
    host.files["/nfs/.ferry-probe-ffeeddccbbaa99887766554433221100"] = 0  # someone else's
    host.files["/nfs/a.raw"] = GiB
    assert probes.remove(["/nfs/a.raw", "/nfs/.ferry-probe-ffeeddccbbaa99887766554433221100", *written]) == written
    assert not host.exists(written[0])
    assert host.exists("/nfs/a.raw") and host.exists("/nfs/.ferry-probe-ffeeddccbbaa99887766554433221100")
    assert probes.remove(written) == []  # already gone


def test_a_probe_its_caller_forgot_is_removed_after_the_ttl(host):
    now = [0.0]
    probes = SharedProbes(host, ttl_s=600, clock=lambda: now[0])
    old, _ = probes.place(["/nfs/a.raw"], TOKEN)
    now[0] = 599.0
    probes.place(["/images/b.raw"], "ffeeddccbbaa99887766554433221100")
    assert host.exists(old[0])
    now[0] = 600.0
    probes.remove([])
    assert not host.exists(old[0]) and probes.placed == ["/images/.ferry-probe-ffeeddccbbaa99887766554433221100"]

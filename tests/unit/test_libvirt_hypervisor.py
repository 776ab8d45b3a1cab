"""The libvirt adapter's reads against libvirt's in-process test driver (test:///default: no
libvirtd needed). Its pure translation (flags, params, capabilities, job stats) is tested in
test_libvirt_translate.py."""

import pytest

libvirt = pytest.importorskip("libvirt")

from ferry.agent.libvirt_hypervisor import LibvirtHypervisor  # noqa: E402
from ferry.errors import FailedPrecondition, NotFound  # noqa: E402
from ferry.model import DomainState  # noqa: E402


@pytest.fixture
async def test_driver():
    h = LibvirtHypervisor("test:///default", 5)
    yield h
    h.close()


async def test_reads_against_the_test_driver(test_driver):
    facts = await test_driver.host_facts()
    assert facts.hostname and facts.libvirt_version >= 9_000_000 and facts.memory_total_bytes > 0
    [dom] = await test_driver.list_domains()
    assert (dom.name, dom.state, dom.persistent) == ("test", DomainState.RUNNING, True)
    assert dom.disks[0].target == "vda" and dom.disks[0].virtual_size > 0  # from blockInfo
    assert (await test_driver.get_domain(dom.uuid)).name == "test"  # by UUID too
    assert (await test_driver.find_domain(uuid=dom.uuid)).name == "test"
    assert await test_driver.find_domain(name="nope") is None
    assert "<name>test</name>" in await test_driver.domain_xml("test")


async def test_errors_come_from_the_table(test_driver):
    with pytest.raises(NotFound) as exc:
        await test_driver.get_domain("nope")
    assert exc.value.reason == "DOMAIN_NOT_FOUND"
    with pytest.raises(FailedPrecondition) as exc:
        await test_driver.job_stats("test")  # the test driver has no jobs
    assert exc.value.reason == "NOT_SUPPORTED"

"""The libvirt adapter's reads against libvirt's in-process test driver (test:///default: no
libvirtd needed). Its pure translation (flags, params, capabilities, job stats) is tested in
test_libvirt_translate.py."""

import pytest

libvirt = pytest.importorskip("libvirt")

from ferry.agent import libvirt_errors as le  # noqa: E402
from ferry.agent.libvirt_hypervisor import LIBVIRT_JOB_WAIT_S, LibvirtHypervisor  # noqa: E402
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


# --- reading a domain never waits for a migration's job (stand-in domains) --------------------

XML = """<domain type='qemu'><name>g1</name><uuid>5b1f0e4c-0000-4000-8000-000000000001</uuid>
<memory unit='KiB'>262144</memory><vcpu>1</vcpu><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/var/lib/libvirt/images/g1.qcow2'/><target dev='vda' bus='virtio'/></disk>
</devices></domain>"""


class StubDomain:
    """What ``LibvirtHypervisor._domain_info`` calls on a virDomain, with the NOWAIT statistics
    given and every virDomainGetBlockInfo recorded (that call waits for a job)."""

    def __init__(self, state: int, reason: int, stats: dict[str, object]) -> None:
        self._state, self._reason, self._stats = state, reason, stats
        self.block_info_asked: list[str] = []

    def XMLDesc(self, flags: int) -> str:
        return XML

    def state(self) -> list[int]:
        return [self._state, self._reason]

    def isActive(self) -> int:
        return 1

    def isPersistent(self) -> int:
        return 1

    def name(self) -> str:
        return "g1"

    def connect(self) -> "StubDomain":
        return self

    def domainListGetStats(self, doms: object, stats: int, flags: int) -> list[tuple[object, dict[str, object]]]:
        return [(self, self._stats)]

    def blockInfo(self, target: str) -> list[int]:
        self.block_info_asked.append(target)
        return [3 << 30, 1 << 20, 3 << 30]


FULL = {"block.count": 1, "block.0.name": "vda", "block.0.capacity": 2 << 30, "block.0.allocation": 1 << 20}
LEFT_OUT = {"block.count": 1, "block.0.name": "vda"}  # libvirt skipped what needs a job


@pytest.mark.parametrize(
    ("state", "reason", "stats", "asked", "size", "paused_by_libvirt"),
    [
        (1, 1, FULL, [], 2 << 30, False),  # running, the statistics have it: no blockInfo
        # running, left out (seen right after a migration landed, the agent just restarted):
        # blockInfo, which waits for no job here
        (1, 1, LEFT_OUT, ["vda"], 3 << 30, False),
        # paused for an incoming migration: its job allows no blockInfo (it would wait for the whole
        # copy); the size stays unknown, and the domain says it is an arrival
        (3, 2, LEFT_OUT, [], 0, True),
        # running on the target in post-copy (and after its link broke): still under the incoming
        # job, which allows no blockInfo (the lab: 30 s, "cannot acquire state change lock")
        (1, 10, LEFT_OUT, [], 0, False),
        (1, 11, LEFT_OUT, [], 0, False),
        (3, 1, FULL, [], 2 << 30, False),  # paused by the user
    ],
)
def test_domain_info_reads_sizes_without_waiting_for_a_migration_job(
    state, reason, stats, asked, size, paused_by_libvirt
):
    dom = StubDomain(state, reason, stats)
    info = LibvirtHypervisor._domain_info(dom)  # type: ignore[arg-type]
    assert dom.block_info_asked == asked
    assert info.disks[0].virtual_size == size
    assert info.paused_by_libvirt is paused_by_libvirt


class RefusingDomain(StubDomain):
    """A domain whose job statistics libvirt refuses (as on an incoming migration's target)."""

    def jobStats(self, flags: int) -> dict[str, object]:
        err = libvirt.libvirtError("migration statistics are available only on the source host")
        err.err = (libvirt.VIR_ERR_OPERATION_UNSUPPORTED, 0, "", 0, "", None, None, 0, 0)
        raise err


def test_an_incoming_migrations_domain_has_a_running_job_though_libvirt_gives_no_statistics():
    """Seen in CI: a host died in pre-copy, and cleaning up the target failed NOT_SUPPORTED because
    its agent asked libvirt for the job of the domain still paused for the incoming migration."""
    from ferry.agent.libvirt_hypervisor import _job_stats

    incoming = _job_stats(RefusingDomain(3, 2, FULL), 0, False)  # type: ignore[arg-type]
    assert incoming.active and incoming.operation == "migration in"
    assert _job_stats(RefusingDomain(3, 11, FULL), 0, False).active  # type: ignore[arg-type]  # starting up
    with pytest.raises(libvirt.libvirtError):  # a domain libvirt did not pause: not an arrival
        _job_stats(RefusingDomain(1, 1, FULL), 0, False)  # type: ignore[arg-type]


NODE = """<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>
<active>2</active><mhz>2000</mhz><model>i686</model></cpu><memory>2097152</memory>
<domain type="test"><name>g9</name><memory>262144</memory><os><type>hvm</type></os></domain></node>"""


async def test_undefine_inactive_removes_only_a_domain_that_is_not_running(tmp_path):
    node = tmp_path / "node.xml"  # a private test driver (test:///default is shared in the process)
    node.write_text(NODE)
    h = LibvirtHypervisor(f"test://{node}", 5)
    try:
        assert not await h.undefine_inactive("g9")  # running: kept
        assert not await h.undefine_inactive("nope")  # gone: nothing to do
        await h._call("destroy", lambda c: c.lookupByName("g9").destroy())
        assert await h.undefine_inactive("g9")
        assert await h.find_domain(name="g9") is None
    finally:
        h.close()


# --- destroying an unfinished incoming copy -----------------------------------------------------


class IncomingDomain(StubDomain):
    """A domain with the given state and persistence whose destroy is recorded."""

    def __init__(self, state: int, reason: int, persistent: bool) -> None:
        super().__init__(state, reason, FULL)
        self.persistent, self.destroyed = persistent, 0

    def isPersistent(self) -> int:
        return int(self.persistent)

    def destroy(self) -> int:
        self.destroyed += 1
        return 0


class OneDomainConnection:
    def __init__(self, dom: IncomingDomain) -> None:
        self.dom = dom

    def lookupByUUIDString(self, uuid: str) -> IncomingDomain:
        return self.dom


@pytest.mark.parametrize(
    ("state", "reason", "persistent", "destroyed"),
    [
        (3, 2, False, True),  # paused for the migration, transient: libvirt's incoming copy
        (3, 11, False, True),  # still starting up for it
        (3, 1, False, False),  # paused by a user
        (1, 1, False, False),  # running
        (3, 2, True, False),  # persistent: more than an incoming copy
    ],
)
async def test_destroy_incoming_destroys_only_libvirts_unfinished_incoming_copy(
    monkeypatch, state, reason, persistent, destroyed
):
    dom = IncomingDomain(state, reason, persistent)
    h = LibvirtHypervisor("test:///default", 5)
    monkeypatch.setattr(h, "_connection", lambda: OneDomainConnection(dom))
    try:
        if destroyed:
            assert await h.destroy_incoming("5b1f0e4c-0000-4000-8000-000000000001") is True
        else:
            with pytest.raises(FailedPrecondition) as exc:
                await h.destroy_incoming("5b1f0e4c-0000-4000-8000-000000000001")
            assert exc.value.reason == "NOT_INCOMING" and "left alone" in exc.value.message
    finally:
        h.close()
    assert dom.destroyed == int(destroyed)


class StuckDomain(IncomingDomain):
    """libvirt's incoming copy whose job lock libvirtd holds for good: destroy waits, then fails."""

    def destroy(self) -> int:
        self.destroyed += 1
        err = libvirt.libvirtError("Timed out during operation: cannot acquire state change lock")
        err.err = (le.VIR_ERR_OPERATION_TIMEOUT, 10, err.args[0], 2, "", None, None, 0, 0)
        raise err


async def test_an_incoming_copy_libvirtd_cannot_destroy_is_named_with_what_to_do(monkeypatch):
    """Seen in a chaos trial (libvirt 9.0, a libvirtd killed while it started the copy's QEMU):
    the agent waits longer than libvirt's 30 s for the job lock, so libvirt's own answer comes
    back, as INCOMING_COPY_STUCK with the way out, not as a hung libvirtd."""
    dom = StuckDomain(3, 2, False)
    h = LibvirtHypervisor("test:///default", 5)
    monkeypatch.setattr(h, "_connection", lambda: OneDomainConnection(dom))
    waited: list[float] = []
    in_thread = h._in_thread

    async def timed(fn, timeout):  # type: ignore[no-untyped-def]
        waited.append(timeout)
        return await in_thread(fn, timeout)

    monkeypatch.setattr(h, "_in_thread", timed)
    try:
        with pytest.raises(FailedPrecondition) as exc:
            await h.destroy_incoming("5b1f0e4c-0000-4000-8000-000000000001")
    finally:
        h.close()
    assert exc.value.reason == "INCOMING_COPY_STUCK" and "cannot acquire state change lock" in exc.value.message
    assert "stop libvirtd" in exc.value.hint and dom.destroyed == 1
    assert waited == [LIBVIRT_JOB_WAIT_S + 10.0]


async def test_destroy_incoming_of_a_domain_that_is_not_there_does_nothing(test_driver):
    assert await test_driver.destroy_incoming("5b1f0e4c-0000-4000-8000-0000000000ff") is False
    [dom] = await test_driver.list_domains()
    with pytest.raises(FailedPrecondition) as exc:  # running and persistent: left alone
        await test_driver.destroy_incoming(dom.uuid)
    assert exc.value.reason == "NOT_INCOMING"
    assert (await test_driver.get_domain(dom.uuid)).state is DomainState.RUNNING


async def test_the_hosts_capabilities_are_read_once_per_connection_and_age(test_driver, monkeypatch):
    """An inventory does not wait for libvirtd's capabilities each time: while libvirtd probes an
    emulator it has not seen (4 s on the lab), virConnectGetCapabilities and GetVersion wait too,
    and the host looked down. They are kept per connection, for STATIC_MAX_AGE_S."""
    import libvirt

    from ferry.agent import libvirt_hypervisor

    calls: list[str] = []
    real = libvirt.virConnect.getCapabilities

    def counted(conn: libvirt.virConnect) -> str:
        calls.append("caps")
        return real(conn)

    monkeypatch.setattr(libvirt.virConnect, "getCapabilities", counted)
    first = await test_driver.host_facts()
    assert await test_driver.host_facts() == first and calls == ["caps"]
    test_driver._forget(test_driver._conn)  # a new connection (libvirtd restarted) reads them again
    await test_driver.host_facts()
    assert calls == ["caps"] * 2
    monkeypatch.setattr(libvirt_hypervisor, "STATIC_MAX_AGE_S", 0.0)
    await test_driver.host_facts()
    assert calls == ["caps"] * 3

"""PrepareIncoming / CleanupIncoming / CommitIncoming on a fake host and a stub hypervisor."""

import asyncio
import json
import shutil
import subprocess
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry.agent.hostsystem import LocalHostSystem
from ferry.agent.prepare import PrepareService
from ferry.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound, ResourceExhausted
from ferry.model import DiskPlan, DomainInfo, DomainState, HostFacts, HostMapping, JobStats, StorageMode
from ferry.testing.fake_hostsystem import FakeHostSystem

GiB = 1 << 30
IMG = "/var/lib/libvirt/images"
UUID = "6f1c1c1e-7d7a-4c1e-9a57-2d6b2b0e0a01"
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

XML = f"""<domain type='qemu'>
  <name>web1</name>
  <uuid>{UUID}</uuid>
  <memory unit='MiB'>256</memory>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='{IMG}/web1.qcow2'/>
      <backingStore type='file'>
        <format type='raw'/>
        <source file='{IMG}/base/debian.raw'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='{IMG}/web1-data.raw'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br-guest'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"""

VDA = DiskPlan(target="vda", source=f"{IMG}/web1.qcow2", format="qcow2", virtual_size=10 * GiB, allocation=4 * GiB)
VDB = DiskPlan(target="vdb", source=f"{IMG}/web1-data.raw", format="raw", virtual_size=8 * GiB)
MAP = HostMapping(bridges={"br-guest": "br-vm"})


def other_domain(name, uuid):
    return XML.replace("<name>web1</name>", f"<name>{name}</name>").replace(UUID, uuid).replace("web1", name)


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.now += timedelta(seconds=seconds)


class StubHypervisor:
    """Only what PrepareService calls: find_domain, job_stats, host_facts."""

    def __init__(self, networks=("default",)):
        self.domains: dict[str, DomainInfo] = {}
        self.networks = tuple(networks)
        self.job = lambda uuid: JobStats()

    def add(self, name, uuid, state=DomainState.RUNNING):
        self.domains[uuid] = DomainInfo(name=name, uuid=uuid, state=state)

    async def find_domain(self, *, name="", uuid=""):
        return next((d for d in self.domains.values() if (name and d.name == name) or (uuid and d.uuid == uuid)), None)

    async def job_stats(self, name_or_uuid, *, completed=False):
        if name_or_uuid not in self.domains:
            raise NotFound(f"no domain {name_or_uuid}", reason="DOMAIN_NOT_FOUND")
        return self.job(name_or_uuid)

    async def host_facts(self):
        return HostFacts(hostname="host2", host_uuid="h2", networks=self.networks)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def hv():
    return StubHypervisor()


@pytest.fixture
def host():
    return FakeHostSystem(
        bridges=["br-vm"],
        dirs={IMG: 40 * GiB, "/srv/fast": 100 * GiB, "/ro": 10 * GiB, "/shared": 500 * GiB},
        read_only_dirs=["/ro"],
        shared_dirs=["/shared"],
        files={f"{IMG}/base/debian.raw": 2 * GiB},
    )


def service(hv, host, state_dir, clock):
    return PrepareService(hv, host, state_dir, default_ttl_s=600, clock=clock, host_name="host2", sleep=clock.sleep)


@pytest.fixture
def svc(hv, host, tmp_path, clock):
    return service(hv, host, tmp_path, clock)


async def prep(svc, xml=XML, disks=(VDA, VDB), mapping=MAP, storage=StorageMode.COPY_ALL, dry_run=False, ttl_s=0):
    return await svc.prepare(xml, list(disks), mapping, storage, ttl_s, "m-1", dry_run)


# ------------------------------------------------------------------ dry run and checks


async def test_dry_run_of_a_ready_target_creates_nothing(svc, host, tmp_path):
    out = await prep(svc, dry_run=True)
    assert out.problems == ()
    assert out.prepare_id == "" and out.created == () and out.expires_at is None
    assert "br-vm" in out.destination_xml and "br-guest" not in out.destination_xml
    assert [d.destination for d in out.disks] == [f"{IMG}/web1.qcow2", f"{IMG}/web1-data.raw"]
    assert host.created == [] and svc.list() == []


async def test_dry_run_lists_every_problem_at_once(svc, hv, tmp_path, clock):
    host = FakeHostSystem(bridges=["br-vm"], dirs={IMG: 5 * GiB}, files={f"{IMG}/web1.qcow2": 1 * GiB})
    svc = service(hv, host, tmp_path, clock)
    out = await prep(svc, mapping=HostMapping(), dry_run=True)
    by_reason = {p.reason: p for p in out.problems}
    assert list(by_reason) == ["BRIDGE_MISSING", "FILE_IN_THE_WAY", "INSUFFICIENT_SPACE"]
    assert by_reason["BRIDGE_MISSING"].kind is FailedPrecondition
    assert by_reason["BRIDGE_MISSING"].hint == "host2 has bridges br-vm; map it: --map-bridge br-guest=br-vm"
    assert by_reason["FILE_IN_THE_WAY"].kind is AlreadyExists
    assert f"{IMG}/web1.qcow2" in by_reason["FILE_IN_THE_WAY"].message
    space = by_reason["INSUFFICIENT_SPACE"]
    assert space.kind is ResourceExhausted
    # vda's chain flattened into one image (--copy-storage-all): its 10 GiB, not the top layer's 4; + 8 GiB raw
    assert "need 18.0 GiB" in space.message and "5.0 GiB free" in space.message
    assert host.created == [] and svc.list() == []


async def test_refusal_raises_the_first_problem_listing_all_and_creates_nothing(svc, hv, tmp_path, clock):
    host = FakeHostSystem(bridges=["br-vm"], dirs={IMG: 5 * GiB}, files={f"{IMG}/web1.qcow2": 1 * GiB})
    svc = service(hv, host, tmp_path, clock)
    with pytest.raises(FailedPrecondition) as err:
        await prep(svc, mapping=HostMapping())
    assert err.value.reason == "BRIDGE_MISSING"
    assert "3 problems" in err.value.message and f"{IMG}/web1.qcow2" in err.value.message
    assert "--map-bridge br-guest=br-vm" in err.value.hint
    assert host.created == [] and svc.list() == []
    assert list((tmp_path / "prepares").iterdir()) == []


@pytest.mark.parametrize(
    ("case", "kwargs", "reason", "error"),
    [
        ("domain exists", {}, "DOMAIN_EXISTS", AlreadyExists),
        (
            "network missing",
            {
                "xml": XML.replace("<interface type='bridge'>", "<interface type='network'>").replace(
                    "<source bridge='br-guest'/>", "<source network='guests'/>"
                )
            },
            "NETWORK_MISSING",
            FailedPrecondition,
        ),
        (
            "read-only directory",
            {"mapping": HostMapping(bridges={"br-guest": "br-vm"}, path_prefixes={IMG: "/ro"})},
            "PATH_NOT_WRITABLE",
            FailedPrecondition,
        ),
        (
            "backing file missing",
            {
                "storage": StorageMode.COPY_INC,
                "mapping": HostMapping(bridges={"br-guest": "br-vm"}, path_prefixes={IMG: "/srv/fast"}),
            },
            "BACKING_MISSING",
            FailedPrecondition,
        ),
        (
            "shared disk missing",
            {"storage": StorageMode.SHARED, "disks": [DiskPlan(target="vda", source=f"{IMG}/web1.qcow2", copy=False)]},
            "SHARED_DISK_MISSING",
            FailedPrecondition,
        ),
        ("invalid xml", {"xml": "<domain><name>web1"}, "INVALID_XML", InvalidArgument),
        (
            "size unknown",
            {"disks": [DiskPlan(target="vda", source=f"{IMG}/web1.qcow2")]},
            "DISK_SIZE_UNKNOWN",
            InvalidArgument,
        ),
        (
            "plan for a disk the domain lacks",
            {"disks": [DiskPlan(target="vdq", source="/x", virtual_size=GiB)]},
            "DISK_NOT_IN_DOMAIN",
            InvalidArgument,
        ),
        ("copy with shared storage", {"storage": StorageMode.SHARED}, "COPY_WITH_SHARED_STORAGE", InvalidArgument),
        (
            "shared disk on local storage here",
            {
                "storage": StorageMode.SHARED,
                "disks": [
                    DiskPlan(
                        target="vdb", source=f"{IMG}/web1-data.raw", destination=f"{IMG}/base/debian.raw", copy=False
                    )
                ],
            },
            "DISK_NOT_SHARED",
            FailedPrecondition,
        ),
    ],
)
async def test_each_problem(svc, hv, case, kwargs, reason, error):
    if case == "domain exists":
        hv.add("web1-old", UUID, DomainState.SHUTOFF)
    out = await prep(svc, dry_run=True, **kwargs)
    assert [p.reason for p in out.problems][:1] == [reason]
    assert out.problems[0].kind is error
    assert out.problems[0].hint  # always says what to do
    with pytest.raises(error) as err:
        await prep(svc, **kwargs)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("name", "state", "problems"),
    [
        ("web1", DomainState.SHUTOFF, []),  # its own inactive definition: libvirt replaces it
        ("web1", DomainState.RUNNING, ["DOMAIN_EXISTS"]),
        ("web1-old", DomainState.SHUTOFF, ["DOMAIN_EXISTS"]),
    ],
)
async def test_domain_already_here(svc, hv, name, state, problems):
    hv.add(name, UUID, state)
    out = await prep(svc, dry_run=True)
    assert [p.reason for p in out.problems] == problems


async def test_shared_and_read_only_disks_expected_in_place(svc, host):
    host.files["/shared/web1-data.raw"] = 8 * GiB
    host.files["/var/lib/libvirt/images/web1.qcow2"] = GiB  # read-only here: a local copy is fine
    xml = XML.replace("<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/><readonly/>")
    plans = [
        DiskPlan(target="vda", source=f"{IMG}/web1.qcow2", copy=False),
        DiskPlan(target="vdb", source=f"{IMG}/web1-data.raw", destination="/shared/web1-data.raw", copy=False),
    ]
    out = await prep(svc, xml=xml, disks=plans, storage=StorageMode.SHARED, dry_run=True)
    assert out.problems == ()
    assert "/shared/web1-data.raw" in out.destination_xml


async def test_network_mapped_to_one_that_exists_is_fine(svc):
    xml = XML.replace("<interface type='bridge'>", "<interface type='network'>").replace(
        "<source bridge='br-guest'/>", "<source network='guests'/>"
    )
    out = await prep(svc, xml=xml, mapping=HostMapping(networks={"guests": "default"}), dry_run=True)
    assert out.problems == ()
    assert '<source network="default" />' in out.destination_xml


async def test_a_second_prepare_of_the_same_domain_is_refused(svc):
    first = await prep(svc)
    out = await prep(
        svc, mapping=HostMapping(bridges={"br-guest": "br-vm"}, path_prefixes={IMG: "/srv/fast"}), dry_run=True
    )
    assert [p.reason for p in out.problems] == ["PREPARE_EXISTS"]
    assert first.prepare_id in out.problems[0].hint


async def test_space_promised_to_another_prepare_counts(svc, host):
    await prep(svc)  # 12 GiB promised out of 40
    xml2 = other_domain("web2", "11111111-2222-3333-4444-555555555555")
    big = [DiskPlan(target="vda", source=f"{IMG}/web2.qcow2", format="qcow2", virtual_size=30 * GiB)]
    out = await prep(svc, xml=xml2, disks=big, dry_run=True)
    assert [p.reason for p in out.problems] == ["INSUFFICIENT_SPACE"]
    assert "promised to other incoming migrations" in out.problems[0].message


# ------------------------------------------------------------------ prepare


async def test_prepare_creates_exactly_the_planned_images_and_a_record(svc, host, clock):
    host.files[f"{IMG}/unrelated.qcow2"] = GiB
    shared = DiskPlan(target="vdb", source=f"{IMG}/web1-data.raw", destination="/shared/web1-data.raw", copy=False)
    host.files["/shared/web1-data.raw"] = 8 * GiB  # the shared disk is visible here
    out = await prep(svc, disks=[VDA, shared], ttl_s=120)
    assert out.created == (f"{IMG}/web1.qcow2",)
    assert host.created == [f"{IMG}/web1.qcow2"]
    image = host.files[f"{IMG}/web1.qcow2"]
    assert (image.fmt, image.virtual_size, image.backing_file) == ("qcow2", 10 * GiB, "")  # source's size
    assert out.expires_at == T0 + timedelta(seconds=120)
    [record] = svc.list()
    assert (record.prepare_id, record.domain_name, record.domain_uuid) == (out.prepare_id, "web1", UUID)
    assert record.created == out.created and record.migration_id == "m-1"
    assert record.created_at == T0


async def test_default_ttl_and_path_mapping(svc, host):
    out = await prep(svc, mapping=HostMapping(bridges={"br-guest": "br-vm"}, path_prefixes={IMG: "/srv/fast"}))
    assert out.expires_at == T0 + timedelta(seconds=600)
    assert out.created == ("/srv/fast/web1.qcow2", "/srv/fast/web1-data.raw")
    assert host.files["/srv/fast/web1-data.raw"].fmt == "raw"
    assert '<source file="/srv/fast/web1.qcow2" />' in out.destination_xml


async def test_copy_inc_creates_the_top_layer_over_the_mapped_backing_file(svc, host):
    host.files["/srv/fast/base/debian.raw"] = 2 * GiB
    out = await prep(
        svc,
        disks=[VDA],
        storage=StorageMode.COPY_INC,
        mapping=HostMapping(bridges={"br-guest": "br-vm"}, path_prefixes={IMG: "/srv/fast"}),
    )
    image = host.files["/srv/fast/web1.qcow2"]
    assert (image.backing_file, image.backing_format) == ("/srv/fast/base/debian.raw", "raw")
    assert out.disks[0].backing_file == "/srv/fast/base/debian.raw"
    assert "/srv/fast/base/debian.raw" in out.destination_xml


async def test_the_record_names_each_image_before_it_is_created(hv, tmp_path, clock):
    seen = []

    class Watching(FakeHostSystem):
        def create_image(self, path, **kw):
            [doc] = [json.loads(p.read_text()) for p in (tmp_path / "prepares").glob("*.json")]
            seen.append((path, path in doc["created"]))
            super().create_image(path, **kw)

    host = Watching(bridges=["br-vm"], dirs={IMG: 40 * GiB})
    await prep(service(hv, host, tmp_path, clock))
    assert seen == [(f"{IMG}/web1.qcow2", True), (f"{IMG}/web1-data.raw", True)]


async def test_the_records_are_written_off_the_event_loop(svc, hv, monkeypatch):
    """Each write fsyncs: on a disk busy with a copy migration that takes long, and the agent's
    loop must keep streaming progress and renewing its registration meanwhile."""
    loop_thread = threading.get_ident()
    threads: list[tuple[str, bool]] = []
    store = svc._store
    for name in ("save", "delete"):
        real = getattr(store, name)

        def spy(*args, _real=real, _name=name):
            threads.append((_name, threading.get_ident() == loop_thread))
            return _real(*args)

        monkeypatch.setattr(store, name, spy)
    out = await prep(svc)
    await svc.cleanup(out.prepare_id)
    again = await prep(svc)
    hv.add("web1", UUID, DomainState.RUNNING)
    await svc.commit(again.prepare_id, require_landed=True)
    assert {n for n, _ in threads} == {"save", "delete"}
    assert [n for n, on_loop in threads if on_loop] == []


async def test_a_failure_midway_removes_what_was_created(svc, host, tmp_path):
    host.fail_create[f"{IMG}/web1-data.raw"] = Internal("qemu-img could not create", reason="QEMU_IMG_FAILED")
    with pytest.raises(Internal):
        await prep(svc)
    assert host.created == [f"{IMG}/web1.qcow2"] and host.removed == [f"{IMG}/web1.qcow2"]
    assert f"{IMG}/web1.qcow2" not in host.files
    assert svc.list() == [] and list((tmp_path / "prepares").iterdir()) == []


async def test_a_file_that_appears_midway_is_not_ours_to_remove(svc, host):
    host.fail_create[f"{IMG}/web1-data.raw"] = AlreadyExists("in the way", reason="FILE_IN_THE_WAY")
    with pytest.raises(AlreadyExists):
        await prep(svc)
    assert host.removed == [f"{IMG}/web1.qcow2"]  # only ours


class Gate:
    """Holds a blocking call in its thread (slow or hung storage) until ``opened``."""

    def __init__(self):
        self.entered, self.opened = threading.Event(), threading.Event()

    def hold(self, func):
        def held(*args, **kwargs):
            self.entered.set()
            assert self.opened.wait(5)
            return func(*args, **kwargs)

        return held


async def cancel_when_held(task, gate):
    """Cancel ``task`` while its call is held, twice (the caller's deadline, then the agent
    stopping); the task must still be waiting for the call. Then let the call go on."""
    await asyncio.to_thread(gate.entered.wait, 5)
    for _ in range(2):
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=0.02)
        assert not done, "the prepare ended while its call still runs in a thread"
    gate.opened.set()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("in_the_way", [False, True], ids=["created", "file-in-the-way"])
async def test_a_prepare_cancelled_while_an_image_is_created_waits_for_it_then_undoes(
    svc, host, tmp_path, monkeypatch, in_the_way
):
    """PrepareIncoming's deadline passes while qemu-img creates an image. A thread cannot be
    stopped: the prepare waits for it, then removes the image it made (not undone now, it would be
    left behind with no record) -- or, when another's file turned up in the way, leaves that file."""
    image = f"{IMG}/web1.qcow2"
    gate = Gate()
    monkeypatch.setattr(host, "create_image", gate.hold(host.create_image))
    task = asyncio.create_task(prep(svc, disks=[VDA]))
    await asyncio.to_thread(gate.entered.wait, 5)
    if in_the_way:
        host.files[image] = GiB
    await cancel_when_held(task, gate)
    if in_the_way:
        assert (host.created, host.removed, host.files[image]) == ([], [], GiB)
    else:
        assert host.created == host.removed == [image] and image not in host.files
    assert svc.list() == [] and list((tmp_path / "prepares").iterdir()) == []
    if not in_the_way:  # the prepare's lock is free again
        assert (await prep(svc, disks=[VDA])).created == (image,)


async def test_a_prepare_cancelled_while_its_record_is_written_leaves_no_record(svc, host, tmp_path, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(svc._store, "save", gate.hold(svc._store.save))
    await cancel_when_held(asyncio.create_task(prep(svc)), gate)
    assert svc.list() == [] and list((tmp_path / "prepares").iterdir()) == [] and host.created == []


# ------------------------------------------------------------------ cleanup and commit


async def test_cleanup_removes_exactly_what_prepare_created(svc, host):
    host.files[f"{IMG}/unrelated.qcow2"] = GiB
    out = await prep(svc)
    removed, gone = await svc.cleanup(out.prepare_id)
    assert (sorted(removed), gone) == (sorted(out.created), False)
    assert set(host.files) == {f"{IMG}/unrelated.qcow2", f"{IMG}/base/debian.raw"}
    assert svc.list() == []
    assert await svc.cleanup(out.prepare_id) == ([], True)  # idempotent


async def test_cleanup_of_an_unknown_id_is_already_gone(svc):
    assert await svc.cleanup("0123456789abcdef") == ([], True)


async def test_cleanup_refuses_a_malformed_id(svc):
    with pytest.raises(InvalidArgument) as err:
        await svc.cleanup("../../etc/passwd")
    assert err.value.reason == "INVALID_PREPARE_ID"


async def test_cleanup_refuses_when_the_domain_runs_here(svc, hv, host):
    out = await prep(svc)
    hv.add("web1", UUID, DomainState.RUNNING)  # the migration landed
    with pytest.raises(FailedPrecondition) as err:
        await svc.cleanup(out.prepare_id)
    assert err.value.reason == "DOMAIN_RUNNING_HERE"
    assert "CommitIncoming" in err.value.hint
    assert all(path in host.files for path in out.created)
    assert [r.prepare_id for r in svc.list()] == [out.prepare_id]


async def test_cleanup_waits_for_a_failing_incoming_migration_then_cleans_up(svc, hv, host, clock):
    out = await prep(svc)
    hv.add("web1", UUID, DomainState.PAUSED)  # incoming, not yet running
    calls = []

    def job(uuid):
        calls.append(clock.now)
        if len(calls) == 3:  # the migration fails: libvirt removes the incoming domain
            del hv.domains[uuid]
        return JobStats(active=True, operation="migration in")

    hv.job = job
    removed, gone = await svc.cleanup(out.prepare_id)
    assert sorted(removed) == sorted(out.created) and not gone
    assert len(calls) == 3 and clock.now - T0 < timedelta(seconds=15)


async def test_cleanup_gives_up_waiting_on_a_running_incoming_migration(svc, hv, host, clock):
    out = await prep(svc)
    hv.add("web1", UUID, DomainState.PAUSED)
    hv.job = lambda uuid: JobStats(active=True, operation="migration in")
    with pytest.raises(FailedPrecondition) as err:
        await svc.cleanup(out.prepare_id)
    assert err.value.reason == "DOMAIN_RUNNING_HERE" and "still running" in err.value.hint
    assert timedelta(seconds=15) <= clock.now - T0 <= timedelta(seconds=16)
    assert all(path in host.files for path in out.created)


async def test_cleanup_of_a_defined_but_stopped_domain_goes_ahead(svc, hv, host):
    out = await prep(svc)
    hv.add("web1", UUID, DomainState.SHUTOFF)
    removed, _ = await svc.cleanup(out.prepare_id)
    assert sorted(removed) == sorted(out.created)


async def test_commit_forgets_the_record_and_keeps_the_images(svc, host):
    out = await prep(svc)
    assert await svc.commit(out.prepare_id) is True
    assert svc.list() == []
    assert all(path in host.files for path in out.created)
    assert await svc.commit(out.prepare_id) is False  # idempotent
    assert await svc.cleanup(out.prepare_id) == ([], True)


async def test_a_checked_commit_commits_a_guest_that_landed(svc, hv, host):
    out = await prep(svc)
    hv.add("web1", UUID, DomainState.RUNNING)
    assert await svc.commit(out.prepare_id, require_landed=True) is True
    assert svc.list() == [] and all(path in host.files for path in out.created)
    assert await svc.commit(out.prepare_id, require_landed=True) is False  # gone: nothing checked, idempotent


@pytest.mark.parametrize(
    ("state", "paused_by_libvirt", "job_active", "why"),
    [
        (None, False, False, "is not defined here"),
        (DomainState.SHUTOFF, False, False, "is shutoff here"),
        (DomainState.SHUTDOWN, False, False, "is shutdown here"),
        (DomainState.PAUSED, True, False, "held paused by libvirt"),
        (DomainState.RUNNING, False, True, "still runs a job here"),
    ],
)
async def test_a_checked_commit_keeps_the_prepare_of_a_guest_that_did_not_land(
    svc, hv, host, state, paused_by_libvirt, job_active, why
):
    out = await prep(svc)
    if state is not None:
        hv.domains[UUID] = DomainInfo(name="web1", uuid=UUID, state=state, paused_by_libvirt=paused_by_libvirt)
    hv.job = lambda uuid: JobStats(active=job_active, operation="migration in" if job_active else "")
    with pytest.raises(FailedPrecondition) as err:
        await svc.commit(out.prepare_id, require_landed=True)
    assert err.value.reason == "NOT_LANDED" and why in err.value.message, err.value.message
    assert out.prepare_id in err.value.message
    assert [r.prepare_id for r in svc.list()] == [out.prepare_id]
    assert all(path in host.files for path in out.created)


# ------------------------------------------------------------------ expiry and restarts


async def test_sweep_cleans_expired_commits_landed_and_leaves_fresh(svc, hv, host, clock):
    lost = await prep(svc, ttl_s=60)
    landed = await prep(
        svc,
        xml=other_domain("web2", "22222222-2222-2222-2222-222222222222"),
        disks=[DiskPlan(target="vda", source=f"{IMG}/web2.qcow2", format="qcow2", virtual_size=GiB)],
        ttl_s=60,
    )
    fresh = await prep(
        svc,
        xml=other_domain("web3", "33333333-3333-3333-3333-333333333333"),
        disks=[DiskPlan(target="vda", source=f"{IMG}/web3.qcow2", format="qcow2", virtual_size=GiB)],
        ttl_s=3600,
    )
    hv.add("web2", "22222222-2222-2222-2222-222222222222", DomainState.RUNNING)
    assert await svc.sweep() == []  # nothing expired yet
    clock.now += timedelta(seconds=61)
    outcomes = await svc.sweep()
    assert sorted(outcomes) == sorted(
        [
            f"{lost.prepare_id}: cleaned up, removed 2 file(s) of web1",
            f"{landed.prepare_id}: committed, web2 is defined here",
        ]
    )
    assert [r.prepare_id for r in svc.list()] == [fresh.prepare_id]
    assert not any(p in host.files for p in lost.created)
    assert all(p in host.files for p in landed.created + fresh.created)


async def test_sweep_keeps_a_prepare_whose_migration_is_still_coming_in(svc, hv, clock):
    out = await prep(svc, ttl_s=60)
    hv.add("web1", UUID, DomainState.PAUSED)
    hv.job = lambda uuid: JobStats(active=True, operation="migration in")
    clock.now += timedelta(seconds=61)
    assert await svc.sweep() == [f"{out.prepare_id}: kept, an incoming migration of web1 is still running"]
    assert [r.prepare_id for r in svc.list()] == [out.prepare_id]


async def test_a_prepare_committed_without_its_domain_is_kept_from_the_sweep(svc, host, clock):
    """What the coordinator's KeepTarget relies on: a failure for an operator whose target may hold
    the guest's newest disks (a post-copy broken after its switch-over) but no domain, commits the
    prepare (no landing check); its images are then left for the operator, never swept. Without the
    commit the sweep removes them once the prepare expires (``test_a_record_survives_...``)."""
    out = await prep(svc, ttl_s=600)
    assert await svc.commit(out.prepare_id)  # web1 is not defined here
    assert svc.list() == [] and all(p in host.files for p in out.created)
    clock.now += timedelta(seconds=601)
    assert await svc.sweep() == []
    assert all(p in host.files for p in out.created)


async def test_a_record_survives_an_agent_restart(hv, host, tmp_path, clock):
    out = await prep(service(hv, host, tmp_path, clock))
    again = service(hv, host, tmp_path, clock)  # a new agent process, same state_dir
    [record] = again.list()
    assert (record.prepare_id, record.created, record.expires_at) == (out.prepare_id, out.created, out.expires_at)
    clock.now += timedelta(seconds=601)
    assert await again.sweep() == [f"{out.prepare_id}: cleaned up, removed 2 file(s) of web1"]
    assert not any(p in host.files for p in out.created)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
async def test_real_images_on_a_real_host_system(hv, tmp_path, clock):
    images = tmp_path / "images"
    net = tmp_path / "sys" / "class" / "net" / "br-vm" / "bridge"
    net.mkdir(parents=True)
    host = LocalHostSystem([str(images)], sysfs_root=str(tmp_path / "sys"))
    svc = service(hv, host, tmp_path / "state", clock)
    mapping = HostMapping(bridges={"br-guest": "br-vm"}, path_prefixes={IMG: str(images)})
    out = await prep(svc, disks=[replace(VDA, virtual_size=GiB), replace(VDB, virtual_size=GiB // 2)], mapping=mapping)
    infos = [
        json.loads(
            subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True, text=True
            ).stdout
        )
        for path in out.created
    ]
    assert [(i["format"], i["virtual-size"]) for i in infos] == [("qcow2", GiB), ("raw", GiB // 2)]
    removed, _ = await svc.cleanup(out.prepare_id)
    assert sorted(removed) == sorted(out.created)
    assert list(images.rglob("*.*")) == []


# ------------------------------------------------------------------ shared-storage probes

PROBE = ".ferry-probe-00112233445566778899aabbccddeeff"
IN_PLACE = DiskPlan(target="vdb", source=f"{IMG}/web1-data.raw", destination="/shared/web1-data.raw", copy=False)


@pytest.mark.parametrize(
    ("probe_here", "probes", "reasons"),
    [
        (False, [f"{IMG}/{PROBE}"], ["SHARED_STORAGE_MISMATCH"]),  # the disk's file here is another one
        (True, [f"{IMG}/{PROBE}"], []),  # the source's probe shows up next to it: the same storage
        (False, [], []),  # no probe sent (an older coordinator): not checked
        (False, [f"/elsewhere/{PROBE}"], []),  # a probe of another directory says nothing of this disk
    ],
)
async def test_a_disk_left_in_place_must_show_the_sources_probe(svc, host, probe_here, probes, reasons):
    host.files["/shared/web1-data.raw"] = 8 * GiB  # a file at the disk's (mapped) path, on shared storage
    if probe_here:
        host.files[f"/shared/{PROBE}"] = 0
    mapping = HostMapping(bridges={"br-guest": "br-vm"}, path_prefixes={IMG: "/shared"})
    out = await svc.prepare(XML, [VDA, IN_PLACE], mapping, StorageMode.COPY_ALL, 0, "m-1", True, shared_probes=probes)
    assert [p.reason for p in out.problems] == reasons
    if reasons:
        message, hint = out.problems[0].message, out.problems[0].hint
        assert "/shared (mapped from /var/lib/libvirt/images)" in message and "on host2" in message
        assert "--map-path /var/lib/libvirt/images=DIR" in hint and "--copy-storage-all" in hint
        with pytest.raises(FailedPrecondition) as err:
            await svc.prepare(
                XML, [VDA, IN_PLACE], mapping, StorageMode.COPY_ALL, 0, "m-1", False, shared_probes=probes
            )
        assert err.value.reason == "SHARED_STORAGE_MISMATCH"


async def test_a_read_only_disk_left_in_place_may_be_a_copy_of_its_own(svc, host):
    """An installation ISO on each host is a copy per host, rightly: only writable disks must be the
    source's very file."""
    xml = XML.replace("<target dev='vdb' bus='virtio'/>", "<target dev='vdb' bus='virtio'/><readonly/>")
    host.files["/shared/web1-data.raw"] = 8 * GiB
    out = await svc.prepare(
        xml,
        [VDA, IN_PLACE],
        HostMapping(bridges={"br-guest": "br-vm"}, path_prefixes={IMG: "/shared"}),
        StorageMode.COPY_ALL,
        0,
        "m-1",
        True,
        shared_probes=[f"{IMG}/{PROBE}"],
    )
    assert out.problems == ()


async def test_a_missing_cdrom_image_asks_for_a_copy_or_an_eject_not_for_copy_storage(svc):
    """libvirt never copies a read-only disk, --copy-storage-all or not: the fix is the ISO itself."""
    xml = XML.replace(
        "</devices>",
        f"<disk type='file' device='cdrom'><source file='{IMG}/install.iso'/><target dev='sda' bus='sata'/>"
        "<readonly/></disk></devices>",
    )
    cdrom = DiskPlan(target="sda", source=f"{IMG}/install.iso", copy=False)
    out = await prep(svc, xml=xml, disks=(VDA, VDB, cdrom), dry_run=True)
    [p] = out.problems
    assert p.reason == "SHARED_DISK_MISSING"
    assert p.message == (
        f"disk sda (a read-only cdrom: libvirt never copies it) needs {IMG}/install.iso on host2, but nothing is there"
    )
    assert "each host needs its own copy" in p.hint and "virsh change-media web1 sda --eject" in p.hint
    assert "--copy-storage-all" not in p.hint


@pytest.mark.parametrize(
    ("sent", "here", "reasons"),
    [
        ("fp-of-debian-12.1", "fp-of-debian-12.1", []),  # the same base image: only the top layer moves
        ("fp-of-debian-12.1", "fp-of-debian-12.4", ["BACKING_MISMATCH"]),  # another image under that name
        ("", "fp-of-debian-12.4", []),  # no fingerprint sent (an older coordinator): not compared
    ],
)
async def test_copy_inc_compares_the_backing_file_with_the_sources(svc, host, sent, here, reasons):
    host.files["/srv/fast/base/debian.raw"] = 2 * GiB
    host.fingerprints["/srv/fast/base/debian.raw"] = here
    kwargs = {
        "disks": [replace(VDA, backing_fingerprint=sent)],
        "storage": StorageMode.COPY_INC,
        "mapping": HostMapping(bridges={"br-guest": "br-vm"}, path_prefixes={IMG: "/srv/fast"}),
    }
    out = await prep(svc, dry_run=True, **kwargs)
    assert [p.reason for p in out.problems] == reasons
    if reasons:
        [p] = out.problems
        assert "/srv/fast/base/debian.raw on host2 is another image than the source's" in p.message
        assert "byte for byte" in p.hint and "--copy-storage-all" in p.hint
        with pytest.raises(FailedPrecondition):
            await prep(svc, **kwargs)
        assert "/srv/fast/web1.qcow2" not in host.files  # nothing created


SWAP = "/dev/vg0/web1-swap"
XML_BLOCK = XML.replace(
    "</devices>",
    f"<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/><source dev='{SWAP}'/>"
    "<target dev='vdc' bus='virtio'/></disk></devices>",
)


@pytest.mark.parametrize(
    ("here", "sent", "reasons"),
    [
        (None, "dm:LVM-aaa", ["BLOCK_DEVICE_MISSING"]),  # no such device here
        ("dm:LVM-bbb", "dm:LVM-aaa", ["BLOCK_DEVICE_MISMATCH"]),  # a local LV of the same name
        ("", "dm:LVM-aaa", ["BLOCK_DEVICE_MISMATCH"]),  # a device here, of no known identity
        ("dm:LVM-aaa", "dm:LVM-aaa", []),  # the same (shared) device
        ("", "", []),  # the source knows no identity (the coordinator decides): present is all that is checked
    ],
)
async def test_a_block_device_must_be_the_same_device_here(svc, host, here, sent, reasons):
    if here is not None:
        host.block_devices[SWAP] = here
    out = await svc.prepare(
        XML_BLOCK, [VDA, VDB], MAP, StorageMode.COPY_ALL, 0, "m-1", True, block_devices={SWAP: sent}
    )
    assert [p.reason for p in out.problems] == reasons
    if reasons:
        [p] = out.problems
        assert f"{SWAP}" in p.message and "never copies a block device" in p.hint
    if reasons == ["BLOCK_DEVICE_MISMATCH"]:
        assert "dm:LVM-aaa" in out.problems[0].message

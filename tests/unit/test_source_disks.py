"""RemoveSourceDisks on a fake host: what may be removed, what is refused, idempotency."""

import asyncio
import doctest
import threading
from datetime import UTC, datetime

import pytest

from ferry.agent import source_disks as sd
from ferry.agent.source_disks import SourceDisks, in_use, invalid_paths
from ferry.agent.source_records import Outcome, SourceRecord, SourceRecords
from ferry.errors import FailedPrecondition, InvalidArgument
from ferry.model import Disk, DomainInfo, DomainState, PrepareRecord, StorageDir
from ferry.paths import not_local
from ferry.testing.fake_hostsystem import FakeHostSystem
from ferry.testing.fake_hypervisor import FakeHypervisor, make_domain_xml

IMG = "/var/lib/libvirt/images"
NFS = "/mnt/nfs"
UUID = "11111111-2222-4333-8444-555555555555"
T0 = datetime(2026, 11, 25, tzinfo=UTC)


def test_docstring_examples():
    assert doctest.testmod(sd).failed == 0


@pytest.mark.parametrize(
    ("paths", "bad"),
    [
        ([f"{IMG}/g1.qcow2"], []),
        (
            [f"{IMG}/../../../etc/shadow", "g1.qcow2", f"{IMG}//g1.qcow2", f"{IMG}/./g1.qcow2", ""],
            [f"{IMG}/../../../etc/shadow", "g1.qcow2", f"{IMG}//g1.qcow2", f"{IMG}/./g1.qcow2", ""],
        ),
    ],
)
def test_invalid_paths(paths, bad):
    assert invalid_paths(paths) == bad


DIRS = [StorageDir(IMG, 0, 0), StorageDir(NFS, 0, 0, shared=True), StorageDir(f"{IMG}/nfs", 0, 0, shared=True)]


@pytest.mark.parametrize(
    ("path", "local"),
    [
        (f"{IMG}/g1.qcow2", True),
        (f"{IMG}/sub/g1.qcow2", True),
        (f"{IMG}", False),  # the directory itself
        (f"{IMG}-other/g1.qcow2", False),  # a prefix, not the directory
        (f"{NFS}/g1.qcow2", False),  # declared shared
        (f"{IMG}/nfs/g1.qcow2", False),  # a shared directory inside the image directory
        ("/etc/passwd", False),
    ],
)
def test_not_local(path, local):
    assert (not_local([path], DIRS, lambda p: False) == []) is local


def test_a_path_the_host_finds_on_shared_storage_is_not_local():
    assert not_local([f"{IMG}/g1.qcow2"], DIRS, lambda p: True) == [f"{IMG}/g1.qcow2"]


def test_in_use_looks_at_disks_and_backing_chains():
    doms = [
        DomainInfo(
            "a", "ua", DomainState.RUNNING, disks=(Disk("vda", f"{IMG}/a.qcow2", backing_chain=(f"{IMG}/base.raw",)),)
        ),
        DomainInfo("b", "ub", DomainState.SHUTOFF, disks=(Disk("vda", f"{IMG}/b.qcow2"),)),
    ]
    assert in_use([f"{IMG}/base.raw", f"{IMG}/b.qcow2", f"{IMG}/g1.qcow2"], doms) == {
        f"{IMG}/base.raw": "a",
        f"{IMG}/b.qcow2": "b",
    }


# ---------------------------------------------------------------- the service


@pytest.fixture
def host():
    return FakeHostSystem(
        dirs={IMG: 10 << 30, NFS: 10 << 30},
        shared_dirs=[NFS],
        files={
            f"{IMG}/g1-vda.qcow2": 1 << 20,
            f"{IMG}/g1-vdb.qcow2": 1 << 20,
            f"{NFS}/g1-data.raw": 1 << 20,
            f"{IMG}/other.qcow2": 1 << 20,
        },
    )


@pytest.fixture
def hv(host):
    return FakeHypervisor(hostname="host1", host=host)


COPIED = (f"{IMG}/g1-vda.qcow2", f"{IMG}/g1-vdb.qcow2")  # what migration m-1 of g1 copied


@pytest.fixture
def records(tmp_path):
    """This host's records of outgoing migrations: m-1 copied g1's two local disks."""
    r = SourceRecords(tmp_path)
    r.save(SourceRecord("m-1", UUID, "g1", COPIED, T0, Outcome.COMPLETED, T0))
    return r


def service(hv, host, records, prepared=()):
    return SourceDisks(hv, host, host_name="host1", records=records, prepared=lambda: list(prepared), clock=lambda: T0)


async def test_removes_the_local_images_and_is_idempotent(hv, host, records):
    svc = service(hv, host, records)
    done = await svc.remove(UUID, [f"{IMG}/g1-vda.qcow2", f"{IMG}/g1-vdb.qcow2"], migration_id="m-1")
    assert (done.removed, done.already_gone) == ((f"{IMG}/g1-vda.qcow2", f"{IMG}/g1-vdb.qcow2"), ())
    assert not host.exists(f"{IMG}/g1-vda.qcow2") and host.exists(f"{IMG}/other.qcow2")
    again = await svc.remove(UUID, [f"{IMG}/g1-vda.qcow2", f"{IMG}/g1-vdb.qcow2"], migration_id="m-1")
    assert (again.removed, again.already_gone) == ((), (f"{IMG}/g1-vda.qcow2", f"{IMG}/g1-vdb.qcow2"))


@pytest.mark.parametrize("state", [DomainState.RUNNING, DomainState.SHUTOFF])
async def test_refused_while_the_domain_is_here(hv, host, records, state):
    hv.add_domain(make_domain_xml("g1", uuid=UUID, disks=[("vda", f"{IMG}/g1-vda.qcow2", "qcow2")]), state=state)
    with pytest.raises(FailedPrecondition) as exc:
        await service(hv, host, records).remove(UUID, [f"{IMG}/g1-vda.qcow2"], migration_id="m-1")
    assert exc.value.reason == "DOMAIN_STILL_HERE" and "virsh undefine g1" in exc.value.hint
    assert host.exists(f"{IMG}/g1-vda.qcow2")


async def test_shared_storage_and_foreign_paths_are_never_removed(hv, host, records):
    with pytest.raises(InvalidArgument) as exc:
        await service(hv, host, records).remove(
            UUID, [f"{IMG}/g1-vda.qcow2", f"{NFS}/g1-data.raw", "/etc/passwd"], migration_id="m-1"
        )
    err = exc.value
    assert err.reason == "PATH_NOT_LOCAL"
    assert f"{NFS}/g1-data.raw" in err.message and "/etc/passwd" in err.message
    assert IMG in err.hint and "shared storage never is" in err.hint
    assert host.removed == []  # nothing, not even the local one


async def test_a_path_another_domain_uses_is_refused(hv, host, records):
    hv.add_domain(make_domain_xml("other", disks=[("vda", f"{IMG}/other.qcow2", "qcow2")]))
    with pytest.raises(FailedPrecondition) as exc:
        await service(hv, host, records).remove(UUID, [f"{IMG}/other.qcow2"], migration_id="m-1")
    assert exc.value.reason == "DISK_IN_USE" and "by other" in exc.value.message


async def test_an_image_prepared_for_an_incoming_migration_is_refused(hv, host, records):
    record = PrepareRecord("p1", "g1", UUID, (f"{IMG}/g1-vda.qcow2",), T0, T0, "m-2")
    with pytest.raises(FailedPrecondition) as exc:
        await service(hv, host, records, [record]).remove(UUID, [f"{IMG}/g1-vda.qcow2"], migration_id="m-1")
    assert exc.value.reason == "PATH_PREPARED" and "p1" in exc.value.message


@pytest.mark.parametrize(
    ("uuid", "paths", "reason"), [("", [f"{IMG}/a"], "MISSING_FIELD"), (UUID, [f"{IMG}/../etc/passwd"], "PATH_INVALID")]
)
async def test_malformed_requests(hv, host, records, uuid, paths, reason):
    with pytest.raises(InvalidArgument) as exc:
        await service(hv, host, records).remove(uuid, paths)
    assert exc.value.reason == reason


async def test_no_paths_is_nothing_to_do(hv, host, records):
    done = await service(hv, host, records).remove(UUID, [])
    assert (done.removed, done.already_gone) == ((), ())


# ---------------------------------------------------------------- only what this host recorded


@pytest.mark.parametrize(
    ("uuid", "migration_id", "paths", "error", "reason"),
    [
        # a made-up UUID, a migration this host never ran, another domain's migration id
        ("99999999-9999-4999-8999-999999999999", "m-1", COPIED, FailedPrecondition, "MIGRATION_NOT_RECORDED"),
        (UUID, "m-made-up", COPIED, FailedPrecondition, "MIGRATION_NOT_RECORDED"),
        # a path the migration did not copy (an unreferenced template image, say)
        (UUID, "m-1", [f"{IMG}/other.qcow2"], FailedPrecondition, "PATH_NOT_RECORDED"),
        (UUID, "", COPIED, InvalidArgument, "MISSING_FIELD"),
        (UUID, "../m-1", COPIED, InvalidArgument, "BAD_ID"),
    ],
)
async def test_only_disks_this_host_recorded_for_that_migration_are_removed(
    hv, host, records, uuid, migration_id, paths, error, reason
):
    with pytest.raises(error) as exc:
        await service(hv, host, records).remove(uuid, list(paths), migration_id=migration_id)
    assert exc.value.reason == reason and exc.value.hint
    assert host.removed == [] and host.exists(f"{IMG}/other.qcow2") and host.exists(COPIED[0])


async def test_a_migration_the_agent_saw_fail_removes_nothing(hv, host, records):
    records.save(SourceRecord("m-2", UUID, "g1", COPIED, T0, Outcome.FAILED, T0))
    with pytest.raises(FailedPrecondition) as exc:
        await service(hv, host, records).remove(UUID, list(COPIED), migration_id="m-2")
    assert exc.value.reason == "MIGRATION_NOT_COMPLETED" and host.removed == []


async def test_a_migration_whose_end_was_not_seen_removes_once_the_domain_left(hv, host, records):
    """The agent restarted during the job: the record stays RUNNING; the domain gone from this host
    (DOMAIN_STILL_HERE guards the other case) says it left."""
    records.save(SourceRecord("m-3", UUID, "g1", COPIED, T0))
    done = await service(hv, host, records).remove(UUID, list(COPIED), migration_id="m-3")
    assert done.removed == COPIED
    assert records.load("m-3").outcome is Outcome.REMOVED


async def test_a_migrate_records_what_it_copies_and_how_it_ended(hv, host, records):
    svc = service(hv, host, records)
    dom = DomainInfo("g2", "22222222-2222-4222-8222-222222222222", DomainState.RUNNING)
    await svc.migration_started("m-9", dom, [f"{IMG}/g2.qcow2"])
    assert records.load("m-9") == SourceRecord("m-9", dom.uuid, "g2", (f"{IMG}/g2.qcow2",), T0)
    await svc.migration_ended("m-9", completed=False)
    assert records.load("m-9").outcome is Outcome.FAILED
    await svc.migration_started("", dom, [f"{IMG}/g2.qcow2"])  # no migration id: nothing to key it by
    assert records.migration_ids() == ["m-1", "m-9"]


async def test_the_records_are_written_off_the_event_loop(hv, host, records, monkeypatch):
    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    for name in ("save", "ended", "sweep"):
        real = getattr(records, name)

        def spy(*args, _real=real, _name=name):
            if threading.get_ident() == loop_thread:
                on_loop.append(_name)
            return _real(*args)

        monkeypatch.setattr(records, name, spy)
    svc = service(hv, host, records)
    dom = DomainInfo("g2", "22222222-2222-4222-8222-222222222222", DomainState.RUNNING)
    await svc.migration_started("m-9", dom, [f"{IMG}/g2.qcow2"])
    await svc.migration_ended("m-9", completed=True)
    await svc.remove(dom.uuid, [f"{IMG}/g2.qcow2"], migration_id="m-9")
    await svc.sweep()
    assert records.load("m-9").outcome is Outcome.REMOVED and on_loop == []


async def until(predicate, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.002)


@pytest.mark.parametrize(("completed", "outcome"), [(True, Outcome.COMPLETED), (False, Outcome.FAILED)])
async def test_a_job_left_running_is_recorded_when_it_ends(hv, host, records, completed, outcome):
    """The Migrate stopped watching a job that still ran (its caller went away, or an abort did
    not end it): RUNNING -- where the domain is decides a removal -- until the job ends."""
    svc = service(hv, host, records)
    records.save(SourceRecord("m-3", UUID, "g1", COPIED, T0))
    end = asyncio.get_running_loop().create_future()
    svc.migration_left_running("m-3", end)
    await asyncio.sleep(0.01)
    assert records.load("m-3").outcome is Outcome.RUNNING
    end.set_result(completed)
    await until(lambda: records.load("m-3").outcome is outcome)


@pytest.mark.parametrize("removed_first", [True, False])
async def test_a_left_running_job_whose_end_is_unknown_or_came_after_a_removal_changes_nothing(
    hv, host, records, monkeypatch, removed_first
):
    svc = service(hv, host, records)
    records.save(SourceRecord("m-3", UUID, "g1", COPIED, T0))
    settled: list[bool] = []  # what each settling of the record changed
    real = records.settled

    def spy(*args):
        settled.append(real(*args))
        return settled[-1]

    monkeypatch.setattr(records, "settled", spy)
    end = asyncio.get_running_loop().create_future()
    svc.migration_left_running("m-3", end)
    if removed_first:  # the domain had left: its disks were removed before the call returned
        await svc.remove(UUID, list(COPIED), migration_id="m-3")
        end.set_result(True)
        await until(lambda: settled == [False])
        assert records.load("m-3").outcome is Outcome.REMOVED
    else:  # the call was cancelled: nobody knows how the job ended
        end.cancel()
        await asyncio.sleep(0.01)
        assert settled == [] and records.load("m-3").outcome is Outcome.RUNNING

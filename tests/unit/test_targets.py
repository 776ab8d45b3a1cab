"""Where a Migrate may go (``agent/targets.py``): the registered hosts' libvirt URIs (read from the
store's ``hosts/`` registrations), the configured ``migration_targets``, never this host itself;
a QEMU migration URI only to the target's own addresses."""

from __future__ import annotations

import pytest

from ferry import keys
from ferry.agent.targets import MigrationTargets
from ferry.errors import FailedPrecondition, InvalidArgument, Unavailable
from ferry.registry import HostRegistration
from ferry.testing.memory_store import MemoryStore
from ferry.testing.store_reads import ReadLog

HOST2 = HostRegistration("host2", "10.77.0.12:7070", "qemu+tls://host2.dc1/system", "10.1.0.12")


@pytest.fixture
async def store():
    s = MemoryStore()
    for reg in (
        HostRegistration("host1", "10.77.0.11:7070", "qemu+tls://host1.dc1/system", "10.1.0.11"),
        HOST2,
    ):
        await s.create(keys.host_key(reg.name), reg.encode())
    await s.create(keys.host_key("junk"), b"not json")  # an unreadable value is skipped
    yield s
    await s.close()


async def test_a_registered_host_is_a_target(store):
    targets = MigrationTargets("host1", store=store)
    t = await targets.check("qemu+tls://host2.dc1/system")
    assert (t.name, t.migration_address) == ("host2", "10.1.0.12")


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+tls://host1.dc1/system",  # this host itself
        "qemu+tls://host3.dc1/system",  # not registered
        "qemu+tls://host2.dc1/system?socket=/tmp/evil",  # not the registered URI
        "qemu+ssh://root@host2.dc1/system",
    ],
)
async def test_anything_else_is_refused(store, uri):
    with pytest.raises(FailedPrecondition) as exc:
        await MigrationTargets("host1", store=store).check(uri)
    assert exc.value.reason == "TARGET_NOT_REGISTERED" and "host2=qemu+tls://host2.dc1/system" in exc.value.hint


@pytest.mark.parametrize(
    ("migrate_uri", "error", "reason"),
    [
        ("tcp://10.1.0.12", None, ""),
        ("tcp://10.1.0.12:49152", None, ""),
        ("tcp://host2.dc1", None, ""),  # the libvirt URI's host
        ("tcp://10.77.0.99", FailedPrecondition, "MIGRATE_URI_NOT_REGISTERED"),
        ("rdma://10.1.0.12", InvalidArgument, "MIGRATE_URI_INVALID"),
        ("tcp://10.1.0.12:99999", InvalidArgument, "MIGRATE_URI_INVALID"),
        ("10.1.0.12", InvalidArgument, "MIGRATE_URI_INVALID"),
    ],
)
async def test_the_qemu_migration_uri_names_the_targets_own_addresses(store, migrate_uri, error, reason):
    targets = MigrationTargets("host1", store=store)
    if error is None:
        await targets.check(HOST2.libvirt_uri, migrate_uri)
        return
    with pytest.raises(error) as exc:
        await targets.check(HOST2.libvirt_uri, migrate_uri)
    assert exc.value.reason == reason


async def test_configured_targets_without_a_registry():
    targets = MigrationTargets("host1", ["qemu+tcp://10.77.0.12/system"])
    await targets.check("qemu+tcp://10.77.0.12/system", "tcp://10.77.0.12")
    with pytest.raises(FailedPrecondition):
        await MigrationTargets("host1").check("qemu+tcp://10.77.0.12/system")  # none configured: nowhere


async def test_the_last_registrations_read_are_used_while_the_store_is_down(store):
    targets = MigrationTargets("host1", store=store)
    await targets.check(HOST2.libvirt_uri)
    await store.close()
    with pytest.raises(Unavailable):
        await store.list(keys.HOSTS)
    await targets.check(HOST2.libvirt_uri)  # still known


async def test_a_host_that_left_the_registry_is_no_target(store):
    targets = MigrationTargets("host1", store=store)
    await targets.check(HOST2.libvirt_uri)
    await store.delete(keys.host_key("host2"))
    with pytest.raises(FailedPrecondition):
        await targets.check(HOST2.libvirt_uri)


async def test_a_named_target_is_checked_against_its_registration_alone():
    store = ReadLog(MemoryStore())
    await store.create(keys.host_key("host2"), HOST2.encode())
    targets = MigrationTargets("host1", store=store)  # type: ignore[arg-type]
    t = await targets.check(HOST2.libvirt_uri, "tcp://10.1.0.12", host="host2")
    assert (t.name, t.migration_address) == ("host2", "10.1.0.12")
    assert store.reads == ["get hosts/host2"]  # one get, not the whole hosts/ listing


@pytest.mark.parametrize(
    ("uri", "host"),
    [
        ("qemu+tls://host2.dc1/system?socket=/tmp/evil", "host2"),  # not the URI host2 registered
        ("qemu+tls://host1.dc1/system", "host1"),  # this host itself
        ("qemu+tls://host3.dc1/system", "host3"),  # not registered
        ("qemu+tls://host2.dc1/system", "junk"),  # an unreadable registration
        ("qemu+tls://host2.dc1/system", "a/b"),  # not a host name
    ],
)
async def test_a_named_target_that_does_not_match_gets_the_full_check(store, uri, host):
    targets = MigrationTargets("host1", store=store)
    if uri == HOST2.libvirt_uri:  # a wrong name for a registered URI: the full check finds it
        assert (await targets.check(uri, host=host)).name == "host2"
        return
    with pytest.raises(FailedPrecondition) as exc:
        await targets.check(uri, host=host)
    assert exc.value.reason == "TARGET_NOT_REGISTERED" and "host2=qemu+tls://host2.dc1/system" in exc.value.hint


async def test_a_named_target_while_the_store_is_down_uses_the_last_registrations_read(store):
    targets = MigrationTargets("host1", store=store)
    await targets.check(HOST2.libvirt_uri)
    await store.close()
    assert (await targets.check(HOST2.libvirt_uri, host="host2")).name == "host2"

"""The libvirt error table: a libvirt error code (and subsystem) decides type, reason and hint.

Integers on purpose: these tests need neither libvirtd nor, except the last one, the libvirt module.
"""

import pytest

from ferry import errors
from ferry.agent import libvirt_errors as le

RPC, QEMU, REMOTE, STORAGE = 7, 10, 13, 18


@pytest.mark.parametrize(
    ("code", "domain", "err_type", "reason"),
    [
        (42, QEMU, errors.NotFound, "DOMAIN_NOT_FOUND"),  # VIR_ERR_NO_DOMAIN
        (55, QEMU, errors.FailedPrecondition, "DOMAIN_STATE_INVALID"),  # VIR_ERR_OPERATION_INVALID
        (78, QEMU, errors.Aborted, "MIGRATION_ABORTED"),  # VIR_ERR_OPERATION_ABORTED
        (38, RPC, errors.Unavailable, "LIBVIRT_UNREACHABLE"),  # SYSTEM_ERROR from the RPC layer
        (38, REMOTE, errors.Unavailable, "LIBVIRT_UNREACHABLE"),
        (38, STORAGE, errors.Internal, "HOST_SYSTEM_ERROR"),  # SYSTEM_ERROR from elsewhere
        (39, RPC, errors.Unavailable, "LIBVIRT_UNREACHABLE"),  # VIR_ERR_RPC
        (5, 0, errors.Unavailable, "LIBVIRT_UNREACHABLE"),  # VIR_ERR_NO_CONNECT
        (6, 0, errors.Unavailable, "LIBVIRT_UNREACHABLE"),  # VIR_ERR_INVALID_CONN
        (68, QEMU, errors.DeadlineExceeded, "LIBVIRT_BUSY"),  # VIR_ERR_OPERATION_TIMEOUT
        (81, QEMU, errors.FailedPrecondition, "MIGRATION_UNSAFE"),  # VIR_ERR_MIGRATE_UNSAFE
        (91, QEMU, errors.FailedPrecondition, "CPU_INCOMPATIBLE"),
        (49, STORAGE, errors.FailedPrecondition, "TARGET_DISK_MISSING"),  # VIR_ERR_NO_STORAGE_POOL
        (50, STORAGE, errors.FailedPrecondition, "TARGET_DISK_MISSING"),
        (9, QEMU, errors.Internal, "LIBVIRT_OPERATION_FAILED"),
        (1, QEMU, errors.Internal, "LIBVIRT_INTERNAL_ERROR"),
        (1, RPC, errors.Unavailable, "LIBVIRT_UNREACHABLE"),  # "client socket is closed"
        (74, QEMU, errors.InvalidArgument, "ARGUMENT_UNSUPPORTED"),
        (67, QEMU, errors.FailedPrecondition, "CONFIG_UNSUPPORTED"),
        (8, QEMU, errors.InvalidArgument, "INVALID_ARGUMENT"),
        (3, 20, errors.FailedPrecondition, "NOT_SUPPORTED"),
        (84, QEMU, errors.FailedPrecondition, "NOT_SUPPORTED"),
        (28, QEMU, errors.AlreadyExists, "DOMAIN_EXISTS"),
        (43, QEMU, errors.FailedPrecondition, "NETWORK_MISSING"),
        (88, 55, errors.FailedPrecondition, "LIBVIRT_ACCESS_DENIED"),
        (27, 5, errors.InvalidArgument, "DOMAIN_XML_INVALID"),
        (69, QEMU, errors.Internal, "MIGRATION_PERSIST_FAILED"),
        (93, QEMU, errors.Internal, "MIGRATION_FINISH_FAILED"),
        (2, 0, errors.ResourceExhausted, "LIBVIRT_NO_MEMORY"),
        (99, QEMU, errors.NotFound, "DEVICE_NOT_FOUND"),
        (4242, 0, errors.Internal, "LIBVIRT_ERROR"),  # unknown code: still an error
    ],
)
def test_table(code, domain, err_type, reason):
    err = le.translate(
        code,
        domain,
        "libvirt says so",
        call="migrateToURI3",
        host="qemu:///system",
        peer="qemu+tcp://10.77.0.12/system",
    )
    assert type(err) is err_type
    assert err.reason == reason
    assert err.hint and "{" not in err.hint  # every hint is filled in
    assert "libvirt says so" in err.message  # libvirt's own words stay visible
    assert "migrateToURI3" in err.message


def test_message_text_never_decides():
    a = le.translate(9, QEMU, "operation aborted: job 'migration out' canceled by client", call="c", host="h")
    b = le.translate(9, QEMU, "load of migration failed", call="c", host="h")
    assert (type(a), a.reason) == (type(b), b.reason) == (errors.Internal, "LIBVIRT_OPERATION_FAILED")


def test_peer_unreachable_is_the_callers_finding():
    err = le.translate(
        9,
        QEMU,
        "Failed to connect",
        call="migrateToURI3",
        host="qemu:///system",
        peer="qemu+tcp://10.77.0.12/system",
        peer_unreachable=True,
    )
    assert isinstance(err, errors.Unavailable)
    assert err.reason == "TARGET_UNREACHABLE"
    assert "qemu+tcp://10.77.0.12/system" in err.hint


def test_a_link_to_the_peer_lost_during_the_job_names_the_peer_not_our_libvirtd():
    """Seen on the lab: host3 cut off for 15 s during a migration to it; the error said "the
    connection to libvirtd on qemu:///system failed" (ours, which was fine)."""
    err = le.translate(
        1,
        RPC,
        "internal error: client socket is closed",
        call="migrateToURI3",
        host="qemu:///system",
        peer="qemu+tls://10.77.0.13/system",
        peer_link_lost=True,
    )
    assert isinstance(err, errors.Unavailable) and err.reason == "TARGET_CONNECTION_LOST"
    assert err.message == (
        "migrateToURI3 on qemu:///system: the connection to the target's libvirtd (qemu+tls://10.77.0.13/system) "
        "closed during the migration: internal error: client socket is closed"
    )
    assert "network between the hosts" in err.hint and "retry" in err.hint


@pytest.mark.parametrize(
    ("code", "domain", "expected"),
    [
        (38, RPC, True),
        (38, 0, False),
        (1, RPC, True),
        (1, QEMU, False),
        (39, 0, True),
        (5, 0, True),
        (6, 0, True),
        (42, QEMU, False),
        (9, QEMU, False),
    ],
)
def test_is_unreachable(code, domain, expected):
    assert le.is_unreachable(code, domain) is expected


def test_timeout_error_names_call_and_host():
    err = le.timeout_error("abortJob", "qemu:///system", 30)
    assert isinstance(err, errors.DeadlineExceeded)
    assert err.reason == "LIBVIRT_TIMEOUT"
    assert "abortJob" in err.message and "qemu:///system" in err.message


def test_numbers_match_libvirt():
    libvirt = pytest.importorskip("libvirt")
    names = [n for n in dir(le) if n.startswith(("VIR_ERR_", "VIR_FROM_"))]
    assert names
    for name in names:
        assert getattr(le, name) == getattr(libvirt, name), name


def test_a_target_of_the_same_host_uuid_is_the_callers_finding():
    # libvirt: "internal error: Attempt to migrate guest to the same host UUID" (code 1); the
    # adapter asked both libvirtds for their host UUIDs
    words = "internal error: Attempt to migrate guest to the same host 41c94e13"
    plain = le.translate(1, QEMU, words, call="migrateToURI3", host="qemu:///system", peer="qemu+tls://h3/system")
    assert (type(plain), plain.reason) == (errors.Internal, "LIBVIRT_INTERNAL_ERROR")  # words alone decide nothing
    err = le.translate(
        1, QEMU, words, call="migrateToURI3", host="qemu:///system", peer="qemu+tls://h3/system", same_host_uuid=True
    )
    assert (type(err), err.reason) == (errors.FailedPrecondition, "HOST_UUID_SHARED")
    assert words in err.message and "qemu+tls://h3/system" in err.hint and "libvirtd.conf" in err.hint

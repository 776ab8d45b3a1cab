"""The one table from libvirt error codes to Ferry errors.

libvirt reports every failure as a ``libvirtError`` with a numeric code (``virErrorNumber``) and
the subsystem that raised it (``virErrorDomain``). We decide on those numbers only, never on the
message text; libvirt's message is kept inside ours so that operators still see it.

The numbers are libvirt's stable ABI (``include/libvirt/virterror.h``); they are written out here so
that this module and its tests need neither the ``libvirt`` module nor a running libvirtd (only
``libvirt_hypervisor.py`` imports libvirt). tests/unit/test_libvirt_errors.py checks them against
the libvirt module when it is installed.

Both the real adapter and ``FakeHypervisor`` build their errors through ``translate()``, so the
same situation yields the same error type and reason on both.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferry.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FerryError,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

# virErrorNumber (the ones Ferry distinguishes)
VIR_ERR_INTERNAL_ERROR = 1
VIR_ERR_NO_MEMORY = 2
VIR_ERR_NO_SUPPORT = 3
VIR_ERR_NO_CONNECT = 5
VIR_ERR_INVALID_CONN = 6
VIR_ERR_INVALID_ARG = 8
VIR_ERR_OPERATION_FAILED = 9
VIR_ERR_XML_ERROR = 27
VIR_ERR_DOM_EXIST = 28
VIR_ERR_OPERATION_DENIED = 29
VIR_ERR_XML_DETAIL = 35
VIR_ERR_SYSTEM_ERROR = 38
VIR_ERR_RPC = 39
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_NO_NETWORK = 43
VIR_ERR_AUTH_FAILED = 45
VIR_ERR_NO_STORAGE_POOL = 49
VIR_ERR_NO_STORAGE_VOL = 50
VIR_ERR_OPERATION_INVALID = 55
VIR_ERR_CONFIG_UNSUPPORTED = 67
VIR_ERR_OPERATION_TIMEOUT = 68
VIR_ERR_MIGRATE_PERSIST_FAILED = 69
VIR_ERR_HOOK_SCRIPT_FAILED = 70
VIR_ERR_ARGUMENT_UNSUPPORTED = 74
VIR_ERR_OPERATION_ABORTED = 78
VIR_ERR_AUTH_CANCELLED = 79
VIR_ERR_MIGRATE_UNSAFE = 81
VIR_ERR_OPERATION_UNSUPPORTED = 84
VIR_ERR_AGENT_UNRESPONSIVE = 86
VIR_ERR_RESOURCE_BUSY = 87
VIR_ERR_ACCESS_DENIED = 88
VIR_ERR_CPU_INCOMPATIBLE = 91
VIR_ERR_XML_INVALID_SCHEMA = 92
VIR_ERR_MIGRATE_FINISH_OK = 93
VIR_ERR_AUTH_UNAVAILABLE = 94
VIR_ERR_DEVICE_MISSING = 99

# virErrorDomain (where it came from)
VIR_FROM_RPC = 7
VIR_FROM_QEMU = 10
VIR_FROM_REMOTE = 13
VIR_FROM_STREAMS = 38

# A SYSTEM_ERROR from the RPC layer is a broken or refused connection; from elsewhere it is an OS
# error on the host (a file that cannot be opened...). The RPC layer reports a closed client
# socket as an INTERNAL_ERROR: a broken connection too.
_TRANSPORT_DOMAINS = frozenset({VIR_FROM_RPC, VIR_FROM_REMOTE, VIR_FROM_STREAMS})
_UNREACHABLE_CODES = frozenset({VIR_ERR_NO_CONNECT, VIR_ERR_INVALID_CONN, VIR_ERR_RPC})


@dataclass(frozen=True)
class Rule:
    """What one libvirt error code means for Ferry. ``hint`` may use {call}, {host}, {peer}."""

    error: type[FerryError]
    reason: str
    hint: str


_ACCESS = Rule(
    FailedPrecondition,
    "LIBVIRT_ACCESS_DENIED",
    "the agent may not do {call} on {host}: check its libvirt URI, credentials and "
    "libvirt access rules (polkit, auth_unix_rw)",
)
_XML = Rule(
    InvalidArgument, "DOMAIN_XML_INVALID", "libvirt rejected the domain XML: fix the element named in the message"
)
_NOT_SUPPORTED = Rule(
    FailedPrecondition,
    "NOT_SUPPORTED",
    "the libvirt driver on {host} does not support {call}; upgrade libvirt/QEMU or do not ask for it",
)

RULES: dict[int, Rule] = {
    VIR_ERR_NO_DOMAIN: Rule(
        NotFound, "DOMAIN_NOT_FOUND", "no such domain on {host}: check the name or UUID with `virsh list --all`"
    ),
    VIR_ERR_OPERATION_INVALID: Rule(
        FailedPrecondition,
        "DOMAIN_STATE_INVALID",
        "the domain is not in a state that allows {call} (not running, or no job active); "
        "check `virsh domstate` and `virsh domjobinfo` on {host}",
    ),
    VIR_ERR_OPERATION_ABORTED: Rule(
        Aborted,
        "MIGRATION_ABORTED",
        "the job was aborted; the guest keeps running on the source. Start a new migration when ready",
    ),
    VIR_ERR_NO_CONNECT: Rule(
        Unavailable,
        "LIBVIRT_UNREACHABLE",
        "libvirtd on {host} cannot be reached: is it running, and is the agent's libvirt_uri right?",
    ),
    VIR_ERR_INVALID_CONN: Rule(
        Unavailable,
        "LIBVIRT_UNREACHABLE",
        "the connection to libvirtd on {host} was lost; the agent reconnects on the next call",
    ),
    VIR_ERR_RPC: Rule(
        Unavailable,
        "LIBVIRT_UNREACHABLE",
        "the connection to libvirtd on {host} failed: check that libvirtd runs and is reachable",
    ),
    VIR_ERR_SYSTEM_ERROR: Rule(
        Internal,
        "HOST_SYSTEM_ERROR",
        "an operating-system call failed on {host} during {call}: see the message and the libvirtd log",
    ),
    VIR_ERR_OPERATION_TIMEOUT: Rule(
        DeadlineExceeded,
        "LIBVIRT_BUSY",
        "another libvirt job holds the domain's lock on {host}: wait for it or abort it (`virsh domjobabort`)",
    ),
    VIR_ERR_MIGRATE_UNSAFE: Rule(
        FailedPrecondition,
        "MIGRATION_UNSAFE",
        "libvirt considers this migration unsafe: use cache='none' on disks on shared storage, "
        "copy the disks, or set unsafe only if the storage really is shared and coherent",
    ),
    VIR_ERR_CPU_INCOMPATIBLE: Rule(
        FailedPrecondition,
        "CPU_INCOMPATIBLE",
        "the target's CPU cannot run this guest's CPU model: use a CPU model both hosts support "
        "or choose another target",
    ),
    VIR_ERR_NO_STORAGE_POOL: Rule(
        FailedPrecondition,
        "TARGET_DISK_MISSING",
        "the disk images do not exist on the target: prepare the target first (PrepareIncoming "
        "creates them at the right path and size)",
    ),
    VIR_ERR_NO_STORAGE_VOL: Rule(
        FailedPrecondition, "TARGET_DISK_MISSING", "a disk image is missing: prepare the target first (PrepareIncoming)"
    ),
    VIR_ERR_OPERATION_FAILED: Rule(
        Internal,
        "LIBVIRT_OPERATION_FAILED",
        "libvirt could not complete {call}: read the message, then the libvirtd log on {host} "
        "(and on {peer} for a migration)",
    ),
    VIR_ERR_INTERNAL_ERROR: Rule(
        Internal,
        "LIBVIRT_INTERNAL_ERROR",
        "libvirt or QEMU failed during {call}: read the message and the libvirtd/QEMU logs on {host}",
    ),
    VIR_ERR_ARGUMENT_UNSUPPORTED: Rule(
        InvalidArgument,
        "ARGUMENT_UNSUPPORTED",
        "libvirt on {host} does not support a flag or parameter of {call}: drop that option",
    ),
    VIR_ERR_CONFIG_UNSUPPORTED: Rule(
        FailedPrecondition,
        "CONFIG_UNSUPPORTED",
        "the domain's configuration cannot be used for {call} on this host (device, machine type "
        "or option unsupported): change the domain or choose another target",
    ),
    VIR_ERR_INVALID_ARG: Rule(
        InvalidArgument, "INVALID_ARGUMENT", "libvirt refused an argument of {call}: fix the request"
    ),
    VIR_ERR_NO_SUPPORT: _NOT_SUPPORTED,
    VIR_ERR_OPERATION_UNSUPPORTED: _NOT_SUPPORTED,
    VIR_ERR_DOM_EXIST: Rule(
        AlreadyExists,
        "DOMAIN_EXISTS",
        "a domain with this name or UUID already exists on the target: undefine it there or choose another target",
    ),
    VIR_ERR_NO_NETWORK: Rule(
        FailedPrecondition,
        "NETWORK_MISSING",
        "a libvirt network the domain uses does not exist: define and start it, or map it to one that exists",
    ),
    VIR_ERR_OPERATION_DENIED: _ACCESS,
    VIR_ERR_ACCESS_DENIED: _ACCESS,
    VIR_ERR_AUTH_FAILED: _ACCESS,
    VIR_ERR_AUTH_CANCELLED: _ACCESS,
    VIR_ERR_AUTH_UNAVAILABLE: _ACCESS,
    VIR_ERR_XML_ERROR: _XML,
    VIR_ERR_XML_DETAIL: _XML,
    VIR_ERR_XML_INVALID_SCHEMA: _XML,
    VIR_ERR_MIGRATE_PERSIST_FAILED: Rule(
        Internal,
        "MIGRATION_PERSIST_FAILED",
        "the guest runs on the target but its persistent definition could not be written there: "
        "define it on {peer} by hand (virsh define)",
    ),
    VIR_ERR_MIGRATE_FINISH_OK: Rule(
        Internal,
        "MIGRATION_FINISH_FAILED",
        "the guest was migrated but finishing failed: check the domain on both hosts before acting",
    ),
    VIR_ERR_HOOK_SCRIPT_FAILED: Rule(
        FailedPrecondition,
        "HOOK_SCRIPT_FAILED",
        "a libvirt hook script refused {call}: see /etc/libvirt/hooks on the host named in the message",
    ),
    VIR_ERR_RESOURCE_BUSY: Rule(
        FailedPrecondition, "RESOURCE_BUSY", "a resource the domain needs is in use: see the message"
    ),
    VIR_ERR_NO_MEMORY: Rule(
        ResourceExhausted, "LIBVIRT_NO_MEMORY", "libvirtd on {host} ran out of memory: free memory on the host"
    ),
    VIR_ERR_AGENT_UNRESPONSIVE: Rule(
        Unavailable, "GUEST_AGENT_UNRESPONSIVE", "the guest agent does not answer: check qemu-guest-agent in the guest"
    ),
    VIR_ERR_DEVICE_MISSING: Rule(
        NotFound, "DEVICE_NOT_FOUND", "the domain has no such device: check the disk target names (`virsh domblklist`)"
    ),
}

DEFAULT_RULE = Rule(
    Internal, "LIBVIRT_ERROR", "unexpected libvirt error during {call}: read the message and the libvirtd log on {host}"
)

_PEER_UNREACHABLE = Rule(
    Unavailable,
    "TARGET_UNREACHABLE",
    "the target's libvirtd ({peer}) cannot be reached from {host}: check that it runs, listens "
    "on that URI and that the network between the hosts works",
)


_SAME_HOST_UUID = Rule(
    FailedPrecondition,
    "HOST_UUID_SHARED",
    "{host} and {peer} report one libvirt host UUID, so libvirt takes them for one machine: give one of "
    'them its own (host_uuid = "<output of uuidgen>" in /etc/libvirt/libvirtd.conf, restart libvirtd '
    "there), or choose another target",
)


_PEER_LINK_LOST = Rule(
    Unavailable,
    "TARGET_CONNECTION_LOST",
    "the network between the hosts or the target's libvirtd ({peer}) stopped answering for a while "
    "during the job (libvirt's keepalive then closes the link); the guest keeps running on the source "
    "and both hosts answer now: retry the migration, and check the network between them if it recurs",
)


def is_unreachable(code: int, domain: int = 0) -> bool:
    """True when the error means the libvirt connection is broken or cannot be made."""
    return code in _UNREACHABLE_CODES or (
        code in (VIR_ERR_SYSTEM_ERROR, VIR_ERR_INTERNAL_ERROR) and domain in _TRANSPORT_DOMAINS
    )


def rule_for(code: int, domain: int = 0) -> Rule:
    """The rule for a libvirt error code (and the subsystem that raised it)."""
    if is_unreachable(code, domain):
        return RULES[code] if code in _UNREACHABLE_CODES else RULES[VIR_ERR_RPC]
    return RULES.get(code, DEFAULT_RULE)


def translate(
    code: int,
    domain: int,
    message: str,
    *,
    call: str,
    host: str,
    peer: str = "",
    peer_unreachable: bool = False,
    peer_link_lost: bool = False,
    same_host_uuid: bool = False,
) -> FerryError:
    """The Ferry error for a libvirt error.

    ``call`` names the libvirt call (e.g. ``migrateToURI3``), ``host`` the libvirt we talked to,
    ``peer`` the other host's URI in a migration. ``peer_unreachable`` is the caller's finding
    (from state, e.g. a failed probe of the target) that the failure was the peer's connection;
    ``peer_link_lost`` that the connection to the peer closed during the job while both libvirtds
    answer (ours on the connection it had before; the peer to a new one); ``same_host_uuid`` that
    both libvirtds report one host UUID (libvirt then refuses a migration as "to the same host",
    an internal error).
    """
    if peer_unreachable:
        rule = _PEER_UNREACHABLE
    elif peer_link_lost:
        rule = _PEER_LINK_LOST
    elif same_host_uuid:
        rule = _SAME_HOST_UUID
    else:
        rule = rule_for(code, domain)
    hint = rule.hint.format(call=call, host=host, peer=peer or "the target")
    if peer_link_lost:
        message = (
            f"the connection to the target's libvirtd ({peer or 'the target'}) closed during the migration: {message}"
        )
    text = f"{call} on {host}: {message}" if message else f"{call} on {host} failed (libvirt error {code})"
    return rule.error(text, reason=rule.reason, hint=hint)


def timeout_error(call: str, host: str, timeout_s: float) -> DeadlineExceeded:
    """A libvirt call that did not return in time (the thread may still be blocked in libvirt)."""
    return DeadlineExceeded(
        f"libvirt call {call} on {host} did not return within {timeout_s:g} s",
        reason="LIBVIRT_TIMEOUT",
        hint=f"libvirtd on {host} is hung or overloaded: check `virsh list` there and the "
        "libvirtd log; raise libvirt_timeout_s only if the host is merely slow",
    )


def incoming_stuck(name: str, uuid: str, host: str, detail: str) -> FailedPrecondition:
    """``destroy_incoming`` could not take the domain: libvirtd holds its job lock and never
    lets go. Seen with libvirt 9.0 after a libvirtd killed while it started the copy's QEMU: the
    restarted libvirtd reloads the copy as active and paused (pid 0) with the job it had, no QEMU
    and no thread that ends that job, and every call that needs the lock waits 30 s and fails."""
    return FailedPrecondition(
        f"libvirtd on {host} keeps {name} ({uuid}), an unfinished incoming migration's copy, under a job "
        f"that does not end, and cannot destroy it: {detail}",
        reason="INCOMING_COPY_STUCK",
        hint=f"the guest runs on its source. A restart of libvirtd alone reloads the copy as it is: check that "
        f"no QEMU process of {name} runs on this host, stop libvirtd, remove /run/libvirt/qemu/{name}.xml "
        "(libvirt's runtime record of the copy) and start libvirtd again; Ferry then removes the rest",
    )


def not_incoming(name: str, uuid: str, host: str, *, persistent: bool, state: str) -> FailedPrecondition:
    """``destroy_incoming`` refused: the domain is not a migration's unfinished incoming copy."""
    what = "has a persistent definition" if persistent else f"is {state}, not held paused by libvirt for a migration"
    return FailedPrecondition(
        f"{name} ({uuid}) on {host} {what}: it is not an unfinished incoming migration's domain; left alone",
        reason="NOT_INCOMING",
        hint=f"find where the guest runs (virsh list on both hosts) before removing anything of {name} on {host}",
    )

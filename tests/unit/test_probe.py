"""ProbeTarget's steps (resolve, TCP connect, libvirt open) over stand-in primitives: nothing here
leaves the machine (no resolver, no socket to anything but libvirt's in-process test driver)."""

import doctest

import pytest

from ferry.agent import probe
from ferry.agent.probe import PeerAddress, parse_peer_uri, probe_peer
from ferry.errors import FailedPrecondition, InvalidArgument, Unavailable
from ferry.testing.fake_hypervisor import FakeFleet, FakeHypervisor


def test_docstring_examples():
    assert doctest.testmod(probe).failed == 0


@pytest.mark.parametrize(
    ("uri", "transport", "host", "port"),
    [
        ("qemu+tcp://10.77.0.12/system", "tcp", "10.77.0.12", 16509),
        ("qemu+tcp://host2:16600/system", "tcp", "host2", 16600),
        ("qemu+tls://host2.example/system", "tls", "host2.example", 16514),
        ("qemu://host2/system", "tls", "host2", 16514),  # remote without transport = TLS
        ("qemu+ssh://root@host2/system", "ssh", "host2", 0),  # ssh: no TCP check of libvirtd
        ("qemu+libssh2://host2/system", "libssh2", "host2", 0),
        ("qemu+tcp://[fd00::12]/system", "tcp", "fd00::12", 16509),
        ("qemu:///system", "", "", 0),  # local
        ("qemu+unix:///system?socket=/run/x.sock", "unix", "", 0),
    ],
)
def test_parse_peer_uri(uri, transport, host, port):
    assert parse_peer_uri(uri) == PeerAddress(uri, "qemu", transport, host, port)


@pytest.mark.parametrize(
    "uri", ["", "host2", "qemu+tcp:///system", "qemu+carrier-pigeon://host2/system", "qemu+tcp://host2:port/system"]
)
def test_uris_that_cannot_be_probed(uri):
    with pytest.raises(InvalidArgument) as exc:
        parse_peer_uri(uri)
    assert exc.value.reason == "TARGET_URI_INVALID" and "advertise_libvirt_uri" in exc.value.hint


class Net:
    """Stand-ins for the resolver, TCP and libvirt, recording what was asked."""

    def __init__(self, names=None, listening=(), libvirt_error=None):
        self.names = names or {}
        self.listening = set(listening)
        self.libvirt_error = libvirt_error
        self.asked: list[tuple] = []
        self.now = 0.0

    async def resolve(self, host, port):
        self.asked.append(("resolve", host, port))
        if host not in self.names:
            raise OSError(-2, "Name or service not known")
        return self.names[host]

    async def connect(self, address, port):
        self.asked.append(("connect", address, port))
        self.now += 0.004
        if (address, port) not in self.listening:
            raise ConnectionRefusedError(111, "Connection refused")

    async def open_libvirt(self):
        self.asked.append(("open",))
        if self.libvirt_error is not None:
            raise self.libvirt_error

    async def run(self, uri, **kw):
        return await probe_peer(
            uri,
            from_host="host1",
            resolve=self.resolve,
            connect=self.connect,
            open_libvirt=self.open_libvirt,
            clock=lambda: self.now,
            **kw,
        )


async def test_a_reachable_target_takes_every_step():
    net = Net(names={"host2": ["10.77.0.12"]}, listening={("10.77.0.12", 16509)})
    assert await net.run("qemu+tcp://host2/system") == 4  # the TCP connect's round trip
    assert net.asked == [("resolve", "host2", 16509), ("connect", "10.77.0.12", 16509), ("open",)]


async def test_a_name_that_does_not_resolve_stops_there():
    net = Net()
    with pytest.raises(FailedPrecondition) as exc:
        await net.run("qemu+tcp://no-such-host.invalid/system")
    err = exc.value
    assert err.reason == "TARGET_UNRESOLVABLE"
    assert "no-such-host.invalid" in err.message and "host1" in err.message and "Name or service" in err.message
    assert "/etc/hosts on host1" in err.hint and "IP address" in err.hint
    assert net.asked == [("resolve", "no-such-host.invalid", 16509)]


async def test_a_closed_port_is_unreachable_and_says_where_to_look():
    net = Net(names={"10.77.0.99": ["10.77.0.99"]})
    with pytest.raises(Unavailable) as exc:
        await net.run("qemu+tcp://10.77.0.99/system")
    err = exc.value
    assert err.reason == "TARGET_UNREACHABLE" and "Connection refused" in err.message
    assert "from host1 to 10.77.0.99:16509" in err.hint and "listen_tcp" in err.hint
    assert ("open",) not in net.asked


async def test_every_address_of_a_name_is_tried():
    net = Net(names={"host2": ["fd00::12", "10.77.0.12"]}, listening={("10.77.0.12", 16514)})
    await net.run("qemu+tls://host2/system")
    assert [a for a in net.asked if a[0] == "connect"] == [
        ("connect", "fd00::12", 16514),
        ("connect", "10.77.0.12", 16514),
    ]


async def test_ssh_and_local_uris_skip_the_tcp_check():
    net = Net(names={"host2": ["10.77.0.12"]})
    await net.run("qemu+ssh://root@host2/system")
    await net.run("qemu:///system")
    assert net.asked == [("resolve", "host2", 0), ("open",), ("open",)]


async def test_the_libvirt_open_has_the_last_word():
    refused = FailedPrecondition(
        "open on qemu+tcp://host2/system: authentication failed",
        reason="LIBVIRT_ACCESS_DENIED",
        hint="check credentials",
    )
    net = Net(names={"host2": ["10.77.0.12"]}, listening={("10.77.0.12", 16509)}, libvirt_error=refused)
    with pytest.raises(FailedPrecondition) as exc:
        await net.run("qemu+tcp://host2/system")
    assert exc.value is refused


async def test_the_migration_address_must_resolve_too():
    net = Net(names={"host2": ["10.77.0.12"]}, listening={("10.77.0.12", 16509)})
    await net.run("qemu+tcp://host2/system", migration_address="10.77.0.12")  # an address: nothing to ask
    with pytest.raises(FailedPrecondition) as exc:
        await net.run("qemu+tcp://host2/system", migration_address="mig-host2")
    assert exc.value.reason == "TARGET_UNRESOLVABLE" and "migration address" in exc.value.message


# ---------------------------------------------------------------- the fake answers as the steps do


async def test_fake_hypervisors_probe_their_fleet():
    fleet = FakeFleet()
    h1 = FakeHypervisor(hostname="host1", uri="qemu+tcp://10.77.0.11/system", fleet=fleet)
    h2 = FakeHypervisor(hostname="host2", uri="qemu+tcp://10.77.0.12/system", fleet=fleet)
    assert await h1.probe_peer(h2.uri) == 0
    with pytest.raises(FailedPrecondition) as exc:
        await h1.probe_peer("qemu+tcp://no-such-host.invalid/system")
    assert exc.value.reason == "TARGET_UNRESOLVABLE"
    with pytest.raises(Unavailable) as exc:
        await h1.probe_peer("qemu+tcp://10.77.0.99/system")  # nobody there: times out
    assert (exc.value.reason, "no answer in time" in exc.value.message) == ("TARGET_UNREACHABLE", True)
    h2.reachable = False  # libvirtd down: refused
    with pytest.raises(Unavailable) as exc:
        await h1.probe_peer(h2.uri)
    assert "Connection refused" in exc.value.message
    fleet.names["host3"] = ["10.77.0.13"]
    with pytest.raises(Unavailable):
        await h1.probe_peer("qemu+tcp://host3/system")  # resolves, nobody listens


# ---------------------------------------------------------------- the real adapter, no network


async def test_the_libvirt_adapter_runs_the_same_steps():
    libvirt = pytest.importorskip("libvirt")
    del libvirt
    from ferry.agent.libvirt_hypervisor import LibvirtHypervisor

    asked = []

    async def resolve(host, port):
        asked.append((host, port))
        if host == "host2":
            return ["10.77.0.12"]
        raise OSError(-2, "Name or service not known")

    async def connect(address, port):
        asked.append((address, port))
        raise TimeoutError

    hv = LibvirtHypervisor(
        "test:///default", resolve=resolve, connect=connect, peer_uris={"qemu+tcp://local/system": "test:///default"}
    )
    try:
        assert await hv.probe_peer("qemu+tcp://local/system") >= 0  # mapped: a local URI, opened
        with pytest.raises(FailedPrecondition) as exc:
            await hv.probe_peer("qemu+tcp://nowhere/system")
        assert exc.value.reason == "TARGET_UNRESOLVABLE"
        with pytest.raises(Unavailable) as exc:
            await hv.probe_peer("qemu+tcp://host2/system")
        assert exc.value.reason == "TARGET_UNREACHABLE" and "no answer in time" in exc.value.message
        with pytest.raises(Unavailable) as exc:
            await hv.probe_peer("qemu:///system?socket=/nonexistent/libvirt-sock")
        assert exc.value.reason == "TARGET_UNREACHABLE" and "/nonexistent/libvirt-sock" in exc.value.message
        assert asked == [("nowhere", 16509), ("host2", 16509), ("10.77.0.12", 16509)]
    finally:
        hv.close()

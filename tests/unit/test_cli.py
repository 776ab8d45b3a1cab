"""The CLI's pure parts: virsh-style flags -> options, address resolution, rendering."""

import asyncio
from pathlib import Path

import pytest

from ferry.cli import render
from ferry.cli.config import DEFAULT_COORDINATOR, coordinator_address
from ferry.cli.main import Usage, build_mapping, build_options, parser
from ferry.errors import InvalidArgument
from ferry.rpc import Tls
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb


def _args(*argv):
    return parser().parse_args(["migrate", "g1", "--to", "host2", *argv])


@pytest.mark.parametrize(
    ("argv", "storage", "keep_source", "transient_target"),
    [
        # neither flag: the definition moves with the VM, which is the API's zero value
        ((), tpb.STORAGE_MODE_UNSPECIFIED, False, False),
        (("--copy-storage-all",), tpb.STORAGE_MODE_COPY_ALL, False, False),
        (("--copy-storage-inc",), tpb.STORAGE_MODE_COPY_INC, False, False),
        (("--shared-storage",), tpb.STORAGE_MODE_SHARED, False, False),
        # virsh's meaning: naming one flag leaves out the other
        (("--persistent",), tpb.STORAGE_MODE_UNSPECIFIED, True, False),
        (("--undefinesource",), tpb.STORAGE_MODE_UNSPECIFIED, False, True),
        (("--persistent", "--undefinesource"), tpb.STORAGE_MODE_UNSPECIFIED, False, False),
    ],
)
def test_storage_and_definition_flags(argv, storage, keep_source, transient_target):
    o = build_options(_args(*argv))
    assert (o.storage, o.keep_source_definition, o.transient_target) == (storage, keep_source, transient_target)
    assert o == tpb.MigrationOptions(
        storage=storage,
        keep_source_definition=keep_source,
        transient_target=transient_target,
        persist_transient="--persistent" in argv,  # a transient VM too, as virsh makes it persistent
    )  # nothing else set


def test_tuning_flags():
    o = build_options(
        _args(
            "--bandwidth",
            "40",
            "--max-downtime",
            "250",
            "--auto-converge",
            "--postcopy",
            "--migrate-disks",
            "vda,vdb",
            "--offline",
            "--timeout",
            "600",
        )
    )
    assert (o.bandwidth_mibps, o.max_downtime_ms, o.auto_converge, o.allow_postcopy) == (40, 250, True, True)
    assert list(o.migrate_disks) == ["vda", "vdb"]
    assert o.offline and o.completion_timeout_s == 600


@pytest.mark.parametrize(
    "argv",
    [
        ("--copy-storage-all", "--copy-storage-inc"),
        ("--postcopy-on-stall",),
    ],
)
def test_contradictory_flags_are_refused(argv):
    with pytest.raises(Usage):
        build_options(_args(*argv))


@pytest.mark.parametrize(
    "argv",
    [
        ("migrate", "g1", "--bandwidth", "-5"),
        ("migrate", "g1", "--max-downtime", "1e3"),
        ("migrate", "g1", "--timeout", "4294967296"),
        ("migrate", "g1", "--priority", "99999999999"),
        ("drain", "host1", "--bandwidth", "-1"),
        ("drain", "host1", "--max-parallel", "-2"),
        ("migrations", "tune", "m-1", "--bandwidth", "abc"),
        ("migrations", "--limit", "-1"),
        ("top", "--iterations", "-1"),
    ],
)
def test_a_number_out_of_the_apis_range_is_a_usage_error_not_a_traceback(argv):
    """`ferry migrate g1 --bandwidth -5` raised ValueError from protobuf (an unsigned field)."""
    from ferry.cli.args import UsageError

    with pytest.raises(UsageError, match="must be"):  # the CLI's main: exit 64 (USAGE)
        parser().parse_args(list(argv))


def test_mappings():
    m = build_mapping(
        _args("--map-bridge", "br-guest=br-vm", "--map-path", "/var/lib/a=/srv/b", "--map-network", "default=prod")
    )
    assert dict(m.bridges) == {"br-guest": "br-vm"}
    assert dict(m.path_prefixes) == {"/var/lib/a": "/srv/b"}
    assert dict(m.networks) == {"default": "prod"}


@pytest.mark.parametrize("bad", ["br-guest", "=br-vm", "br-guest="])
def test_bad_mapping_says_how(bad):
    with pytest.raises(Usage) as e:
        build_mapping(_args("--map-bridge", bad))
    assert "OLD=NEW" in e.value.message and "--map-bridge" in e.value.hint


def test_address_order(tmp_path):
    cfg = tmp_path / "cli.toml"
    cfg.write_text('coordinator = "unix:/tmp/lab/coordinator.sock"\n')
    env = {"FERRY_CONFIG": str(cfg)}
    assert coordinator_address("h:1", {**env, "FERRY_COORDINATOR": "e:2"}) == "h:1"
    assert coordinator_address(None, {**env, "FERRY_COORDINATOR": "e:2"}) == "e:2"
    assert coordinator_address(None, env) == "unix:/tmp/lab/coordinator.sock"
    assert coordinator_address(None, {"FERRY_CONFIG": str(tmp_path / "none.toml")}) == DEFAULT_COORDINATOR


@pytest.mark.parametrize("kind", ["a directory", "not UTF-8"])
def test_a_config_file_that_cannot_be_read_says_which_and_what_to_do(tmp_path, kind):
    path = tmp_path / "cli.toml"
    if kind == "a directory":
        path.mkdir()
    else:
        path.write_bytes('coordinator = "h\xe9st:7100"\n'.encode("latin-1"))
    with pytest.raises(InvalidArgument) as exc:
        coordinator_address(None, {"FERRY_CONFIG": str(path)})
    assert exc.value.reason == "BAD_CONFIG" and str(path) in str(exc.value) and str(path) in exc.value.hint


def _pki(d):
    """A CA and two identities (ferry-certs' code): the files' paths."""
    from ferry.certs import issue_identity, new_ca, write_pem
    from ferry.identity import Identity, Role

    ca = new_ca("test CA")
    write_pem(d, "ca", ca)
    write_pem(d, "op", issue_identity(ca, Identity(Role.OPERATOR, "alice")))
    write_pem(d, "rd", issue_identity(ca, Identity(Role.READER, "bob")))
    return [str(d / n) for n in ("ca.pem", "op.pem", "op-key.pem", "rd.pem", "rd-key.pem")]


def test_tls_flags_override_the_config_files_values_one_by_one(tmp_path):
    from ferry.cli.config import client_tls

    ca, cert, key, other, other_key = _pki(tmp_path)
    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'ca = "{ca}"\ncert = "{cert}"\nkey = "{key}"\n')
    env = {"FERRY_CONFIG": str(cfg)}
    assert client_tls(env=env) == Tls(Path(ca), Path(cert), Path(key))
    # another identity under the file's CA: --cert and --key alone
    assert client_tls(cert=other, key=other_key, env=env) == Tls(Path(ca), Path(other), Path(other_key))
    assert client_tls(ca=other, env=env) == Tls(Path(other), Path(cert), Path(key))
    # a certificate never goes with the file's key (nor a key with its certificate)
    for kw in ({"cert": other}, {"key": other_key}):
        with pytest.raises(InvalidArgument) as e:
            client_tls(**kw, env=env)
        assert e.value.reason == "TLS_INCOMPLETE" and "both --cert and --key" in e.value.hint
    # no file: every flag is needed, and the refusal names what is missing
    none = {"FERRY_CONFIG": str(tmp_path / "none.toml")}
    with pytest.raises(InvalidArgument) as e:
        client_tls(cert=other, key=other_key, env=none)
    assert e.value.reason == "TLS_INCOMPLETE" and e.value.message == "--cert, --key without --ca"
    assert client_tls(ca=ca, cert=other, key=other_key, env=none) == Tls(Path(ca), Path(other), Path(other_key))
    # a file asking for plaintext gives way to flags naming a certificate
    cfg.write_text(f'insecure = true\nca = "{ca}"\n')
    assert client_tls(env=env) is None
    assert client_tls(cert=other, key=other_key, env=env) == Tls(Path(ca), Path(other), Path(other_key))


def test_a_key_that_is_not_the_certificates_is_refused_before_any_call(tmp_path):
    """gRPC only logs "Invalid private key" and every call then looks like no coordinator answers."""
    from ferry.cli.config import client_tls

    ca, cert, _, _, other_key = _pki(tmp_path)
    env = {"FERRY_CONFIG": str(tmp_path / "none.toml")}
    with pytest.raises(InvalidArgument) as e:
        client_tls(ca=ca, cert=cert, key=other_key, env=env)
    assert e.value.reason == "TLS_KEY_MISMATCH" and other_key in e.value.message and cert in e.value.message
    with pytest.raises(InvalidArgument) as e:
        client_tls(ca=ca, cert=other_key, key=other_key, env=env)  # a key where the certificate goes
    assert e.value.reason == "TLS_FILE_INVALID" and "not a PEM certificate" in e.value.message


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (256 << 20, "256 MiB"), (int(3.2 * (1 << 30)), "3.2 GiB")],
)
def test_size(n, text):
    assert render.size(n) == text


def test_progress_bar_counts_memory_and_disk():
    p = tpb.MigrationProgress(
        phase=tpb.MIGRATION_PHASE_PRECOPY,
        memory_total=256 << 20,
        memory_processed=128 << 20,
        memory_remaining=128 << 20,
        disk_total=256 << 20,
        disk_processed=256 << 20,
        disk_remaining=0,
        iteration=2,
        elapsed_ms=3200,
    )
    line = render.progress_bar(p, width=10)
    assert line.startswith("[########..]  75% precopy")
    assert "iter 2" in line and line.endswith("3.2 s")


def test_phase_names():
    # the JSON's spelling, in the tables too
    assert render.phase_name(cpb.PHASE_ROLLED_BACK) == "rolled_back"
    assert render.phase_name(cpb.PHASE_PENDING) == "pending"


def test_several_replicas(tmp_path):
    from ferry.cli.config import coordinator_addresses

    cfg = tmp_path / "cli.toml"
    cfg.write_text('coordinator = "unix:/l/c1.sock"\ncoordinators = ["unix:/l/c1.sock", "unix:/l/c2.sock"]\n')
    assert coordinator_addresses(None, {"FERRY_CONFIG": str(cfg)}) == ["unix:/l/c1.sock", "unix:/l/c2.sock"]
    assert coordinator_addresses("a:1,b:2", {}) == ["a:1", "b:2"]


async def test_pick_skips_a_dead_replica(tmp_path):
    from ferry.cli.main import pick_coordinator
    from ferry.rpc import create_server

    server, ports = create_server(["127.0.0.1:0"], lambda s: ["ferry.v1.Coordinator"])
    await server.start()
    try:
        alive = f"127.0.0.1:{ports[0]}"
        assert await pick_coordinator([f"unix:{tmp_path}/dead.sock", alive], timeout_s=1) == alive
    finally:
        await server.stop(0)


def test_progress_bar_never_runs_backwards():
    p = tpb.MigrationProgress(
        phase=tpb.MIGRATION_PHASE_PRECOPY,
        memory_total=256 << 20,
        memory_processed=64 << 20,
        memory_remaining=192 << 20,
        elapsed_ms=1000,
    )
    assert render.progress_bar(p, width=10).startswith("[##........]  25%")
    assert render.progress_bar(p, width=10, at_least=0.9).startswith("[#########.]  90%")


def test_progress_bar_without_figures_has_no_percentage():
    p = tpb.MigrationProgress(phase=tpb.MIGRATION_PHASE_STARTING)
    assert "--%" in render.progress_bar(p)


def test_a_ranked_preflight_says_which_candidate_its_agent_checked():
    """Seen on the lab: a host with a file in the way listed as the second candidate; only the
    best is checked by its agent (a dry run), and the header now says so."""
    c = [cpb.HostCandidate(host="host2", score=0.97), cpb.HostCandidate(host="host3", score=0.97)]
    ok = cpb.PreflightResponse(ok=True, source_host="host1", target_host="host2", candidates=c)
    assert render.candidates(ok, "db1")[0] == (
        "Candidates for db1 (from host1), best first; the agents' checks ran on host2 alone, "
        "the others are ranked from the inventory:"
    )
    ranked = cpb.RankTargetsResponse(source_host="host1", candidates=c)  # the scheduler's call: no agent check
    assert render.candidates(ranked, "db1")[0] == "Candidates for db1 (from host1), best first:"


async def test_a_silent_watch_says_once_that_the_coordinator_cannot_read_etcd_and_once_that_it_can():
    """Seen on the lab: through an etcd outage `ferry migrate` printed nothing (the job went on)."""
    from ferry.cli.main import StoreWatch
    from ferry.errors import Unavailable

    said: list[str] = []
    answers = iter([None, "down", "down", "down"])

    async def probe() -> None:
        if next(answers, "down") == "down":
            raise Unavailable("etcd at https://10.77.0.1:2379 does not answer", reason="STORE_UNAVAILABLE")

    now = [0.0]
    watch = StoreWatch(probe, said.append, quiet_s=10, every_s=0.001, clock=lambda: now[0])
    task = asyncio.get_running_loop().create_task(watch.run())
    try:
        await asyncio.sleep(0.02)
        assert said == []  # not quiet long enough: not even asked
        now[0] = 11.0
        for _ in range(200):
            if said:
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)  # asked again and again: said once
        assert said == [
            "  the coordinator cannot read etcd (STORE_UNAVAILABLE: etcd at https://10.77.0.1:2379 does not answer); "
            "the job goes on on its hosts and this waits for etcd (Ctrl-C leaves the migration running)"
        ]
        watch.heard()
        watch.heard()
        assert said[1:] == ["  the coordinator reads etcd again"]
    finally:
        task.cancel()


def test_virsh_habits_live_p2p_tls_verbose_are_accepted_and_change_nothing():
    """An operator types `ferry migrate g1 --live --p2p --tls --verbose` as for virsh migrate."""
    plain = parser().parse_args(["migrate", "g1", "--to", "host2"])
    habits = parser().parse_args(["migrate", "g1", "--live", "--p2p", "--tls", "--verbose", "--to", "host2"])
    assert build_options(habits) == build_options(plain) and build_mapping(habits) == build_mapping(plain)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("migrate", "g1", "--dname", "g2"), "--dname (virsh migrate) is not a ferry flag: the VM keeps its name"),
        (("migrate", "g1", "--xml", "t.xml"), "written from the source's through the host mapping: --map-bridge"),
        (("migrate", "g1", "--compressed"), "compression is part of a convergence policy: --policy NAME"),
        (("preflight", "g1", "--tunnelled"), "from QEMU to QEMU over TLS"),
        (("migrate", "g1", "--parallel-connections", "4"), "parallel connections are part of a convergence policy"),
    ],
)
def test_a_virsh_flag_ferry_decides_elsewhere_is_a_usage_error_saying_where(argv, says):
    from ferry.cli.args import UsageError

    with pytest.raises(UsageError) as err:
        parser().parse_args(list(argv))
    assert says in err.value.message


@pytest.mark.parametrize(
    ("argv", "command", "action"),
    [
        (("host", "list"), "hosts", None),
        (("hosts", "list"), "hosts", None),
        (("migration", "list", "--phase", "failed"), "migrations", None),
        (("migrations", "abort", "m-1"), "migrations", "cancel"),
        (("drains", "abort", "d-1"), "drains", "cancel"),
        (("drains", "list", "--state", "running"), "drains", None),
        (("vm",), "vms", None),
        (("policy",), "policies", None),
    ],
)
def test_other_spellings_operators_type_mean_the_same_command(argv, command, action):
    """kubectl/openstack habits: `list`, singular nouns; openstack's and virsh's `abort` for cancel."""
    from ferry.cli.args import parse

    args = parse(list(argv))
    assert (args.command, getattr(args, "action", None)) == (command, action)
    if "--phase" in argv:
        assert args.phase == ["failed"]
    if "--state" in argv:
        assert args.state == ["running"]


def test_the_target_may_follow_the_vm_as_virsh_migrates_vm_desturi():
    from ferry.cli.args import UsageError, parse

    assert parse(["migrate", "g1", "host2"]).to == "host2"
    assert parse(["preflight", "g1", "host2", "--to", "host2"]).to == "host2"
    assert parse(["migrate", "g1"]).to is None
    with pytest.raises(UsageError, match="two targets: host2 and --to host3"):
        parse(["migrate", "g1", "host2", "--to", "host3"])

"""The path-confinement table: every case of issue 7's "Why", on the real LocalHostSystem in a
temporary tree (real files, real qemu-img), through the agent's gRPC API on loopback, and the
coordinator's mapping override through its API.

The tree: ``images/`` (the agent's image directory) with ``images/linked -> outside/`` (a
symbolic link to a directory outside it), ``images/template.qcow2`` (an image no domain uses),
``outside/victim.qcow2`` (a file that must survive), and the test's own working directory
``cwd/`` (where a relative path would land). qemu-img is wrapped by a script that logs every
invocation, so "never read /etc/shadow" is checked on what really ran.

What an operator would check: the request is refused with a reason code naming the rule, no
file appeared anywhere, no file outside the image directory was read or removed.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ferry import convert
from ferry.agent.config import AgentConfig
from ferry.agent.hostsystem import LocalHostSystem
from ferry.agent.main import build_agent, register
from ferry.agent.targets import MigrationTargets
from ferry.paths import PathUse
from ferry.rpc import create_channel, create_server, from_rpc_error
from ferry.testing.fake_hypervisor import FakeFleet, FakeHypervisor, MiB, make_domain_xml
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc
from ferry.v1 import types_pb2 as tpb

GiB = 1 << 30
pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


@dataclass
class Tree:
    root: Path
    images: Path
    outside: Path
    cwd: Path
    qemu_log: Path

    def qemu_img_calls(self) -> list[str]:
        return self.qemu_log.read_text().splitlines() if self.qemu_log.exists() else []

    def everything(self) -> set[str]:
        """Every file under the tree (links as links), relative to it."""
        out = set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                out.add(os.path.relpath(os.path.join(dirpath, name), self.root))
        return out


@dataclass
class Agent:
    tree: Tree
    hv: FakeHypervisor
    target: FakeHypervisor
    host: LocalHostSystem
    stub: agrpc.AgentStub


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tree:
    images, outside, cwd = tmp_path / "images", tmp_path / "outside", tmp_path / "cwd"
    for d in (images, outside, cwd):
        d.mkdir()
    (images / "linked").symlink_to(outside, target_is_directory=True)
    (outside / "victim.qcow2").write_bytes(b"precious")
    log = tmp_path / "qemu-img.log"
    wrapper = tmp_path / "qemu-img"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {shutil.which("qemu-img")} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.chdir(cwd)  # a relative path would land here
    t = Tree(tmp_path, images, outside, cwd, log)
    return t


@pytest.fixture
async def agent(tree: Tree) -> AsyncIterator[Agent]:
    fleet = FakeFleet()
    hv = FakeHypervisor(hostname="host1", uri="qemu+tcp://10.77.0.11/system", fleet=fleet)
    target = FakeHypervisor(hostname="host2", uri="qemu+tcp://10.77.0.12/system", fleet=fleet)
    host = LocalHostSystem([str(tree.images)], qemu_img=str(tree.root / "qemu-img"))
    host.create_image(str(tree.images / "template.qcow2"), fmt="qcow2", virtual_size=GiB)
    config = AgentConfig(
        name="host1",
        listen=("127.0.0.1:0",),
        advertise_libvirt_uri=hv.uri,
        image_dirs=(str(tree.images),),
        state_dir=str(tree.root / "state"),
    )
    servicer = build_agent(config, hv, host, targets=MigrationTargets("host1", [target.uri]))
    server, [port] = create_server(config.listen, register(servicer))
    await server.start()
    channel = create_channel(f"127.0.0.1:{port}")
    try:
        yield Agent(tree, hv, target, host, agrpc.AgentStub(channel))
    finally:
        await channel.close()
        await server.stop(None)


async def refusal(call) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    err = from_rpc_error(exc.value)
    return exc.value.code(), err.reason, err.hint


def prepare(
    xml: str, plans: list[tpb.DiskPlan], *, storage=tpb.STORAGE_MODE_COPY_ALL, **kw
) -> apb.PrepareIncomingRequest:
    return apb.PrepareIncomingRequest(domain_xml=xml, disks=plans, storage=storage, migration_id="m-1", **kw)


def plan(destination: str, *, backing: str = "") -> tpb.DiskPlan:
    return tpb.DiskPlan(
        target="vda",
        source="/var/lib/libvirt/images/g1.qcow2",
        destination=destination,
        format="qcow2",
        virtual_size=GiB,
        copy=True,
        backing_file=backing,
        backing_format="raw" if backing else "",
    )


XML = make_domain_xml("g1", disks=[("vda", "/var/lib/libvirt/images/g1.qcow2", "qcow2")])

# ---------------------------------------------------------------- PrepareIncoming: what it creates and reads

PREPARE_CASES = [
    # (case, destination in the tree ("{images}", "{outside}" filled in), backing, code, reason)
    ("outside the image dirs", "{outside}/g1.qcow2", "", grpc.StatusCode.INVALID_ARGUMENT, "PATH_OUTSIDE_IMAGE_DIRS"),
    ("dot-dot out of them", "{images}/../outside/g1.qcow2", "", grpc.StatusCode.INVALID_ARGUMENT, "PATH_DOTDOT"),
    ("relative (the agent's cwd)", "g1.qcow2", "", grpc.StatusCode.INVALID_ARGUMENT, "PATH_NOT_ABSOLUTE"),
    ("through a symlinked dir", "{images}/linked/g1.qcow2", "", grpc.StatusCode.FAILED_PRECONDITION, "PATH_SYMLINK"),
    # refused at the API edge, before the prepare (a dry run too): a control character in a field
    ("NUL in the path", "{images}/g1\0.qcow2", "", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS"),
    ("not normalised", "{images}//g1.qcow2", "", grpc.StatusCode.INVALID_ARGUMENT, "PATH_NOT_NORMALIZED"),
    ("backing file /etc/shadow", "{images}/g1.qcow2", "/etc/shadow", grpc.StatusCode.INVALID_ARGUMENT,
     "PATH_OUTSIDE_IMAGE_DIRS"),
    ("backing file through a symlinked dir", "{images}/g1.qcow2", "{images}/linked/victim.qcow2",
     grpc.StatusCode.FAILED_PRECONDITION, "PATH_SYMLINK"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "dest", "backing", "code", "reason"), PREPARE_CASES, ids=[c[0] for c in PREPARE_CASES]
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["prepare", "dry-run"])
async def test_prepare_creates_and_reads_only_inside_the_image_dirs(agent, case, dest, backing, code, reason, dry_run):
    t = agent.tree
    before = t.everything()
    dest = dest.format(images=t.images, outside=t.outside)
    backing = backing.format(images=t.images)
    storage = tpb.STORAGE_MODE_COPY_INC if backing else tpb.STORAGE_MODE_COPY_ALL
    request = prepare(XML, [plan(dest, backing=backing)], storage=storage, dry_run=dry_run)
    if dry_run and reason != "INVALID_CHARACTERS":  # every problem listed, the same reason
        out = await agent.stub.PrepareIncoming(request)
        assert reason in [p.reason for p in out.problems] and not out.prepare_id
    else:
        got_code, got_reason, hint = await refusal(agent.stub.PrepareIncoming(request))
        assert (got_code, got_reason) == (code, reason) and hint
    assert t.everything() == before  # nothing created: not in the tree, not in the agent's cwd
    assert os.listdir(t.cwd) == []
    assert (t.outside / "victim.qcow2").read_bytes() == b"precious"
    assert not any("shadow" in c or "victim" in c for c in t.qemu_img_calls())  # never read by qemu-img
    assert await agent.stub.ListPrepares(apb.ListPreparesRequest()) == apb.ListPreparesResponse()


async def test_a_mapping_override_out_of_the_image_dirs_is_refused_by_the_target(agent):
    """The coordinator checks overrides at submit; the target agent checks again at prepare."""
    t = agent.tree
    escape = f"{t.images}/../../../../etc/cron.d"
    request = prepare(
        XML,
        [plan("")],  # the destination left to the target: mapped from the source path
        mapping=tpb.HostMapping(path_prefixes={"/var/lib/libvirt/images": escape}),
    )
    code, reason, _ = await refusal(agent.stub.PrepareIncoming(request))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PATH_DOTDOT")
    assert not Path("/etc/cron.d/g1.qcow2").exists()


@pytest.mark.parametrize("how", ["mapped there", "named there"])
async def test_a_disk_the_guest_opens_in_place_is_confined_too(agent, how):
    """Nothing is created for a disk left in place (read-only, or on shared storage), but the guest
    opens it on this host: a mapping, or the XML itself, must not hand it the host's /etc/shadow."""
    t = agent.tree
    iso = f"{t.images}/iso/shadow"
    source = iso if how == "mapped there" else "/etc/shadow"
    xml = XML.replace(
        "</devices>",
        f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{source}'/>"
        "<target dev='sda' bus='sata'/><readonly/></disk></devices>",
    )
    cdrom = tpb.DiskPlan(target="sda", source=source, format="raw", copy=False)
    mapping = tpb.HostMapping(path_prefixes={f"{t.images}/iso": "/etc"}) if how == "mapped there" else None
    for dry_run in (True, False):
        request = prepare(xml, [plan(f"{t.images}/g1.qcow2"), cdrom], mapping=mapping, dry_run=dry_run)
        if dry_run:
            out = await agent.stub.PrepareIncoming(request)
            assert "PATH_OUTSIDE_IMAGE_DIRS" in [p.reason for p in out.problems]
            assert "disk /etc/shadow is outside the image directories" in " ".join(p.message for p in out.problems)
        else:
            code, reason, _ = await refusal(agent.stub.PrepareIncoming(request))
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PATH_OUTSIDE_IMAGE_DIRS")
    assert await agent.stub.ListPrepares(apb.ListPreparesRequest()) == apb.ListPreparesResponse()


async def test_a_block_device_the_guest_would_open_must_be_one(agent):
    """A "block device" at a file's path (/etc/shadow named in a type='block' disk) is refused."""
    xml = XML.replace(
        "</devices>",
        "<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/etc/shadow'/>"
        "<target dev='vdb' bus='virtio'/></disk></devices>",
    )
    out = await agent.stub.PrepareIncoming(
        prepare(xml, [plan(f"{agent.tree.images}/g1.qcow2")], block_devices={"/etc/shadow": ""}, dry_run=True)
    )
    assert [p.reason for p in out.problems] == ["BLOCK_DEVICE_MISMATCH"]
    assert "/etc/shadow is not a block device" in out.problems[0].message


async def test_inside_the_image_dirs_a_prepare_still_works(agent):
    """The control: the same request with a plain path creates the image (qemu-img through the fd)."""
    t = agent.tree
    out = await agent.stub.PrepareIncoming(prepare(XML, [plan(f"{t.images}/tenant/g1.qcow2")]))
    assert list(out.created) == [f"{t.images}/tenant/g1.qcow2"]
    assert (t.images / "tenant" / "g1.qcow2").stat().st_size > 0
    done = await agent.stub.CleanupIncoming(apb.CleanupIncomingRequest(prepare_id=out.prepare_id))
    assert list(done.removed) == [f"{t.images}/tenant/g1.qcow2"] and not (t.images / "tenant" / "g1.qcow2").exists()


# ---------------------------------------------------------------- RemoveSourceDisks: what it deletes


async def migrate_away(agent: Agent, name: str, disk: str) -> str:
    """A copy migration of ``name`` (disk at ``disk``) from host1 to host2 with migration id
    m-<name>: the source agent records what it copied. Returns the domain's UUID."""
    xml = make_domain_xml(name, memory_bytes=64 * MiB, disks=[("vda", disk, "qcow2")])
    uuid = agent.hv.add_domain(xml).uuid
    agent.hv.disk_sizes[disk] = (GiB, MiB)
    request = apb.MigrateRequest(
        domain=name,
        target_uri=agent.target.uri,
        migration_id=f"m-{name}",
        progress_interval_ms=10,
        options=tpb.MigrationOptions(storage=tpb.STORAGE_MODE_COPY_ALL),  # the definition moves with it,
    )
    events = [e async for e in agent.stub.Migrate(request)]
    assert events[-1].HasField("result")
    return uuid


async def test_remove_source_disks_removes_what_the_migration_copied(agent):
    t = agent.tree
    disk = t.images / "g1.qcow2"
    agent.host.create_image(str(disk), fmt="qcow2", virtual_size=GiB)
    uuid = await migrate_away(agent, "g1", str(disk))
    done = await agent.stub.RemoveSourceDisks(
        apb.RemoveSourceDisksRequest(domain_uuid=uuid, paths=[str(disk)], migration_id="m-g1")
    )
    assert list(done.removed) == [str(disk)] and not disk.exists()
    assert (t.images / "template.qcow2").exists()


REMOVE_CASES = [
    # (case, uuid ("real" = the migrated domain's), migration id, path, code, reason)
    ("a made-up UUID", "99999999-9999-4999-8999-999999999999", "m-g1", "{images}/template.qcow2",
     grpc.StatusCode.FAILED_PRECONDITION, "MIGRATION_NOT_RECORDED"),
    ("a made-up migration id", "real", "m-made-up", "{images}/template.qcow2",
     grpc.StatusCode.FAILED_PRECONDITION, "MIGRATION_NOT_RECORDED"),
    ("an image the migration did not copy", "real", "m-g1", "{images}/template.qcow2",
     grpc.StatusCode.FAILED_PRECONDITION, "PATH_NOT_RECORDED"),
    ("a made-up UUID, through a symlinked dir", "99999999-9999-4999-8999-999999999999", "m-g1",
     "{images}/linked/victim.qcow2", grpc.StatusCode.FAILED_PRECONDITION, "MIGRATION_NOT_RECORDED"),
    ("outside the image dirs", "real", "m-g1", "{outside}/victim.qcow2",
     grpc.StatusCode.INVALID_ARGUMENT, "PATH_NOT_LOCAL"),
    ("dot-dot", "real", "m-g1", "{images}/../outside/victim.qcow2", grpc.StatusCode.INVALID_ARGUMENT,
     "PATH_INVALID"),
    ("relative", "real", "m-g1", "victim.qcow2", grpc.StatusCode.INVALID_ARGUMENT, "PATH_INVALID"),
    ("NUL", "real", "m-g1", "{images}/g1.qcow2\0", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS"),
    ("no migration id", "real", "", "{images}/g1.qcow2", grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "uuid", "mid", "path", "code", "reason"), REMOVE_CASES, ids=[c[0] for c in REMOVE_CASES]
)
async def test_remove_source_disks_removes_nothing_else(agent, case, uuid, mid, path, code, reason):
    t = agent.tree
    disk = t.images / "g1.qcow2"
    agent.host.create_image(str(disk), fmt="qcow2", virtual_size=GiB)
    real = await migrate_away(agent, "g1", str(disk))
    before = t.everything()
    request = apb.RemoveSourceDisksRequest(
        domain_uuid=real if uuid == "real" else uuid,
        paths=[path.format(images=t.images, outside=t.outside)],
        migration_id=mid,
    )
    assert (await refusal(agent.stub.RemoveSourceDisks(request)))[:2] == (code, reason)
    assert t.everything() == before  # nothing removed: the template, the victim, g1's own disk
    assert (t.outside / "victim.qcow2").read_bytes() == b"precious"


async def test_a_recorded_disk_behind_a_symlinked_dir_is_not_followed(agent):
    """Even a disk the migration really copied is not removed through a link below the image dir."""
    t = agent.tree
    linked = f"{t.images}/linked/victim.qcow2"  # the domain's disk, as its XML names it
    uuid = await migrate_away(agent, "g2", linked)
    code, reason, hint = await refusal(
        agent.stub.RemoveSourceDisks(
            apb.RemoveSourceDisksRequest(domain_uuid=uuid, paths=[linked], migration_id="m-g2")
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PATH_SYMLINK") and "link" in hint
    assert (t.outside / "victim.qcow2").read_bytes() == b"precious"


# ---------------------------------------------------------------- the adapter itself


@pytest.mark.parametrize(
    ("path", "use", "reason"),
    [
        ("{outside}/x.qcow2", PathUse.CREATE, "PATH_OUTSIDE_IMAGE_DIRS"),
        ("{images}/linked/x.qcow2", PathUse.CREATE, "PATH_SYMLINK"),
        ("{images}/linked/victim.qcow2", PathUse.REMOVE, "PATH_SYMLINK"),
        ("{images}/link-to-victim.qcow2", PathUse.REMOVE, "PATH_SYMLINK"),
        ("{images}/link-to-victim.qcow2", PathUse.READ, "PATH_SYMLINK"),
        ("/etc/shadow", PathUse.READ, "PATH_OUTSIDE_IMAGE_DIRS"),
        ("{images}/a/../../outside/victim.qcow2", PathUse.REMOVE, "PATH_DOTDOT"),
        ("images/x.qcow2", PathUse.CREATE, "PATH_NOT_ABSOLUTE"),
    ],
)
def test_local_host_system_refuses_with_the_reason(tree, path, use, reason):
    host = LocalHostSystem([str(tree.images)], qemu_img=str(tree.root / "qemu-img"))
    (tree.images / "link-to-victim.qcow2").symlink_to(tree.outside / "victim.qcow2")
    path = path.format(images=tree.images, outside=tree.outside)
    problem = host.confine(path, use)
    assert problem is not None and problem.reason == reason
    with pytest.raises(Exception) as exc:  # noqa: PT011 - the problem's own error type
        if use is PathUse.REMOVE:
            host.remove(path)
        else:
            dest, backing = (path, "") if use is PathUse.CREATE else (f"{tree.images}/top.qcow2", path)
            host.create_image(dest, fmt="qcow2", virtual_size=GiB, backing_file=backing, backing_format="raw")
    assert getattr(exc.value, "reason", None) == reason
    assert (tree.outside / "victim.qcow2").read_bytes() == b"precious"
    assert os.listdir(tree.cwd) == [] and not (tree.images / "top.qcow2").exists()


def test_the_image_dir_itself_may_be_a_link(tmp_path):
    """The operator's configured directory is opened as configured (a link to a bigger disk)."""
    real = tmp_path / "big-disk"
    real.mkdir()
    (tmp_path / "images").symlink_to(real, target_is_directory=True)
    host = LocalHostSystem([str(tmp_path / "images")])
    host.create_image(str(tmp_path / "images" / "g1.qcow2"), fmt="qcow2", virtual_size=GiB)
    assert (real / "g1.qcow2").exists()
    assert host.remove(str(tmp_path / "images" / "g1.qcow2")) is True and not (real / "g1.qcow2").exists()


def test_plans_from_the_wire_keep_paths_as_sent():
    """The converter leaves paths to the confinement rules (so the reason names the rule)."""
    p = convert.disk_plan_from_pb(tpb.DiskPlan(target="vda", destination="../x", virtual_size=1))
    assert p.destination == "../x"

"""The target's CPU, memory and emulator checks (pure), and how PrepareIncoming gathers them."""

import doctest

import pytest

from ferry.agent import target_checks as tc
from ferry.agent.prepare import PrepareService
from ferry.agent.target_checks import CpuVerdict, TargetSnapshot, check_target, guest_cpu
from ferry.errors import DeadlineExceeded, FailedPrecondition, ResourceExhausted
from ferry.model import DomainInfo, HostFacts, HostMapping, JobStats, Problem, StorageMode
from ferry.testing.fake_hostsystem import FakeHostSystem

MiB = 1 << 20
GiB = 1 << 30
UUID = "0d6f7c4e-5a3b-4c8e-9f1a-2b3c4d5e6f70"
CUSTOM = (
    "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>"
    "<feature policy='require' name='avx512f'/></cpu>"
)
EMULATOR = "/usr/bin/qemu-system-x86_64"


def domain(cpu: str = "", memory_mib: int = 256, emulator: str = EMULATOR) -> str:
    emu = f"<emulator>{emulator}</emulator>" if emulator else ""
    return (
        f"<domain type='qemu'><name>g1</name><uuid>{UUID}</uuid><memory unit='MiB'>{memory_mib}</memory>"
        f"<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>{cpu}<devices>{emu}</devices></domain>"
    )


def test_docstring_examples():
    assert doctest.testmod(tc).failed == 0


@pytest.mark.parametrize(
    ("cpu", "mode", "model", "comparable"),
    [
        (CUSTOM, "custom", "qemu64", True),
        ("<cpu match='exact'><model>Haswell-noTSX</model></cpu>", "custom", "Haswell-noTSX", True),  # mode omitted
        (
            "<cpu mode='host-model'><model fallback='forbid'>Skylake-Server</model></cpu>",
            "host-model",
            "Skylake-Server",
            True,
        ),  # as a running guest shows it
        ("<cpu mode='host-model'/>", "host-model", "", False),  # nothing named to compare
        ("<cpu mode='host-passthrough' check='none'/>", "host-passthrough", "", False),  # the coordinator judges
        ("<cpu mode='maximum'/>", "maximum", "", False),
    ],
)
def test_guest_cpu(cpu, mode, model, comparable):
    got = guest_cpu(domain(cpu))
    assert got is not None
    assert (got.mode, got.model, got.comparable) == (mode, model, comparable)
    assert (got.arch, got.machine, got.virttype, got.emulator) == ("x86_64", "pc-q35-7.2", "qemu", EMULATOR)
    assert got.xml.startswith("<cpu") and got.xml.endswith(">")


def test_no_cpu_element_means_the_hypervisors_default():
    assert guest_cpu(domain()) is None
    assert guest_cpu("not xml") is None


def problems(xml: str, **snap) -> list[tuple[str, type]]:
    found = check_target(xml, [], HostMapping(), StorageMode.SHARED, TargetSnapshot(host_name="host2", **snap))
    return [(p.reason, p.kind) for p in found]


FAILED = Problem("CPU_CHECK_FAILED", "libvirt cannot check: Unknown CPU model Foo", "use ...", FailedPrecondition)


@pytest.mark.parametrize(
    ("xml", "snap", "expected"),
    [
        (domain(CUSTOM), {"cpu": CpuVerdict()}, []),
        (
            domain(CUSTOM),
            {"cpu": CpuVerdict(incompatible="Host CPU does not provide required features: avx512f")},
            [("CPU_INCOMPATIBLE", FailedPrecondition)],
        ),
        (domain(CUSTOM), {"cpu": CpuVerdict(failed=FAILED)}, [("CPU_CHECK_FAILED", FailedPrecondition)]),
        (domain(CUSTOM), {}, []),  # not compared
        (domain(CUSTOM), {"emulator_present": False}, [("EMULATOR_MISSING", FailedPrecondition)]),
        (domain(CUSTOM, emulator=""), {"emulator_present": False}, []),  # none named: libvirt's default
        (domain(memory_mib=4096), {"memory_available_bytes": 1 * GiB}, [("INSUFFICIENT_MEMORY", ResourceExhausted)]),
        (domain(memory_mib=1024), {"memory_available_bytes": 1 * GiB}, []),  # exactly enough
        (domain(memory_mib=4096), {"memory_available_bytes": 0}, []),  # unknown: not checked
        (
            domain(CUSTOM, memory_mib=4096),
            {"memory_available_bytes": GiB, "cpu": CpuVerdict(incompatible="x")},
            [("CPU_INCOMPATIBLE", FailedPrecondition), ("INSUFFICIENT_MEMORY", ResourceExhausted)],
        ),  # all at once
    ],
)
def test_cpu_memory_and_emulator_problems(xml, snap, expected):
    assert problems(xml, **snap) == expected


def test_cpu_incompatible_names_the_missing_features_and_what_to_do():
    verdict = CpuVerdict(incompatible="Host CPU does not provide required features: avx512f, avx512bw")
    [p] = check_target(
        domain(CUSTOM), [], HostMapping(), StorageMode.SHARED, TargetSnapshot(host_name="host2", cpu=verdict)
    )
    assert "avx512f, avx512bw" in p.message and "host2" in p.message and "qemu64" in p.message
    assert "target whose CPU has the features named" in p.hint and "hypervisor-cpu-baseline" in p.hint


def test_insufficient_memory_says_how_much():
    [p] = check_target(
        domain(memory_mib=4096),
        [],
        HostMapping(),
        StorageMode.SHARED,
        TargetSnapshot(host_name="host2", memory_available_bytes=1 * GiB),
    )
    assert p.message == "g1 needs 4.0 GiB of memory; host2 has 1.0 GiB available"
    assert "free 3.0 GiB on host2" in p.hint


# ---------------------------------------------------------------- what PrepareIncoming asks libvirt


class CpuHypervisor:
    """What PrepareService calls, with a CPU comparison and free memory to choose."""

    def __init__(self, verdict="", error=None, memory=8 * GiB):
        self.verdict, self.error, self.memory = verdict, error, memory
        self.compared: list[dict] = []

    async def find_domain(self, *, name="", uuid=""):
        return None

    async def job_stats(self, name_or_uuid, *, completed=False):
        return JobStats()

    async def host_facts(self):
        return HostFacts(hostname="host2", host_uuid="h2", memory_free_bytes=self.memory)

    async def compare_cpu(self, cpu_xml, *, arch, machine, virttype, emulator):
        self.compared.append(dict(cpu_xml=cpu_xml, arch=arch, machine=machine, virttype=virttype, emulator=emulator))
        if self.error is not None:
            raise self.error
        return self.verdict


def service(hv, tmp_path, host=None):
    from datetime import UTC, datetime

    return PrepareService(
        hv,
        host or FakeHostSystem(files={EMULATOR: 1}),
        tmp_path,
        default_ttl_s=60,
        clock=lambda: datetime(2026, 11, 25, tzinfo=UTC),
        host_name="host2",
    )


async def dry_run(svc, xml):
    out = await svc.prepare(xml, [], HostMapping(), StorageMode.SHARED, 0, "m-1", True)
    return [(p.reason, p.message) for p in out.problems]


async def test_prepare_compares_the_guests_cpu_with_this_hosts_hypervisor(tmp_path):
    hv = CpuHypervisor(verdict="Host CPU does not provide required features: avx512f")
    found = await dry_run(service(hv, tmp_path), domain(CUSTOM))
    assert [r for r, _ in found] == ["CPU_INCOMPATIBLE"] and "avx512f" in found[0][1]
    [asked] = hv.compared
    assert asked == dict(
        cpu_xml=guest_cpu(domain(CUSTOM)).xml, arch="x86_64", machine="pc-q35-7.2", virttype="qemu", emulator=EMULATOR
    )


async def test_a_real_prepare_is_refused_for_the_cpu(tmp_path):
    hv = CpuHypervisor(verdict="Host CPU does not provide required features: avx512f")
    with pytest.raises(FailedPrecondition) as exc:
        await service(hv, tmp_path).prepare(domain(CUSTOM), [], HostMapping(), StorageMode.SHARED, 0, "m-1", False)
    assert exc.value.reason == "CPU_INCOMPATIBLE"


async def test_no_comparison_without_a_cpu_model_or_for_host_passthrough(tmp_path):
    hv = CpuHypervisor(verdict="would be incompatible")
    svc = service(hv, tmp_path)
    assert await dry_run(svc, domain()) == []
    assert await dry_run(svc, domain("<cpu mode='host-passthrough'/>")) == []
    assert hv.compared == []


async def test_a_missing_emulator_is_a_problem_and_libvirt_picks_its_default(tmp_path):
    hv = CpuHypervisor()
    found = await dry_run(service(hv, tmp_path, FakeHostSystem()), domain(CUSTOM))
    assert [r for r, _ in found] == ["EMULATOR_MISSING"]
    assert hv.compared[0]["emulator"] == ""


async def test_a_comparison_libvirt_refuses_is_a_problem(tmp_path):
    hv = CpuHypervisor(
        error=FailedPrecondition(
            "libvirt cannot check: Unknown CPU model Foo", reason="CPU_CHECK_FAILED", hint="use a model it offers"
        )
    )
    assert [r for r, _ in await dry_run(service(hv, tmp_path), domain(CUSTOM))] == ["CPU_CHECK_FAILED"]


async def test_a_libvirt_that_does_not_answer_fails_the_prepare(tmp_path):
    hv = CpuHypervisor(error=DeadlineExceeded("compareHypervisorCPU did not return", reason="LIBVIRT_TIMEOUT"))
    with pytest.raises(DeadlineExceeded):
        await dry_run(service(hv, tmp_path), domain(CUSTOM))


async def test_memory_is_checked_against_what_the_host_has_available(tmp_path):
    hv = CpuHypervisor(memory=128 * MiB)
    assert [r for r, _ in await dry_run(service(hv, tmp_path), domain())] == ["INSUFFICIENT_MEMORY"]


async def test_a_domain_defined_here_does_not_change_the_memory_check(tmp_path):
    hv = CpuHypervisor(memory=512 * MiB)

    async def find_domain(*, name="", uuid=""):
        from ferry.model import DomainState

        return DomainInfo(name="g1", uuid=UUID, state=DomainState.SHUTOFF)

    hv.find_domain = find_domain
    assert await dry_run(service(hv, tmp_path), domain()) == []

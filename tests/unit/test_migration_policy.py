"""Migration progress (phases, progress that never runs backwards, the disk bytes of a completed
copy) and the driver's loop applying a convergence policy. The policy itself: test_convergence.py."""

import asyncio
import contextlib
import doctest
from dataclasses import replace

import pytest

from ferry.agent import progress as m
from ferry.agent.migration import Control, DriverPolicy, MigrationDriver, MigrationRequest
from ferry.agent.progress import changed, memory_pending, next_progress, phase_of
from ferry.convergence import Action, ConvergencePolicy, DowntimeStep, PostcopyMode, Watch, next_action, observe
from ferry.errors import Internal, Unavailable
from ferry.model import (
    DomainState,
    JobStats,
    MigrationOptions,
    MigrationPhase,
    MigrationProgress,
    MigrationResult,
    PolicyAction,
    StorageMode,
    disk_bytes_copied,
)
from ferry.testing.fake_hypervisor import FakeFleet, FakeHypervisor, make_domain_xml

MiB = 1 << 20
GiB = 1 << 30
P = MigrationPhase


def test_docstring_examples():
    assert doctest.testmod(m).failed == 0


@pytest.mark.parametrize(
    ("stats", "postcopy_started", "phase"),
    [
        (JobStats(), False, P.STARTING),  # no job yet
        (JobStats(active=True), False, P.STARTING),  # job, nothing moved
        (JobStats(active=True, disk_total=1024, disk_remaining=1024), False, P.DISK_MIRROR),
        (JobStats(active=True, disk_total=1024, disk_processed=1024), False, P.DISK_MIRROR),  # synced, memory next
        (
            JobStats(
                active=True,
                disk_total=1024,
                disk_processed=1024,
                memory_total=256,
                memory_processed=10,
                memory_remaining=246,
                iteration=1,
            ),
            False,
            P.PRECOPY,
        ),
        (JobStats(active=True, memory_total=256, memory_processed=10, memory_remaining=246), False, P.PRECOPY),
        (JobStats(active=True, memory_total=256, memory_processed=300, memory_remaining=40), True, P.POSTCOPY),
        (JobStats(active=True, memory_processed=300, postcopy=True), False, P.POSTCOPY),
        (JobStats(active=False, memory_processed=300), False, P.FINISHING),  # job over, call not back
        (JobStats(job_type="completed", memory_processed=300), False, P.FINISHING),  # completed, call not back
        # ended badly: QEMU said so, libvirt's migrate call has not returned its error yet
        (JobStats(job_type="cancelled", memory_processed=300), False, P.CANCELLED),  # aborted
        (JobStats(job_type="cancelled"), False, P.CANCELLED),  # aborted before data moved
        (JobStats(job_type="cancelled", memory_processed=300), True, P.CANCELLED),  # post-copy asked, aborted
        (JobStats(job_type="failed", disk_total=1024, disk_processed=512), False, P.FAILED),
        (JobStats(job_type="failed", memory_processed=300, postcopy=True), False, P.FAILED),
    ],
)
def test_phase_of(stats, postcopy_started, phase):
    assert phase_of(stats, postcopy_started=postcopy_started) is phase


@pytest.mark.parametrize(
    ("a", "b", "later"),
    [
        (P.STARTING, P.PRECOPY, P.PRECOPY),
        (P.POSTCOPY, P.PRECOPY, P.POSTCOPY),
        (P.PRECOPY, P.FINISHING, P.FINISHING),
        (P.PRECOPY, P.CANCELLED, P.CANCELLED),  # an end is later than any running phase
        (P.FINISHING, P.FAILED, P.FAILED),
        (P.CANCELLED, P.PRECOPY, P.CANCELLED),  # and stays
        (P.FAILED, P.CANCELLED, P.FAILED),  # the first end seen stays
    ],
)
def test_later_phase(a, b, later):
    assert m.later_phase(a, b) is later


def test_an_aborted_job_is_never_reported_finishing():
    """The polls an abort produces, in libvirt's order: the job runs, QEMU cancels it (libvirt
    says "cancelled"), the job is gone (nothing to report); the phases reported never say
    FINISHING and end CANCELLED."""
    polls = [
        precopy(100, 156, 1),
        JobStats(job_type="cancelled", memory_total=256 * MiB, memory_processed=120 * MiB),
        JobStats(),
    ]
    progress, seen = None, []
    for stats in polls:
        progress = next_progress(progress, phase_of(stats), stats)
        seen.append(progress.phase)
    assert seen == [P.PRECOPY, P.CANCELLED, P.CANCELLED]


@pytest.mark.parametrize(
    ("reported", "seen", "planned", "expected"),
    [
        (0, JobStats(disk_total=1000, disk_processed=1000), 800, 1000),  # the source saw it all copied
        (0, JobStats(disk_total=1000, disk_processed=600), 800, 1000),  # last poll mid-copy: it completed
        (0, JobStats(), 800, 800),  # no poll saw the copy: as planned
        (1200, JobStats(disk_total=1000), 800, 1200),  # a target that counts wins
        (0, JobStats(), 0, 0),  # nothing copied (shared storage)
    ],
)
def test_disk_bytes_of_a_completed_copy(reported, seen, planned, expected):
    assert disk_bytes_copied(reported, seen, planned) == expected


def precopy(processed, remaining, iteration, **kw):
    return JobStats(
        active=True,
        memory_total=256 * MiB,
        memory_processed=processed * MiB,
        memory_remaining=remaining * MiB,
        iteration=iteration,
        **kw,
    )


@pytest.mark.parametrize(
    ("prev", "new", "expected"),
    [
        # same phase and iteration: processed never drops, remaining never grows
        ((P.PRECOPY, precopy(100, 156, 1)), (P.PRECOPY, precopy(90, 160, 1)), (P.PRECOPY, 100, 156, 1)),
        # a new iteration may show more left (memory was re-dirtied)
        ((P.PRECOPY, precopy(250, 6, 1)), (P.PRECOPY, precopy(260, 60, 2)), (P.PRECOPY, 260, 60, 2)),
        # the iteration never goes back
        ((P.PRECOPY, precopy(250, 6, 2)), (P.PRECOPY, precopy(260, 60, 1)), (P.PRECOPY, 260, 6, 2)),
        # the phase never goes back (a stats glitch reporting "nothing processed")
        ((P.PRECOPY, precopy(100, 156, 1)), (P.DISK_MIRROR, precopy(0, 256, 0)), (P.PRECOPY, 100, 156, 1)),
        # a new phase is reported as it is
        ((P.PRECOPY, precopy(300, 40, 3)), (P.POSTCOPY, precopy(310, 30, 3)), (P.POSTCOPY, 310, 30, 3)),
    ],
)
def test_progress_never_runs_backwards(prev, new, expected):
    p = next_progress(None, *prev)
    q = next_progress(p, *new)
    assert (q.phase, q.stats.memory_processed // MiB, q.stats.memory_remaining // MiB, q.stats.iteration) == expected


def test_disk_remaining_clamped_within_mirror():
    d = JobStats(active=True, disk_total=100, disk_processed=40, disk_remaining=60)
    p = next_progress(None, P.DISK_MIRROR, d)
    q = next_progress(p, P.DISK_MIRROR, replace(d, disk_processed=45, disk_remaining=70))
    assert (q.stats.disk_processed, q.stats.disk_remaining) == (45, 60)


def test_elapsed_from_libvirt_or_clock_and_never_backwards():
    p = next_progress(None, P.PRECOPY, precopy(1, 1, 1), elapsed_ms=500)
    assert p.stats.time_elapsed_ms == 500
    q = next_progress(p, P.PRECOPY, precopy(1, 1, 1, time_elapsed_ms=300))
    assert q.stats.time_elapsed_ms == 500


def test_changed_ignores_elapsed_only():
    p = next_progress(None, P.PRECOPY, precopy(1, 1, 1, time_elapsed_ms=100))
    assert not changed(p, replace(p, stats=replace(p.stats, time_elapsed_ms=900)))
    assert changed(p, replace(p, stats=replace(p.stats, memory_processed=2)))
    assert changed(None, p)


def libvirt_copy_job(t: int) -> JobStats:
    """A copy as libvirt reports it, ``t`` s in: 64 MiB of disk mirrored at 4 MiB/s with no memory
    figures at all (memory starts after the disks), then 513 MiB of memory at 5 MiB/s."""
    if t < 16:
        return JobStats(active=True, disk_total=64 * MiB, disk_processed=t * 4 * MiB, disk_remaining=(64 - t * 4) * MiB)
    sent = (t - 16) * 5 * MiB
    return JobStats(
        active=True,
        disk_total=64 * MiB,
        disk_processed=64 * MiB,
        memory_total=513 * MiB,
        memory_processed=max(sent, 1),
        memory_remaining=513 * MiB - sent,
        iteration=1,
    )


@pytest.mark.parametrize("pending", [True, False])
def test_a_copy_of_disks_then_memory_is_never_taken_for_no_progress(pending):
    """Seen on the lab (policy busy, no progress 60 s): 60 s into a healthy pre-copy after a
    disk copy, "no progress for 60 s (data remaining not below 0 MiB)" switched it to post-copy.
    The disks' last remaining bytes were the low that memory had to beat; with the memory still
    to send counted during the mirror (``memory_pending``), every poll of pre-copy is a new low."""
    policy = ConvergencePolicy(progress_timeout_s=60)
    w = Watch(0.0, 3600.0)
    fired = []
    for t in range(0, 110):
        stats = libvirt_copy_job(t)
        if pending:
            stats = memory_pending(stats, 512 * MiB)
        w = observe(w, stats, float(t))
        step = next_action(policy, w, stats, phase_of(stats), float(t))
        if step.action is Action.ABORT_TIMEOUT:
            fired.append((t, step.reason))
    if pending:
        assert fired == []
    else:  # what the loop did before: the test reproduces it
        assert fired[0] == (75, "no progress for 60 s (data remaining not below 4 MiB): aborting")


async def test_a_disk_copy_reports_the_memory_still_to_send_from_its_start():
    """The bar, the ETA and a drain's bytes count the memory from the start of a copy, not once
    libvirt starts it after the disks (the fake reports a mirror as libvirt does: no memory)."""
    source, target = two_hosts()
    source.disk_sizes["/img/g1.qcow2"] = (256 * MiB, 256 * MiB)
    xml = make_domain_xml("g1", memory_bytes=GiB, disks=[("vda", "/img/g1.qcow2", "qcow2")])
    uuid = source.add_domain(xml).uuid
    assert (await source.job_stats(uuid)) == JobStats()
    request = MigrationRequest(
        domain=uuid,
        target_uri=target.uri,
        options=MigrationOptions(storage=StorageMode.COPY_ALL, bandwidth_mibps=1024),
        migrate_disks=("vda",),
        progress_interval_s=0.002,
    )
    events = [e async for e in MigrationDriver(source).run(request)]
    assert isinstance(events[-1], MigrationResult)
    mirror = [e for e in events if isinstance(e, MigrationProgress) and e.phase is P.DISK_MIRROR]
    assert mirror and all(e.stats.memory_total == GiB == e.stats.memory_remaining for e in mirror)
    assert all(e.eta_ms >= 1000 for e in mirror if e.eta_ms)  # the disk (0.25 s) and the memory (1 s)


# ---------------------------------------------------------------- the loop applies the policy


def two_hosts(source_type: type[FakeHypervisor] = FakeHypervisor, **source_kw) -> tuple[FakeHypervisor, FakeHypervisor]:
    """A source (of ``source_type``) and a target on one fake fleet, jobs stepping every 2 ms."""
    fleet = FakeFleet()
    return (
        source_type(hostname="source", fleet=fleet, step_s=0.002, **source_kw),
        FakeHypervisor(hostname="target", fleet=fleet, step_s=0.002),
    )


def busy_guest(
    source: FakeHypervisor, target: FakeHypervisor, policy: ConvergencePolicy
) -> tuple[str, MigrationRequest]:
    """A 1 GiB guest on ``source`` dirtying 4 GiB/s (faster than the fake link: it converges only
    by what the policy or an operator does), and the request moving it to ``target`` under
    ``policy``: its uuid and the request."""
    uuid = source.add_domain(make_domain_xml("g1", memory_bytes=GiB), dirty_bytes_per_s=4 * GiB).uuid
    request = MigrationRequest(
        domain=uuid, target_uri=target.uri, options=MigrationOptions(), progress_interval_s=0.005, convergence=policy
    )
    return uuid, request


class Recording(FakeHypervisor):
    """A fake source that remembers each max downtime set."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.downtimes = []

    async def set_max_downtime(self, name_or_uuid, ms):
        self.downtimes.append(ms)
        await super().set_max_downtime(name_or_uuid, ms)


async def test_the_driver_climbs_the_downtime_ladder_until_the_guest_converges():
    """A 1 GiB guest dirtying 4 GiB/s at 1 GiB/s needs a switch-over of about 1 s: it does not
    converge under libvirt's default 300 ms, nor the ladder's first steps; the loop applies the
    steps once each, in order, and the migration completes on the top one."""
    source, target = two_hosts(Recording)
    ladder = ConvergencePolicy(
        downtime_steps=(DowntimeStep(50), DowntimeStep(100, after_iterations=3), DowntimeStep(2000, after_iterations=5))
    )
    uuid, request = busy_guest(source, target, ladder)
    events = [e async for e in MigrationDriver(source).run(request)]
    assert isinstance(events[-1], MigrationResult)
    assert (await target.get_domain(uuid)).state is DomainState.RUNNING
    # the first step at once, the top one last (a slow poll may pass the middle one over)
    assert source.downtimes[0] == 50 and source.downtimes[-1] == 2000
    assert source.downtimes == sorted(set(source.downtimes))  # once per step, never down
    reported = [e.max_downtime_ms for e in events[:-1] if isinstance(e, MigrationProgress)]
    assert reported[0] == 50 and reported == sorted(reported)
    # each step taken is reported with its reason, by the policy
    steps = [e for e in events if isinstance(e, PolicyAction)]
    assert [a.action for a in steps] == ["set-max-downtime"] * len(source.downtimes)
    assert steps[0].reason == "max-downtime step 1 of 3: 50 ms" and steps[0].by == "policy (from the flags)"
    assert steps[-1].reason == "max-downtime step 3 of 3: 2000 ms"


class EndsBeforeTheCall(FakeHypervisor):
    """A source whose job, once its memory moves, reads as no job at every other poll: libvirt's
    empty answer between the job's end on the source and the migrate call's return."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.polls = self.empty = 0

    async def job_stats(self, name_or_uuid, *, completed=False):
        stats = await super().job_stats(name_or_uuid, completed=completed)
        self.polls += 1
        if stats.memory_processed and self.polls % 2:
            self.empty += 1
            return JobStats()
        return stats


async def test_an_empty_job_read_between_two_polls_does_not_turn_the_progress_back():
    """Seen on the lab: a drain's bytes went 315 then 151 MiB of 576 as the job ended, because
    the source's empty job (all zeros) became a snapshot with no totals."""
    source, target = two_hosts(EndsBeforeTheCall)
    uuid = source.add_domain(make_domain_xml("g1", memory_bytes=GiB)).uuid
    request = MigrationRequest(
        domain=uuid, target_uri=target.uri, options=MigrationOptions(), progress_interval_s=0.001
    )
    events = [e async for e in MigrationDriver(source).run(request)]
    assert isinstance(events[-1], MigrationResult)
    moving = [e.stats for e in events if isinstance(e, MigrationProgress) and e.stats.memory_processed]
    assert len(moving) > 2 and source.empty > 2
    assert all(s.memory_total == GiB for s in moving)
    through = [s.memory_total - s.memory_remaining for s in moving]
    assert through == sorted(through)


# ---------------------------------------------------------------- force-complete, operators


async def test_force_complete_without_postcopy_pauses_the_guest_and_it_runs_on_the_target():
    """A guest dirtying faster than the link under a policy without post-copy: the operator's
    force-complete pauses it, pre-copy then ends, and the guest runs (not paused) on the target."""
    source, target = two_hosts()
    uuid, request = busy_guest(source, target, ConvergencePolicy(name="precopy"))
    control = Control()
    events = []
    async for e in MigrationDriver(source).run(request, control):
        events.append(e)
        if isinstance(e, MigrationProgress) and e.stats.iteration >= 3 and not control.force_requested:
            control.force_requested = "alice"
    assert isinstance(events[-1], MigrationResult)
    actions = [e for e in events if isinstance(e, PolicyAction)]
    assert [(a.action, a.by) for a in actions] == [("pause-guest", "policy precopy")]
    assert actions[0].reason == "force-complete requested by alice: pausing the guest to finish (post-copy not allowed)"
    assert (await target.get_domain(uuid)).state is DomainState.RUNNING  # resumed there
    assert "suspend" in source.calls and "remote_resume" in source.calls


async def until(predicate, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.002)


@pytest.mark.parametrize("held", ["remote_completed_job", "remote_resume"])
async def test_a_guest_paused_to_finish_runs_on_the_target_even_when_its_caller_goes_away(held):
    """Force-complete paused the guest: it lands paused. Its resume on the target came after
    the completed job was read there (a remote call): a caller cancelled in between (coordinator
    fail-over, a deadline) left it paused on the target for good. It is resumed first now, and
    to its end even when the caller goes away during the resume itself."""
    source, target = two_hosts()
    uuid, request = busy_guest(source, target, ConvergencePolicy(name="precopy"))
    slow_target = source.hold_calls(held)  # the target's libvirtd slow to answer

    async def watch():
        async for _ in MigrationDriver(source).run(request, Control(force_requested="alice")):
            pass

    watcher = asyncio.create_task(watch())
    await until(lambda: held in source.calls)
    assert uuid in target.domains  # it landed
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    slow_target.set()
    await until(lambda: target.domains[uuid].state is DomainState.RUNNING)


async def test_a_guest_paused_to_finish_that_lands_after_its_caller_went_away_runs_on_the_target():
    """The caller goes away while the paused guest is still migrating: the driver resumes it on
    the source; when the job completes first, the guest lands paused (nothing left on the source
    to resume), and is resumed on the target once the unwatched call completed."""
    source, target = two_hosts()
    uuid, request = busy_guest(source, target, ConvergencePolicy(name="precopy"))
    slow_source = source.hold_calls("resume")  # the source's resume comes after the switch-over
    control = Control(force_requested="alice")

    async def watch():
        async with contextlib.aclosing(MigrationDriver(source).run(request, control)) as events:
            async for event in events:
                if isinstance(event, PolicyAction) and event.action == "pause-guest":
                    break  # the caller goes away

    watcher = asyncio.create_task(watch())
    await until(lambda: uuid in target.domains)  # landed, paused, while the source's resume waits
    slow_source.set()
    await watcher
    assert control.left_running is not None and await control.left_running  # the job completed
    await until(lambda: target.domains[uuid].state is DomainState.RUNNING)


async def test_force_complete_with_postcopy_allowed_switches_to_postcopy():
    source, target = two_hosts()
    _, request = busy_guest(source, target, ConvergencePolicy(name="busy", postcopy=PostcopyMode.MANUAL))
    control = Control(force_requested="bob")
    events = [e async for e in MigrationDriver(source).run(request, control)]
    result = events[-1]
    assert isinstance(result, MigrationResult) and result.job.postcopy
    assert [a.action for a in events if isinstance(a, PolicyAction)] == ["start-postcopy"]
    # after post-copy libvirt keeps no completed job on the target: the downtime is not a figure
    assert "suspend" not in source.calls


async def test_an_operators_max_downtime_is_kept_under_the_ladder():
    source, target = two_hosts(Recording)
    ladder = ConvergencePolicy(
        downtime_steps=(DowntimeStep(50), DowntimeStep(100, after_iterations=3), DowntimeStep(2000, after_iterations=6))
    )
    _, request = busy_guest(source, target, ladder)
    control = Control(operator_downtime_ms=500)  # an operator raised it at the start
    events = [e async for e in MigrationDriver(source).run(request, control)]
    assert isinstance(events[-1], MigrationResult)
    assert source.downtimes == [2000]  # 50 and 100 would have lowered the operator's 500 ms


# ---------------------------------------------------------------- post-copy recovery


class BrokenLink(FakeHypervisor):
    """A source whose post-copy link breaks once: the first migrate call fails after the switch
    and the domain reads "paused (post-copy failed)"; the target does not answer for
    ``down_probes`` probes; a resume call then completes the job."""

    def __init__(self, *, down_probes: int, **kw):
        super().__init__(**kw)
        self.down_probes = down_probes
        self.broken = False
        self.resumes: list[bool] = []

    async def migrate(self, name_or_uuid, **kw):
        self.resumes.append(kw.get("resume_postcopy", False))
        if kw.get("resume_postcopy"):
            self.broken = False
            job = self.jobs.get((await self.get_domain(name_or_uuid)).uuid)
            if job is not None:
                self.release()
                await asyncio.shield(job.done)
            return
        await super().migrate(name_or_uuid, **kw)

    async def start_postcopy(self, name_or_uuid):
        await super().start_postcopy(name_or_uuid)
        self.broken = True
        self.hold()  # the job stops moving: the link is gone

    async def job_stats(self, name_or_uuid, *, completed=False):
        stats = await super().job_stats(name_or_uuid, completed=completed)
        return replace(stats, postcopy_failed=True) if self.broken and stats.active else stats

    async def probe_peer(self, uri, *, migration_address=""):
        if self.down_probes > 0:
            self.down_probes -= 1
            raise Unavailable("no route to host", reason="TARGET_UNREACHABLE")
        return 1


POSTCOPY_AFTER_10MS = ConvergencePolicy(name="busy", postcopy=PostcopyMode.AFTER, postcopy_after_s=0.01)


async def test_a_broken_postcopy_is_resumed_once_the_target_answers():
    source, target = two_hosts(BrokenLink, down_probes=3)
    uuid, request = busy_guest(source, target, POSTCOPY_AFTER_10MS)
    policy = DriverPolicy(resume_backoff_s=(0.01,))
    events = [e async for e in MigrationDriver(source, policy=policy).run(request)]
    assert isinstance(events[-1], MigrationResult)
    actions = [e.action for e in events if isinstance(e, PolicyAction)]
    assert actions == ["start-postcopy", "postcopy-paused", "postcopy-resume"]
    assert source.resumes == [False, True]  # one resume, after three failed probes
    assert (await target.get_domain(uuid)).state is DomainState.RUNNING
    assert any(isinstance(e, MigrationProgress) and e.stats.postcopy_failed for e in events)


class FirstCallWaitsOnTarget(BrokenLink):
    """A broken post-copy whose resume completes while the first migrate call still waits on the
    target (until ``gives_up``); libvirt keeps the source's copy, paused, until that call ends,
    and then leaves it defined, shut off (what a CI run once saw after five resumes)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.leaves_source_definition = True
        self.leftover_stops_after_lookups = 1_000_000
        self.gives_up = asyncio.Event()

    async def migrate(self, name_or_uuid, **kw):
        await super().migrate(name_or_uuid, **kw)
        if not kw.get("resume_postcopy"):
            uuid = (await self.get_domain(name_or_uuid)).uuid
            await self.gives_up.wait()
            self._stopping.pop(uuid, None)
            self.domains[uuid].state = DomainState.SHUTOFF


async def test_a_copy_the_source_keeps_until_the_first_call_ends_is_removed_when_it_ends():
    source, target = two_hosts(FirstCallWaitsOnTarget, down_probes=1)
    uuid, request = busy_guest(source, target, POSTCOPY_AFTER_10MS)
    policy = DriverPolicy(resume_backoff_s=(0.01,), leftover_wait_s=0.05, leftover_poll_s=0.01)
    events = [e async for e in MigrationDriver(source, policy=policy).run(request)]
    result = events[-1]
    assert isinstance(result, MigrationResult)
    assert (result.source_state, result.source_defined) == (DomainState.PAUSED, True)  # still stopping
    assert (await target.get_domain(uuid)).state is DomainState.RUNNING
    source.gives_up.set()  # the first call ends: the copy stops, left defined, and is removed
    for _ in range(200):
        if await source.find_domain(uuid=uuid) is None:
            break
        await asyncio.sleep(0.01)
    assert await source.find_domain(uuid=uuid) is None


async def test_a_postcopy_that_cannot_be_resumed_in_time_fails_saying_what_to_do():
    source, target = two_hosts(BrokenLink, down_probes=10_000)
    _, request = busy_guest(source, target, POSTCOPY_AFTER_10MS)
    policy = DriverPolicy(resume_backoff_s=(0.01,), postcopy_recovery_s=0.2)
    with pytest.raises(Internal) as e:
        async for _ in MigrationDriver(source, policy=policy).run(request):
            pass
    assert e.value.reason == "POSTCOPY_FAILED" and "--postcopy-resume" in e.value.hint
    source.release()

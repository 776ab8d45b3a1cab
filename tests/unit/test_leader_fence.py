"""The agent's fence against deposed coordinator leaders: the rule, and the term kept on disk."""

import pytest

from ferry.agent.fencing import STALE_LEADER, LeaderFence, Verdict, verdict
from ferry.errors import FailedPrecondition, Unavailable


@pytest.mark.parametrize(
    ("highest", "term", "expected"),
    [
        (0, 0, Verdict.OK),  # no leader seen, no term sent
        (0, 7, Verdict.NEWER),  # the first leader
        (7, 7, Verdict.OK),
        (7, 9, Verdict.NEWER),  # a new leader
        (9, 7, Verdict.STALE),  # the old one, back from a pause
        (9, 0, Verdict.OK),  # an operator's tool: never fenced
    ],
)
def test_verdict(highest, term, expected):
    assert verdict(highest, term) is expected


async def test_a_change_from_an_older_term_is_refused_and_the_term_survives_a_restart(tmp_path):
    path = tmp_path / "state" / "leader-term"
    fence = LeaderFence(path)
    await fence.admit(7, "Migrate")
    fence.observe(9)  # the new leader's first look (a read) fences the old one
    with pytest.raises(FailedPrecondition) as exc:
        await fence.admit(7, "AbortMigration")
    assert exc.value.reason == STALE_LEADER and "AbortMigration" in exc.value.message and "9" in exc.value.message
    fence.observe(7)  # a deposed leader's read is answered, and changes nothing
    await fence.admit(0, "AbortMigration")
    again = LeaderFence(path)  # the agent restarted
    assert again.highest == 9
    with pytest.raises(FailedPrecondition):
        await again.admit(8, "CleanupIncoming")


async def test_an_unreadable_term_file_starts_over(tmp_path):
    path = tmp_path / "leader-term"
    path.write_text("garbage")
    fence = LeaderFence(path)
    assert fence.highest == 0
    await fence.admit(3, "Migrate")
    assert LeaderFence(path).highest == 3


async def test_after_etcd_went_back_the_leader_etcd_names_is_followed_and_no_other(tmp_path):
    """etcd restored from a backup: its revisions, and so the new leader's term (4,100), start
    again below the term the agent last saw (5,000). etcd's leader key is the judge."""
    path = tmp_path / "leader-term"
    leader: list[int | None] = [4100]
    asked: list[int] = []

    async def current_term() -> int | None:
        asked.append(1)
        if leader[0] is None:
            raise Unavailable("etcd down", reason="STORE_UNAVAILABLE")
        return leader[0]

    fence = LeaderFence(path, current_term)
    await fence.admit(5000, "Migrate")
    assert asked == []  # etcd is asked only about a term that went back
    with pytest.raises(FailedPrecondition):  # a leader deposed before the restore: not etcd's leader
        await fence.admit(4999, "Migrate")
    await fence.admit(4100, "Migrate")  # the leader etcd names now
    assert (fence.highest, fence.ceiling) == (4100, 5000)
    assert (LeaderFence(path).highest, LeaderFence(path).ceiling) == (4100, 5000)  # across a restart too
    with pytest.raises(FailedPrecondition):  # a leader from before the restore, back from a pause
        await fence.admit(4999, "AbortMigration")
    fence.observe(4999)  # its read changes nothing either
    assert fence.highest == 4100
    leader[0] = 4300  # the next leader after the restore, still below the old terms
    await fence.admit(4300, "Migrate")
    assert (fence.highest, fence.ceiling) == (4300, 5000)
    await fence.admit(5200, "Migrate")  # above every term from before: as usual, etcd not asked
    assert (fence.highest, fence.ceiling) == (5200, 0) and LeaderFence(path).ceiling == 0
    leader[0] = None  # etcd does not answer: a term that went back is refused, as without etcd
    with pytest.raises(FailedPrecondition):
        await fence.admit(4300, "Migrate")

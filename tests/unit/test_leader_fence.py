"""The agent's fence against deposed coordinator leaders: the rule, and the term kept on disk."""

import pytest

from ferry.agent.fencing import STALE_LEADER, LeaderFence, Verdict, verdict
from ferry.errors import FailedPrecondition


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


def test_a_change_from_an_older_term_is_refused_and_the_term_survives_a_restart(tmp_path):
    path = tmp_path / "state" / "leader-term"
    fence = LeaderFence(path)
    fence.admit(7, "Migrate")
    fence.observe(9)  # the new leader's first look (a read) fences the old one
    with pytest.raises(FailedPrecondition) as exc:
        fence.admit(7, "AbortMigration")
    assert exc.value.reason == STALE_LEADER and "AbortMigration" in exc.value.message and "9" in exc.value.message
    fence.observe(7)  # a deposed leader's read is answered, and changes nothing
    fence.admit(0, "AbortMigration")
    again = LeaderFence(path)  # the agent restarted
    assert again.highest == 9
    with pytest.raises(FailedPrecondition):
        again.admit(8, "CleanupIncoming")


def test_an_unreadable_term_file_starts_over(tmp_path):
    path = tmp_path / "leader-term"
    path.write_text("garbage")
    fence = LeaderFence(path)
    assert fence.highest == 0
    fence.admit(3, "Migrate")
    assert LeaderFence(path).highest == 3

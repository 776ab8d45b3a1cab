"""`ferry` given several coordinators runs a command again on another when the one it talks to
goes away under a call (``cli/main.py`` ``run``): a replica killed ends its calls UNAVAILABLE
(GOAWAY or a closed connection), one shutting down may cancel them (CANCELLED); no Ferry error
carries either. The command itself is a stand-in; no server is started."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest

from ferry.cli import main as cli_main
from ferry.errors import FerryError, NotFound
from ferry.rpc import Tls, to_status


class Lost(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "the call ended with its server"


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
async def test_a_call_lost_with_its_coordinator_runs_again_on_another(monkeypatch, capsys, code) -> None:
    asked: list[str] = []

    async def pick(addresses: Sequence[str], timeout_s: float = 2.0, tls: Tls | None = None) -> str:
        return addresses[len(asked) % len(addresses)]  # the next one that "answers"

    async def vms(self: cli_main.Cli) -> int:
        asked.append(self.address)
        if len(asked) == 1:
            raise Lost(code)
        return 0

    monkeypatch.setattr(cli_main, "pick_coordinator", pick)
    monkeypatch.setattr(cli_main.Cli, "vms", vms)
    got = await cli_main.run(["--coordinator", "127.0.0.1:1,127.0.0.1:2", "--insecure", "vms"])
    assert got == 0 and asked == ["127.0.0.1:1", "127.0.0.1:2"]
    assert "lost the coordinator at 127.0.0.1:1; trying the others" in capsys.readouterr().err


async def test_an_error_of_the_coordinator_is_not_tried_again(monkeypatch, capsys) -> None:
    asked: list[str] = []

    async def pick(addresses: Sequence[str], timeout_s: float = 2.0, tls: Tls | None = None) -> str:
        return addresses[0]

    async def vms(self: cli_main.Cli) -> int:
        asked.append(self.address)
        raise Lost(grpc.StatusCode.INTERNAL)

    monkeypatch.setattr(cli_main, "pick_coordinator", pick)
    monkeypatch.setattr(cli_main.Cli, "vms", vms)
    got = await cli_main.run(["--coordinator", "127.0.0.1:1,127.0.0.1:2", "--insecure", "vms"])
    assert got == 3 and asked == ["127.0.0.1:1"]


class Refused(grpc.RpcError):
    """A call the coordinator answered with a Ferry error."""

    def __init__(self, err: FerryError) -> None:
        self._status = to_status(err)

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self):  # noqa: ANN201 - what grpc's own errors carry
        return self._status.trailing_metadata


class Busy(Lost):
    def details(self) -> str:
        return "Concurrent RPC limit exceeded!"


UNKNOWN = NotFound("no host host3 is known", reason="HOST_UNKNOWN", hint="see `ferry hosts`")


@pytest.mark.parametrize(
    ("first", "exit_code", "out"),
    [
        # the replica forgot the host, then died before it answered: the retry finds it unknown
        (Lost(grpc.StatusCode.UNAVAILABLE), 0, "host3 forgotten (by the coordinator that went away"),
        # turned away before any coordinator took it up: unknown on the retry is the operator's typo
        (Busy(grpc.StatusCode.RESOURCE_EXHAUSTED), 2, ""),
    ],
)
async def test_a_forget_retried_after_its_coordinator_went_away_is_not_reported_unknown(
    monkeypatch, capsys, first, exit_code, out
) -> None:
    asked: list[str] = []

    class Stub:
        def __init__(self, channel: object) -> None:
            pass

        async def ForgetHost(self, request: object, timeout: float | None = None) -> object:  # noqa: N802
            asked.append("forget")
            raise first if len(asked) == 1 else Refused(UNKNOWN)

    async def pick(addresses: Sequence[str], timeout_s: float = 2.0, tls: Tls | None = None) -> str:
        return addresses[len(asked) % len(addresses)]

    monkeypatch.setattr(cli_main, "pick_coordinator", pick)
    monkeypatch.setattr(cli_main, "BUSY_BACKOFF_S", (0.01,))
    monkeypatch.setattr(cli_main.cgrpc, "CoordinatorStub", Stub)
    got = await cli_main.run(["--coordinator", "127.0.0.1:1,127.0.0.1:2", "--insecure", "hosts", "forget", "host3"])
    captured = capsys.readouterr()
    assert (got, len(asked)) == (exit_code, 2), captured
    assert out in captured.out
    if exit_code:
        assert "HOST_UNKNOWN" in captured.err

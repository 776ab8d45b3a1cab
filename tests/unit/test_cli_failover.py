"""`ferry` given several coordinators runs a command again on another when the one it talks to
goes away under a call (``cli/main.py`` ``run``): a replica killed ends its calls UNAVAILABLE
(GOAWAY or a closed connection), one shutting down may cancel them (CANCELLED); no Ferry error
carries either. The command itself is a stand-in; no server is started."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest

from ferry.cli import main as cli_main
from ferry.rpc import Tls


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

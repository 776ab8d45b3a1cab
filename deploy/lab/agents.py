"""Ferry agents inside the lab hosts: config file, start, gRPC health check.

An agent that cannot start (not written yet, crashes, never answers) is recorded as failed
with the reason; the lab's hosts stay up regardless. With a control plane, each agent's config
gets a ``[registry]`` section: it announces itself in etcd, where the coordinators find it.

``wait_serving`` / ``health_serving`` work for any gRPC process with a unix endpoint
(coordinators too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ferry.lab import procs
from ferry.lab.controlplane import Registry, render_registry_section
from ferry.lab.hosts import nsenter
from ferry.lab.procs import SYSTEM_CLOCK, Clock, ProcessRecord
from ferry.lab.state import Component
from ferry.lab.topology import HostPlan, LabPaths, render_agent_toml

AGENT_READY_TIMEOUT_S = 30.0
HEALTH_CALL_TIMEOUT_S = 1.0

T = TypeVar("T")


def agent_config_path(paths: LabPaths, host: str) -> Path:
    return paths.host(host) / "agent.toml"


def agent_log_path(paths: LabPaths, host: str) -> Path:
    return paths.host(host) / "agent.log"


def default_agent_command() -> list[str]:
    """``python -m ferry.agent.main`` with ferry-lab's own interpreter (so the same Ferry)."""
    return [sys.executable, "-m", "ferry.agent.main"]


def render_agent_config(
    paths: LabPaths, plan: HostPlan, registry: Registry | None, peers: Sequence[HostPlan] = ()
) -> str:
    """agent.toml: the agreed [agent] table, plus [registry] when the lab runs a control plane."""
    text = render_agent_toml(paths, plan, peers)
    return text if registry is None else text + "\n" + render_registry_section(registry, plan)


def start_agent(
    paths: LabPaths,
    plan: HostPlan,
    holder: ProcessRecord,
    command: Sequence[str] | None = None,
    *,
    registry: Registry | None = None,
    peers: Sequence[HostPlan] = (),
) -> Component:
    """Write agent.toml and start the agent (``command --config agent.toml``) inside the
    host's namespaces; ``peers``: the lab's hosts it may migrate to."""
    config = agent_config_path(paths, plan.name)
    config.write_text(render_agent_config(paths, plan, registry, peers))
    paths.agent_socket(plan.name).unlink(missing_ok=True)
    paths.metrics_socket(plan.name).unlink(missing_ok=True)
    argv = nsenter(holder.pid, [*(command or default_agent_command()), "--config", str(config)])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = procs.spawn(argv, log=agent_log_path(paths, plan.name), env=env)
    return Component(
        name=f"{plan.name}/agent",
        kind="agent",
        place=plan.name,
        process=process,
        endpoints={
            "grpc": plan.agent_listen,
            "unix": plan.agent_address,
            "metrics": plan.metrics_address,
            "metrics_tcp": plan.metrics_listen,
            "config": str(config),
        },
    )


def wait_for_agents(
    agents: list[Component], *, timeout: float = AGENT_READY_TIMEOUT_S, clock: Clock = SYSTEM_CLOCK
) -> list[Component]:
    return wait_serving(agents, timeout=timeout, clock=clock)


def wait_serving(
    agents: list[Component], *, timeout: float = AGENT_READY_TIMEOUT_S, clock: Clock = SYSTEM_CLOCK
) -> list[Component]:
    """Wait (one shared time limit) until each gRPC process (agent, coordinator) answers a
    health check on its unix socket; returns the components with ``error`` set for those that
    did not."""
    deadline = clock.now() + timeout
    pending = {a.name: a for a in agents}
    done: dict[str, Component] = {}
    while pending:
        for name, agent in list(pending.items()):
            assert agent.process is not None
            if not procs.is_alive(agent.process):
                code = procs.exit_status(agent.process)
                done[name] = _failed(
                    agent, f"exited during start (exit code {code}): {procs.log_tail(agent.process.log)}"
                )
                del pending[name]
            elif health_serving(agent.endpoints["unix"]):
                done[name] = agent
                del pending[name]
        if not pending:
            break
        if clock.now() >= deadline:
            for name, agent in pending.items():
                done[name] = _failed(
                    agent, f"no gRPC health answer on {agent.endpoints['unix']} within {timeout:.0f} s"
                )
            break
        clock.sleep(0.2)
    return [done[a.name] for a in agents]


def _failed(agent: Component, why: str) -> Component:
    log = agent.process.log if agent.process else ""
    return Component(
        name=agent.name,
        kind=agent.kind,
        place=agent.place,
        process=agent.process,
        endpoints=agent.endpoints,
        error=f"{why} (log: {log})",
    )


def health_serving(address: str, timeout: float = HEALTH_CALL_TIMEOUT_S) -> bool:
    """grpc.health.v1 Check on ``address`` says SERVING."""
    if address.startswith("unix:") and not Path(address[5:]).exists():
        return False
    return run_async(_health_check(address, timeout))


async def _health_check(address: str, timeout: float) -> bool:
    from ferry.rpc import create_channel, serving

    channel = create_channel(address)
    try:
        return await serving(channel, timeout_s=timeout)
    finally:
        await channel.close()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even when the caller itself runs inside
    an event loop (e.g. an async test calling the lab API)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()

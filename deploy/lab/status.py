"""``ferry-lab status``: every component of a lab, whether it runs, and how to reach it.

``build_status`` gathers (reads /proc, asks libvirtd, the agents, the coordinators and etcd,
which also says which coordinator leads); ``render_text`` is a pure function of what it
gathered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferry.errors import FerryError
from ferry.lab import procs
from ferry.lab.drills import spoken_name
from ferry.lab.state import CORE, Component, HostRecord, LabState
from ferry.lab.topology import CORE_BRIDGE, PREFIX_LEN

# Without these a lab is not usable; agents may fail on their own and the hosts stay up.
ESSENTIAL_KINDS = ("holder", "libvirtd")


def lab_processes_alive(state: LabState) -> str:
    """ "all" (every holder and libvirtd runs), "some" or "none" (nothing recorded runs)."""
    essential = [c for c in state.components if c.kind in ESSENTIAL_KINDS]
    if essential and all(procs.is_alive(c.process) for c in essential):
        return "all"
    if any(procs.is_alive(c.process) for c in state.components):
        return "some"
    return "none"


def component_status(component: Component | None, *, probe: bool = False) -> dict[str, Any] | None:
    """One component as status reports it. ``state``: running, failed (did not start as it
    should; see ``error``) or dead (it ran and is gone)."""
    if component is None:
        return None
    alive = procs.is_alive(component.process)
    if component.error:
        state = "failed"
    elif procs.is_paused(component.process):
        state = "paused"  # SIGSTOP (a drill): runs, answers nothing
    else:
        state = "running" if alive else "dead"
    entry: dict[str, Any] = {
        "name": component.name,
        "kind": component.kind,
        "place": component.place,
        "pid": component.process.pid if component.process else None,
        "alive": alive,
        "state": state,
        "endpoints": dict(component.endpoints),
        "error": component.error,
        "log": component.process.log if component.process else "",
    }
    if component.kind in ("agent", "coordinator"):
        serving = None
        if probe and alive and state != "paused" and "unix" in component.endpoints:
            from ferry.lab.agents import health_serving

            serving = health_serving(component.endpoints.get("unix", ""))
        entry["serving"] = serving
    return entry


def control_plane_status(state: LabState, components: list[dict[str, Any]], *, probe: bool) -> dict[str, Any] | None:
    """etcd health and the leader, marked on the etcd and coordinator entries of
    ``components``; None when the lab runs no etcd."""
    from ferry.lab.control import etcd_health, read_leader
    from ferry.lab.controlplane import lab_cli_config
    from ferry.lab.pki import etcd_admin
    from ferry.lab.topology import LabPaths

    members = [e for e in components if e["kind"] == "etcd"]
    if not members:
        return None
    core = state.holder(CORE)
    urls = [e["endpoints"].get("client", "") for e in members]
    leader: str | None = None
    leader_error = "" if probe else "not asked"
    health: dict[str, bool] = {}
    if probe and core is not None and procs.is_alive(core):
        try:
            admin = etcd_admin(LabPaths(Path(state.lab_dir)))
            health = etcd_health(core.pid, urls, admin)
            leader = read_leader(core.pid, urls, admin)
        except FerryError as exc:
            leader_error = exc.message
    for entry in members:
        entry["healthy"] = health.get(entry["endpoints"].get("client", "")) if probe else None
    for entry in components:
        if entry["kind"] == "coordinator":
            entry["leader"] = entry["id"] == leader
    return {
        "leader": leader,
        "leader_error": leader_error,
        "etcd_endpoints": urls,
        "coordinators": [e["endpoints"].get("unix", "") for e in components if e["kind"] == "coordinator"],
        "cli_config": str(lab_cli_config(LabPaths(Path(state.lab_dir)))),
        "user_cli_config": state.user_cli_config,
    }


def _guests(host: HostRecord, libvirtd_alive: bool) -> list[dict[str, str]] | None:
    if not libvirtd_alive:
        return None
    from ferry.lab.hosts import VIRSH_TIMEOUT_S, virsh_argv

    try:
        every = procs.run(virsh_argv(host.libvirt_uri, ["list", "--all", "--name"]), timeout=VIRSH_TIMEOUT_S)
        active = procs.run(virsh_argv(host.libvirt_uri, ["list", "--name"]), timeout=VIRSH_TIMEOUT_S)
    except FerryError:
        return None
    active_names = set(active.stdout.split())
    return [{"name": n, "state": "active" if n in active_names else "inactive"} for n in every.stdout.split()]


def _link_up(state: LabState, host: HostRecord) -> bool | None:
    from ferry.lab.faults import link_up

    try:
        return link_up(state, host.name)
    except FerryError:
        return None


def build_status(lab_dir: Path, state: LabState | None, *, probe: bool = True) -> dict[str, Any]:
    if state is None:
        return {"lab_dir": str(lab_dir), "up": False, "core": None, "hosts": [], "components": []}
    host_kinds = {"holder", "libvirtd", "agent"}
    hosts_out = []
    for host in state.hosts:
        libvirtd = state.component(f"{host.name}/libvirtd")
        libvirtd_entry = component_status(libvirtd)
        hosts_out.append(
            {
                "name": host.name,
                "address": host.address,
                "host_uuid": host.host_uuid,
                "guest_bridge": host.guest_bridge,
                "libvirt_uri": host.libvirt_uri,
                "tcp_uri": host.tcp_uri,
                "agent_address": host.agent_address,
                "agent_listen": host.agent_listen,
                "holder": component_status(state.component(host.name)),
                "libvirtd": libvirtd_entry,
                "agent": component_status(state.component(f"{host.name}/agent"), probe=probe),
                "guests": _guests(host, bool(libvirtd_entry and libvirtd_entry["alive"])) if probe else None,
                "image_fs_bytes": host.image_fs_bytes,
                "link_up": _link_up(state, host) if probe else None,
            }
        )
    host_names = {h.name for h in state.hosts}
    others = []
    for component in state.components:
        if (component.place in host_names and component.kind in host_kinds) or component.name == CORE:
            continue
        entry = component_status(component, probe=probe)
        assert entry is not None
        entry["id"] = component.name.partition("/")[2] or component.name
        entry["label"] = spoken_name(component)
        others.append(entry)
    control = control_plane_status(state, others, probe=probe)
    return {
        "lab_dir": str(lab_dir),
        "up": lab_processes_alive(state) == "all",
        "created": state.created,
        "core": {
            "address": f"{state.core_address}/{PREFIX_LEN}",
            "bridge": CORE_BRIDGE,
            "holder": component_status(state.component(CORE)),
        },
        "hosts": hosts_out,
        "control_plane": control,
        "leader": control["leader"] if control else None,
        "components": others,
    }


# ---------------------------------------------------------------- text (pure)


def _proc_line(label: str, entry: dict[str, Any] | None, extra: str = "", *, width: int = 9) -> str:
    if entry is None:
        return f"  {label:<{width}} -"
    pid = entry["pid"] if entry["pid"] is not None else "-"
    state = entry["state"].upper() if entry["state"] != "running" else "running"
    if entry["state"] == "running" and entry.get("serving") is not None:
        state = "serving" if entry["serving"] else "running, NOT SERVING"
    if entry["state"] == "running" and entry.get("healthy") is not None:
        state = "healthy" if entry["healthy"] else "running, NOT HEALTHY"
    if entry.get("leader"):
        state += ", LEADER"
    line = f"  {label:<{width}} pid {pid:<8} {state:<8} {extra}".rstrip()
    if entry["error"]:
        line += f"\n  {'':<{width}} {entry['error']}"
    return line


def _metrics_lines(entry: dict[str, Any] | None, *, width: int = 9) -> list[str]:
    """Where an agent's or coordinator's metrics are (from the root namespace, and over the lab
    network from the core namespace, as a fleet's Prometheus scrapes them -- the hosts' firewall
    lets only the core in: HTTPS, for a reader's certificate such as the lab's ``pki/reader.lab.pem``)."""
    if entry is None or not entry["endpoints"].get("metrics"):
        return []
    socket = entry["endpoints"]["metrics"].removeprefix("unix:")
    inside = entry["endpoints"].get("metrics_tcp", "")
    return [
        f"  {'metrics':<{width}} curl --unix-socket {socket} http://localhost/metrics"
        + (f"  (from core: https://{inside}/metrics, with pki/reader.lab.pem)" if inside else "")
    ]


def _control_lines(control: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    leader = control["leader"] or (f"unknown ({control['leader_error']})" if control["leader_error"] else "NONE")
    lines = [f"control   leader {leader}"]
    for entry in entries:
        if entry["kind"] == "etcd":
            extra = entry["endpoints"].get("client", "")
        else:
            extra = "  ".join(v for k, v in entry["endpoints"].items() if k in ("grpc", "unix"))
        lines.append(_proc_line(entry["label"], entry, extra, width=14))
        lines += _metrics_lines(entry, width=14)
    cli = (
        f"configured in {control['user_cli_config']}"
        if control["user_cli_config"]
        else f"FERRY_CONFIG={control['cli_config']} ferry hosts"
    )
    lines.append(f"  {'ferry CLI':<14} {cli}")
    return lines


def render_text(status: dict[str, Any]) -> str:
    """Human-readable status: one block per host, dead or failed parts in capitals."""
    if status["core"] is None:
        return f"no lab in {status['lab_dir']}\n"
    lines = [f"lab {status['lab_dir']}: {'up' if status['up'] else 'NOT (fully) UP'} (started {status['created']})"]
    core = status["core"]
    lines.append(f"core      {core['address']} on {core['bridge']}")
    lines.append(_proc_line("holder", core["holder"]))
    for host in status["hosts"]:
        head = f"{host['name']:<9} {host['address']}  host_uuid {host['host_uuid']}"
        head += f"  guest bridge {host['guest_bridge']}"
        if host.get("image_fs_bytes"):
            head += f"  image fs {host['image_fs_bytes'] >> 20} MiB"
        if host.get("link_up") is False:
            head += f"  LINK DOWN (ferry-lab heal {host['name']})"
        lines.append(head)
        lines.append(_proc_line("holder", host["holder"]))
        lines.append(_proc_line("libvirtd", host["libvirtd"], f"{host['libvirt_uri']}  {host['tcp_uri']}"))
        lines.append(_proc_line("agent", host["agent"], f"{host['agent_address']}  {host['agent_listen']}"))
        lines += _metrics_lines(host["agent"])
        if host["guests"] is not None:
            guests = ", ".join(f"{g['name']} ({g['state']})" for g in host["guests"]) or "none"
            lines.append(f"  {'guests':<9} {guests}")
        elif host["libvirtd"] is not None and not host["libvirtd"]["alive"]:
            lines.append(f"  {'guests':<9} unknown (libvirtd not running)")
    control = status.get("control_plane")
    plane = [e for e in status["components"] if e["kind"] in ("etcd", "coordinator")]
    if control is not None:
        lines += _control_lines(control, plane)
    for entry in status["components"]:
        if control is not None and entry in plane:
            continue
        endpoints = "  ".join(entry["endpoints"].values())
        lines.append(f"{entry['name']:<9} ({entry['kind']} in {entry['place']})")
        lines.append(_proc_line("process", entry, endpoints))
    return "\n".join(lines) + "\n"

"""Reading Ferry's TOML config files: typed getters whose errors name the file, section and key.

Shared by the agent's and the coordinator's config modules; each parses its file once at start into
frozen dataclasses. Every mistake is an InvalidArgument (reason CONFIG_INVALID) with a hint.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ferry.errors import InvalidArgument
from ferry.rpc import Tls

T = TypeVar("T")
TLS_KEYS = ("ca", "cert", "key")
TLS_SECTION_KEYS = (*TLS_KEYS, "insecure")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_KEYS = ("format", "level")
METRICS_KEYS = ("listen", "enabled", "insecure")


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: the shape of the daemon's log lines (``ferry.logsetup``)."""

    format: str = "text"  # "text" | "json"
    level: str = "info"  # the --log-level option wins


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: where the Prometheus endpoint (``GET /metrics``) listens.

    On unless ``enabled = false``; ``listen`` holds ``HOST:PORT`` and/or ``unix:/path``. Without a
    ``listen``, each daemon picks its default (``metrics_listen_default``). TCP addresses serve HTTPS
    with the daemon's ``[tls]`` and require a reader's client certificate; ``insecure = true`` serves
    plain HTTP to anyone instead (logged as a warning at start).
    """

    listen: tuple[str, ...] = ()
    enabled: bool = True
    insecure: bool = False

    def tls(self, daemon_tls: Tls | None) -> Tls | None:
        """The TLS the TCP endpoints serve: the daemon's, unless ``insecure = true``."""
        return None if self.insecure else daemon_tls


def bad(source: str, what: str, hint: str) -> InvalidArgument:
    return InvalidArgument(f"{source}: {what}", reason="CONFIG_INVALID", hint=hint)


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise bad(source, f"not valid TOML: {exc}", "fix the syntax at the line named") from exc


def read_config(path: str | Path, parse: Callable[..., T]) -> T:
    """Read the file at ``path`` and ``parse(text, source=..., base_dir=...)`` it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read config {path}: {exc.strerror}",
            reason="CONFIG_UNREADABLE",
            hint="pass an existing, readable file with --config",
        ) from exc
    return parse(text, source=str(path), base_dir=path.parent)


class Table:
    """One TOML table being read: typed getters that name the section and key in every error."""

    def __init__(self, data: Any, section: str, source: str, allowed: Collection[str]) -> None:
        if not isinstance(data, dict):
            raise bad(source, f"[{section}] must be a table", f"write [{section}] followed by its keys")
        for key in data:
            if key not in allowed:
                raise bad(
                    source,
                    f"unknown key {key!r} in [{section}]",
                    f"remove {key!r} or fix its spelling; known keys: {', '.join(sorted(allowed))}",
                )
        self.data, self.section, self.source = data, section, source

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def require(self, *keys: str) -> None:
        missing = [k for k in keys if k not in self.data]
        if missing:
            raise bad(
                self.source,
                f"[{self.section}] lacks {', '.join(missing)}",
                f"add {', '.join(missing)} to [{self.section}]",
            )

    def _err(self, key: str, what: str, example: str) -> InvalidArgument:
        return bad(
            self.source, f"[{self.section}] {key} must be {what}, not {self.data[key]!r}", f"e.g. {key} = {example}"
        )

    def string(self, key: str, *, nonempty: bool = True) -> str:
        v = self.data[key]
        if not isinstance(v, str) or (nonempty and not v):
            raise self._err(key, "a non-empty string" if nonempty else "a string", '"..."')
        return v

    def strings(self, key: str, *, nonempty: bool = True) -> tuple[str, ...]:
        v = self.data[key]
        if not isinstance(v, list) or (nonempty and not v) or not all(isinstance(x, str) and x for x in v):
            what = "a non-empty list of non-empty strings" if nonempty else "a list of non-empty strings"
            raise self._err(key, what, '["...", "..."]')
        return tuple(v)

    def number(self, key: str, *, integer: bool = False) -> float:
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, (int,) if integer else (int, float)) or v <= 0:
            raise self._err(key, f"a positive {'integer' if integer else 'number'}", "30")
        return v

    def names(self, key: str) -> dict[str, str]:
        v = self.data[key]
        if not isinstance(v, dict) or not all(isinstance(x, str) and x for x in v.values()):
            raise self._err(key, "a table of logical name = host name", '{ guest = "br-guest" }')
        return dict(v)

    def path(self, key: str, base: Path) -> Path:
        return base / self.string(key)

    def flag(self, key: str) -> bool:
        v = self.data[key]
        if not isinstance(v, bool):
            raise self._err(key, "true or false", "true")
        return v


def tls_of(t: Table, base: Path, *, required: bool) -> Tls | None:
    """ca/cert/key of a table as Tls: all three or (unless required) none."""
    present = [k for k in TLS_KEYS if k in t]
    if not present and not required:
        return None
    missing = [k for k in TLS_KEYS if k not in t]
    if missing:
        raise bad(
            t.source,
            f"[{t.section}] has {', '.join(present) or 'nothing'} but lacks {', '.join(missing)}",
            "give all of ca, cert and key (PEM files) for mutual TLS",
        )
    return Tls(ca=t.path("ca", base), cert=t.path("cert", base), key=t.path("key", base))


def insecure_of(t: Table) -> bool:
    """``insecure = true`` in a table (plaintext chosen on purpose); refused beside ca/cert/key."""
    if "insecure" not in t or not t.flag("insecure"):
        return False
    given = [k for k in TLS_KEYS if k in t]
    if given:
        raise bad(
            t.source,
            f"[{t.section}] says insecure = true but also gives {', '.join(given)}",
            "either mutual TLS (ca, cert, key) or insecure = true, not both",
        )
    return True


def tls_section(doc: dict[str, Any], source: str, base: Path) -> Tls | None:
    """The daemon's ``[tls]`` table: mutual TLS (ca, cert, key: all three) unless it says
    ``insecure = true`` (then None: plaintext). TLS is the default: no table is an error too."""
    if "tls" not in doc:
        raise bad(
            source,
            "no [tls] table: mutual TLS is required",
            "add [tls] with ca, cert and key (PEM files, see ferry-certs), or insecure = true for a test setup",
        )
    t = Table(doc["tls"], "tls", source, TLS_SECTION_KEYS)
    if insecure_of(t):
        return None
    return tls_of(t, base, required=True)


def etcd_tls_of(t: Table, base: Path, daemon_tls: Tls | None) -> Tls | None:
    """Client TLS to etcd from a table (``[etcd]``, ``[registry]``): its own ca/cert/key (all
    three: etcd's RBAC reads the user from the client certificate), else the daemon's ``[tls]``
    files (one certificate per identity, ``ferry/identity.py``). Plaintext only with
    ``insecure = true`` in this very table: a missing CA never drops to plaintext silently."""
    if insecure_of(t):
        return None
    own = tls_of(t, base, required=False)
    if own is not None:
        return own
    if daemon_tls is None:
        raise bad(
            t.source,
            f"[{t.section}] has no ca, cert and key, and [tls] is insecure",
            f"give ca, cert and key in [{t.section}], or say insecure = true there too",
        )
    return daemon_tls


def log_of(t: Table) -> LogConfig:
    """``[log]``: format = "text" | "json", level = "debug" | "info" | "warning" | "error"."""
    values: dict[str, str] = {}
    for key, allowed in (("format", LOG_FORMATS), ("level", LOG_LEVELS)):
        if key in t:
            value = t.string(key).lower()
            if value not in allowed:
                raise bad(
                    t.source,
                    f"[log] {key} must be one of {', '.join(allowed)}, not {t.data[key]!r}",
                    f'e.g. {key} = "{allowed[0]}"',
                )
            values[key] = value
    return LogConfig(**values)


def metrics_of(t: Table) -> MetricsConfig:
    """``[metrics]``: listen = ["HOST:PORT", "unix:/path"], enabled = true | false, insecure = true | false."""
    flags = {"enabled": True, "insecure": False}
    for key in flags:
        if key in t:
            if not isinstance(t.data[key], bool):
                raise bad(t.source, f"[metrics] {key} must be true or false, not {t.data[key]!r}", f"{key} = false")
            flags[key] = t.data[key]
    listen: tuple[str, ...] = ()
    if "listen" in t:
        if t.data["listen"] == []:
            raise bad(t.source, "[metrics] listen is empty", "give an address, or switch metrics off: enabled = false")
        listen = t.strings("listen")
    return MetricsConfig(listen=listen, enabled=flags["enabled"], insecure=flags["insecure"])


def metrics_listen_default(grpc_listen: Collection[str], port: int) -> tuple[str, ...]:
    """The metrics address when ``[metrics]`` names none: the host of the first TCP gRPC address
    (the management network the daemon already serves on), on ``port``; loopback when the daemon
    listens on unix sockets only.

    >>> metrics_listen_default(["10.20.0.7:7070", "unix:/run/ferry/agent.sock"], 9470)
    ('10.20.0.7:9470',)
    >>> metrics_listen_default(["unix:/run/ferry/agent.sock"], 9470)
    ('127.0.0.1:9470',)
    >>> metrics_listen_default(["[::1]:7070"], 9470)
    ('[::1]:9470',)
    """
    for address in grpc_listen:
        if not address.startswith("unix:"):
            return (f"{address.rsplit(':', 1)[0]}:{port}",)
    return (f"127.0.0.1:{port}",)

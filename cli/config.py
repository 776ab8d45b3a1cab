"""Where the `ferry` CLI finds the coordinator (flag, environment, config file, default) and
which certificate it presents (flags ``--ca/--cert/--key``, the config file's ``ca``, ``cert``,
``key`` for what no flag gives; plaintext only with ``--insecure`` or ``insecure = true``).

    # ~/.config/ferry/cli.toml (ferry-lab up writes one with an operator certificate)
    coordinators = ["coord1.dc1:7100", "coord2.dc1:7100"]
    ca = "/etc/ferry/pki/ca.pem"
    cert = "~/.config/ferry/operator.alice.pem"      # identity ferry://operator/alice
    key = "~/.config/ferry/operator.alice-key.pem"

Relative paths in the file are relative to the file's directory.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from ferry.errors import InvalidArgument
from ferry.rpc import Tls, check_pair

DEFAULT_COORDINATOR = "127.0.0.1:7100"
ENV_ADDRESS = "FERRY_COORDINATOR"
ENV_CONFIG = "FERRY_CONFIG"


def config_path(env: Mapping[str, str]) -> Path:
    """The CLI config file: $FERRY_CONFIG, else $XDG_CONFIG_HOME/ferry/cli.toml (~/.config/...)."""
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "ferry" / "cli.toml"


def coordinator_address(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """The first of :func:`coordinator_addresses`."""
    return coordinator_addresses(flag, env)[0]


def _read_file(path: Path) -> dict[str, object]:
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"{path} is not UTF-8 text: {exc}", reason="BAD_CONFIG", hint=f"fix or remove {path}"
        ) from exc
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read {path}: {exc.strerror or exc}",
            reason="BAD_CONFIG",
            hint=f"make {path} a readable TOML file, or point $FERRY_CONFIG elsewhere",
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"cannot parse {path}: {exc}", reason="BAD_CONFIG", hint=f"fix or remove {path}") from exc


_TLS_KEYS = ("ca", "cert", "key")


def client_tls(
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    *,
    insecure: bool = False,
    env: Mapping[str, str] | None = None,
) -> Tls | None:
    """The CLI's mutual TLS: each of ``--ca/--cert/--key`` given, the config file's ``ca``/
    ``cert``/``key`` for the rest -- so ``--cert``/``--key`` alone present another identity
    under the file's CA; a certificate and its key always come together (both flags, or both
    from the file). None (plaintext) only when asked for with ``--insecure`` or ``insecure =
    true`` (and no flag). Anything else is refused naming what is missing."""
    env = os.environ if env is None else env
    flags = {"ca": ca, "cert": cert, "key": key}
    given = [k for k, v in flags.items() if v]
    if insecure:
        if given:
            raise InvalidArgument(
                f"--insecure with --{', --'.join(given)}",
                reason="TLS_CONFLICT",
                hint="either mutual TLS (--ca, --cert, --key) or --insecure",
            )
        return None
    if bool(cert) != bool(key):
        have, lacks = ("cert", "key") if cert else ("key", "cert")
        raise InvalidArgument(
            f"--{have} without --{lacks}",
            reason="TLS_INCOMPLETE",
            hint="a certificate and its key go together: give both --cert and --key (PEM files)",
        )
    path = config_path(env)
    data = _read_file(path) if path.exists() else {}
    if data.get("insecure") is True and not given:
        return None
    base = path.parent
    from_file = {
        k: base / Path(v).expanduser() for k in _TLS_KEYS if isinstance(v := data.get(k), str) and v and not flags[k]
    }
    paths = {**from_file, **{k: Path(v) for k, v in flags.items() if v}}
    if len(paths) == len(_TLS_KEYS):
        return _readable(Tls(paths["ca"], paths["cert"], paths["key"]))
    if given:
        missing = [k for k in _TLS_KEYS if k not in paths]
        raise InvalidArgument(
            f"--{', --'.join(given)} without --{', --'.join(missing)}"
            + (f" (and {path} has no {', '.join(missing)})" if path.exists() else ""),
            reason="TLS_INCOMPLETE",
            hint=f"give --{', --'.join(missing)} too, or set {', '.join(missing)} in {path}",
        )
    if from_file:
        present = [k for k in _TLS_KEYS if k in from_file]
        missing = [k for k in _TLS_KEYS if k not in from_file]
        raise InvalidArgument(
            f"{path} has {', '.join(present)} but lacks {', '.join(missing)}",
            reason="TLS_INCOMPLETE",
            hint=f"add {', '.join(missing)} to {path} (PEM files)",
        )
    raise InvalidArgument(
        "no client certificate: the coordinator requires mutual TLS",
        reason="TLS_NOT_CONFIGURED",
        hint=f"pass --ca, --cert and --key, or set ca, cert and key in {path} (ferry-lab up writes them)",
    )


def _readable(tls: Tls) -> Tls:
    for what, path in (("CA", tls.ca), ("certificate", tls.cert), ("key", tls.key)):
        if not os.access(path, os.R_OK):
            raise InvalidArgument(
                f"cannot read the {what} {path}", reason="TLS_FILE_UNREADABLE", hint="check the path and permissions"
            )
    check_pair(tls)
    return tls


def coordinator_addresses(flag: str | None, env: Mapping[str, str] | None = None) -> list[str]:
    """Coordinator replicas to try, in order: flag > $FERRY_COORDINATOR > config file > default.

    Flag and variable may list several addresses separated by commas. The config file (written by
    `ferry-lab up`) holds ``coordinator = "unix:/tmp/ferry-lab/coordinators/c1.sock"`` and optionally
    ``coordinators = [...]``, every replica (each serves the whole API).
    """
    env = os.environ if env is None else env
    if flag:
        return [a for a in flag.split(",") if a]
    if env.get(ENV_ADDRESS):
        return [a for a in env[ENV_ADDRESS].split(",") if a]
    path = config_path(env)
    if path.exists():
        data = _read_file(path)
        out: list[str] = []
        first = data.get("coordinator")
        if isinstance(first, str) and first:
            out.append(first)
        many = data.get("coordinators", [])
        if not isinstance(many, list) or not all(isinstance(a, str) for a in many):
            raise InvalidArgument(
                f"{path}: coordinators must be a list of addresses",
                reason="BAD_CONFIG",
                hint='e.g. coordinators = ["unix:/run/c1.sock", "10.0.0.5:7100"]',
            )
        out += [a for a in many if a and a not in out]
        if out:
            return out
    return [DEFAULT_COORDINATOR]

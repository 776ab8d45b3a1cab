"""Whether this host can take part in an encrypted migration: QEMU's migration certificates.

libvirt's QEMU driver reads them from ``migrate_tls_x509_cert_dir`` (default
``default_tls_x509_cert_dir``, ``/etc/pki/qemu``) in qemu.conf; the agent config's
``migration_tls_dir`` names the same directory so the agent can report, in its inventory, a host
that lacks them (preflight then blocks with MIGRATION_TLS_MISSING instead of a failed migration).

QEMU checks only that a peer's certificate comes from that CA, not whom it names (libvirt offers
no allow-list for the migration and NBD ports). So the CA must sign the hypervisors alone: one that
also signs Ferry's identities would let any reader's or agent's certificate read a guest's disk from
the NBD port of a migration under way, or feed the target a guest state of its own (seen in a
walkthrough). The agent compares it with its own ``[tls]`` CA and reports a shared one as a problem.
"""

from __future__ import annotations

import os
from pathlib import Path

from ferry.certs import shared_ca_files

# what QEMU's x509 credentials need in the directory: the CA, and the host's server and client pair
QEMU_TLS_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem")


def migration_tls_problem(enabled: bool, directory: str, api_ca: Path | None = None) -> str:
    """Why this host cannot migrate over TLS safely ("" when it can). ``api_ca``: the CA of Ferry's
    APIs (the agent's ``[tls]`` ca), which QEMU's must not share."""
    if not enabled:
        return "TLS migration is switched off on this host (migration_tls = false in the agent config)"
    missing = [name for name in QEMU_TLS_FILES if not os.access(Path(directory) / name, os.R_OK)]
    if missing:
        return f"QEMU's migration certificates are missing in {directory}: {', '.join(missing)}"
    qemu_ca = Path(directory) / QEMU_TLS_FILES[0]
    # (the agent's own CA unreadable: not shared; its server does not start anyway)
    if api_ca is not None and shared_ca_files(qemu_ca, api_ca):
        return (
            f"QEMU's migration CA ({qemu_ca}) is also the CA of Ferry's APIs ({api_ca}): QEMU admits any "
            "certificate it signed, so an operator's, reader's or agent's certificate could read a guest's "
            "disk or send a guest state during a migration; give the hypervisors' libvirt and QEMU "
            "certificates a CA of their own"
        )
    return ""

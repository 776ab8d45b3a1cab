"""Whether this host can take part in an encrypted migration: QEMU's migration certificates.

libvirt's QEMU driver reads them from ``migrate_tls_x509_cert_dir`` (default
``default_tls_x509_cert_dir``, ``/etc/pki/qemu``) in qemu.conf; the agent config's
``migration_tls_dir`` names the same directory so the agent can report, in its inventory, a host
that lacks them (preflight then blocks with MIGRATION_TLS_MISSING instead of a failed migration).
"""

from __future__ import annotations

import os
from pathlib import Path

# what QEMU's x509 credentials need in the directory: the CA, and the host's server and client pair
QEMU_TLS_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem")


def migration_tls_problem(enabled: bool, directory: str) -> str:
    """Why this host cannot migrate over TLS ("" when it can)."""
    if not enabled:
        return "TLS migration is switched off on this host (migration_tls = false in the agent config)"
    missing = [name for name in QEMU_TLS_FILES if not os.access(Path(directory) / name, os.R_OK)]
    if missing:
        return f"QEMU's migration certificates are missing in {directory}: {', '.join(missing)}"
    return ""

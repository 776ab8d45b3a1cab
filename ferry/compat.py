"""Agent API levels: which requests an agent honours, for fleets that run two Ferry versions at once.

A rolling upgrade runs old and new agents side by side (coordinators first, then the hosts one at a
time). Protocol buffers keep old and new talking: an old agent answers a new call ``UNIMPLEMENTED``
(the coordinator says ``AGENT_TOO_OLD``) and silently ignores a request field it does not know. The
second is the dangerous one when the field asks for a safety check: an old target given
``shared_probes`` does not look for them, and its dry run says nothing is wrong. So every agent
reports the level it speaks (``HostFacts.api_level``), and the coordinator does not rely on a check an
agent below its level would skip: it refuses the migration as unverified instead (``--unsafe`` to
vouch for it), naming the host to upgrade.

Levels (raise ``AGENT_API_LEVEL`` and add a constant whenever an agent starts honouring a request
field or call that a check depends on):

- 0: agents from before levels (their inventory has no ``api_level``).
- 1: shared-storage probes (``MarkSharedStorage``/``UnmarkSharedStorage`` on the source,
  ``PrepareIncomingRequest.shared_probes`` on the target), block-device identities (``Disk.block_device``
  and ``block_identity`` from the source, ``PrepareIncomingRequest.block_devices`` on the target),
  backing-file fingerprints (``GetDomainRequest.backing_fingerprints`` on the source,
  ``DiskPlan.backing_fingerprint`` on the target) and ``MigrationOptions.persist_transient``.

>>> AGENT_API_LEVEL >= SHARED_STORAGE_PROBES == BACKING_FINGERPRINTS == 1
True
"""

from __future__ import annotations

AGENT_API_LEVEL = 1

SHARED_STORAGE_PROBES = 1  # and block-device identities: the checks of disks left in place
BACKING_FINGERPRINTS = 1  # the --copy-storage-inc check of backing files
PERSIST_TRANSIENT = 1

"""Ferry lab: several real libvirt hosts on one machine (network/mount/UTS namespaces, one
libvirtd each), a test guest image, Ferry agents, and the control plane (etcd and
coordinators in the core namespace); see deploy/lab/main.py for the command and ``Lab`` for
the Python API the lab tests use."""

from ferry.lab.controlplane import ControlPlane
from ferry.lab.lab import DEFAULT_LAB_DIR, Lab, default_lab_dir

__all__ = ["DEFAULT_LAB_DIR", "ControlPlane", "Lab", "default_lab_dir"]

"""Ferry: live-migration orchestrator for KVM/libvirt fleets. Shared core package."""

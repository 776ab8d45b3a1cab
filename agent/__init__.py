"""Ferry agent: a gRPC service over the local libvirt."""

"""Generated protobuf/gRPC stubs for package ferry.v1 (tools/gen-proto; never edit)."""

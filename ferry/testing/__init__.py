"""Fakes behind Ferry's ports, for tests, the scale bench and fleet simulations (never production).

- ``memory_store.MemoryStore``: the Store port in memory (with fault injection);
- ``fake_hypervisor.FakeHypervisor`` / ``FakeFleet``: the Hypervisor port with simulated migration jobs;
- ``fake_hostsystem.FakeHostSystem``: the HostSystem port over an in-memory file tree;
- ``fleet``: real agent gRPC servers in one process over those fakes.

The contract suites in ``tests/contract/`` run each fake and its real adapter against the same tests.
"""

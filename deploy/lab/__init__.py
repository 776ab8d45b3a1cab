"""Ferry lab: several real libvirt hosts on one machine."""

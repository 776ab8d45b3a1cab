"""Ferry coordinator."""

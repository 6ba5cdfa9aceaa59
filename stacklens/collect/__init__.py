"""Collection plane: recorders that produce trace bundle parts (SPEC §6)."""

"""Figures and tables computed from the models (SPEC §2)."""

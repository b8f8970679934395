"""The profiler tier: real training steps measured on a GPU (or, for tests, on the CPU)."""

from .schema import load_profile, load_profiles, validate_profile, write_profile  # noqa: F401

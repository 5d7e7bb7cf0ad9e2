"""Shared pytest configuration."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "unicl", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("unicl")

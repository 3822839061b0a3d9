"""Packaged build configurations (YAML, validated by matteforge.config.BuildConfig)."""

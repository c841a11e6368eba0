"""Shared helpers: losses, metrics, geometry, file I/O."""

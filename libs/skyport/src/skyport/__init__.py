"""Skyport shared library."""

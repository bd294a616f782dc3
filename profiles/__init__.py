"""Deployment profiles, shipped with the package so `--profile cpu-tiny` works anywhere."""

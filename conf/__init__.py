"""Hydra's configs: this folder ships inside the wheel as the package `exfacegan.conf` (see setup.py)."""

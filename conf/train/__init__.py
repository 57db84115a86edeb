"""The trainer's configs (`python -m exfacegan.train`), shipped as `exfacegan.conf.train`."""

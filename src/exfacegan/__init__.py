"""exfacegan: identity-disentangled synthetic face datasets from pretrained GANs."""

__version__ = "0.1.0"

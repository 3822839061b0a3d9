"""matteforge: portraits in, alpha-matting training data out."""
__version__ = "0.1.0"

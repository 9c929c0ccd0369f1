"""ussycode: self-hostable dev environments reached over SSH, each VM with its own HTTPS URL."""

__version__ = "0.1.0"

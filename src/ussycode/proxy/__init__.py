"""The HTTPS proxy: Caddy as a supervised child process, configured through its admin API."""

from ussycode.proxy.caddy import Caddy
from ussycode.proxy.caddy_config import VMRoute

__all__ = ["Caddy", "VMRoute"]

"""ferry's engines: inventory, extent maps, the wire, capture, deploy, fixups,
conversion and pre-copy. The TUI and the CLI are thin shells over them."""

__version__ = "0.1.0"

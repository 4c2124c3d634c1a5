"""twistedmail: a complete mail system on Twisted.

The public surface is :mod:`twistedmail.service` (``makeService``), the protocol
factories, :mod:`twistedmail.interfaces` and :mod:`twistedmail.testing`.
"""

__version__ = "0.1.0.dev0"
__all__ = ["__version__"]

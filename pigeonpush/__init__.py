"""PigeonPush: a scalable message push service framework on Twisted."""

__version__ = "0.1.0.dev0"

"""Abuse of a running PigeonPush over its wire protocol and its HTTP APIs.

Each attack runs for a bounded time with a bounded number of connections, on
loopback only, while a legitimate device (the SDK) receives a notification
sent through the notification API every second. The report says, per attack,
what was sent, what the daemon answered, whether it stayed up, its RSS before,
at the peak and after, and the legitimate delivery latencies. See
docs/hostile-input.rst.
"""

__version__ = "0.1.0"

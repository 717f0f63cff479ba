"""The PigeonPush chaos suite: a cluster on loopback, SDK clients, notifications
sent while daemons are killed and restarted, and what the clients saw.

A tool, not part of the runtime package: ``pip install tools/chaos`` next to
``pigeonpush``. Modules: ``cli`` (options, exit status), ``run`` (one run),
``cluster`` (the daemons, restartable on their ports), ``worker`` (a client
process), ``sender`` (the batch API, retried with Idempotency-Keys),
``schedule`` (which faults, when), ``records`` (what clients write),
``report`` (the definitions and the verdict), ``logscan`` (tracebacks).
"""

__version__ = "0.1.0"

"""pigeon-delivery: the workers between the queue and the push servers.

``router`` consumes ``PIGEON:QUEUE`` and pushes each batch to the servers
holding its recipients, ``pull`` answers a server's request for a client's
pending messages, ``gateway`` and ``rpc_server`` are the AMP adapters of both,
``service`` and ``tap`` the twistd plugin. See docs/delivery.rst.
"""

"""pigeon-server: the push server (docs/server.rst).

Devices hold long-lived connections here: they authenticate, keep alive with
PING, receive PUSH frames and ACK them. Delivery reaches the connected clients
through the AMP ``Push`` and ``Kick`` commands; the server asks delivery for
pending messages with ``Pull``. ``twistd -n pigeon-server`` runs it (tap.py).

The modules, each with one job:

``settings``     the knobs (``ServerSettings``) and their checks
``session``      ``Session``, ``Channel``, ``SessionEvents``: where hub and transports meet
``protocol``     ``ServerProtocol``: the TCP transport, one ``Channel`` per device connection
``deadlines``    ``DeadlineWheel``: the auth and idle timeouts of a port's connections, one timer
``websocket``    the WebSocket transport: hosts a ``ServerProtocol`` per WebSocket connection
``hub``          ``PushHub``: the session table and the logic (auth, push, ACK, pull, drain)
``acks``         ``AckBatcher``: ACKs of one reactor turn become one store call
``pull``         ``AmpPullSource``: pulls pending messages from delivery over AMP
``rpc_server``   the AMP responder delivery calls (``Push``, ``Kick``)
``service``      ``PushServerService``: ports, registration, timers, graceful stop
``status``       the ``/metrics`` and ``/health`` HTTP resources
``metrics``      the ``MetricsSink`` and its Prometheus implementation
``tap``          the twistd options and ``makeService``
"""

"""pigeon-reglog: the HTTP service that gives clients a token and a push server.

See docs/reglog.rst. ``tap`` wires the twistd plugin; ``api`` is the HTTP
surface, ``routing`` the route request, ``balancer`` the choice of a server,
``devices`` registration mode, ``service`` the discovery watch.
"""

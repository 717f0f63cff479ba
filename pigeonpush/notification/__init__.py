"""pigeon-notification: the HTTP API application servers hand notifications to.

``validate`` checks one request item against the limits (pure), ``auth``
checks API keys, ``core`` turns valid items into stored, queued messages,
``api`` is the twisted.web resource tree, ``tap`` the twistd plugin's options
and wiring. See docs/notification.rst.
"""

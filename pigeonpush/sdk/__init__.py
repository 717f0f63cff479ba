"""The PigeonPush client SDK: receive pushed messages in a Twisted application.

    client = PushClient(reactor, "http://reglog.example:8100", on_message)
    PushClientService(client).setServiceParent(application_services)

See docs/sdk.rst for the callback contract, the events and the delivery
guarantee (at least once, duplicates filtered).
"""

from pigeonpush.identifiers import check_client_id
from pigeonpush.sdk.backoff import BackoffPolicy, full_jitter
from pigeonpush.sdk.client import ClientState, PushClient
from pigeonpush.sdk.errors import (
    ProtocolVersionRefused,
    PushClientError,
    RouteLookupFailed,
    SessionReplaced,
    SubscriptionFailed,
    UplinkNotSent,
)
from pigeonpush.sdk.events import (
    Authenticated,
    ClientEvent,
    Connected,
    Disconnected,
    GaveUp,
    MessagesMissed,
)
from pigeonpush.sdk.identity import mac_client_id
from pigeonpush.sdk.message import Message, MessageCallback, RetryLater
from pigeonpush.sdk.route import Route, RouteFetcher, RouteSource
from pigeonpush.sdk.service import PushClientService

__all__ = [
    "Authenticated",
    "BackoffPolicy",
    "ClientEvent",
    "ClientState",
    "Connected",
    "Disconnected",
    "GaveUp",
    "Message",
    "MessageCallback",
    "MessagesMissed",
    "ProtocolVersionRefused",
    "PushClient",
    "PushClientError",
    "PushClientService",
    "RetryLater",
    "Route",
    "RouteFetcher",
    "RouteLookupFailed",
    "RouteSource",
    "SessionReplaced",
    "SubscriptionFailed",
    "UplinkNotSent",
    "check_client_id",
    "full_jitter",
    "mac_client_id",
]

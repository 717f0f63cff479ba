"""Direct streams (``?direct_streams=1``, one Redis only): a unicast to an
online device skips the queue and delivery.

ACCEPT_DIRECT is ACCEPT with one change: a notification sent now to one
recipient without a collapse key, whose recipient has a ROUTE, is appended
to that push server's own stream (``PIGEON:DIRECT:{address}``) instead of
the queue, in the same atomic call that adds it to WAIT_ACK. The push server
reads its stream (``DirectReader``) and writes the PUSH; WAIT_ACK stays the
truth, so an entry that finds no session (the device moved, the server
restarted, the stream was trimmed) is left to the device's next pull.

The ROUTE key and the stream key are built in the script from the WAIT_ACK
key: keys the script does not declare, which a single Redis allows and a
Redis Cluster does not (the store refuses the option there)."""

from __future__ import annotations

from pigeonpush.store import keys
from pigeonpush.store.redis_connection import Script
from pigeonpush.store.scripts import ACCEPT

DIRECT = keys.PREFIX + "DIRECT:"  #: + {RPC address} -> stream of unicasts for that server
#: Entries a server's stream keeps at most (about: ``MAXLEN ~``). A server that
#: is down or far behind loses the oldest; WAIT_ACK still has them (pulled).
DIRECT_MAXLEN = 100_000


def direct(address: str) -> str:
    """The stream of the push server whose RPC address is ``address``."""
    return keys.tagged(DIRECT, address)


_WAIT_PREFIX = keys.wait_ack("\0").split("\0")[0]
_ROUTE_PREFIX, _ROUTE_SUFFIX = keys.route("\0").split("\0")
_DIRECT_PREFIX, _DIRECT_SUFFIX = direct("\0").split("\0")
_QUEUE_XADD = "      redis.call('XADD', KEYS[1], '*', unpack(entry))\n"
_DIRECT_XADD = f"""      local stream, trim = KEYS[1], nil
      if last_wait == k + 3 and collapse_key == '' then
        local client = string.sub(KEYS[k + 3], {len(_WAIT_PREFIX) + 1}, -2)
        local address = redis.call('GET', '{_ROUTE_PREFIX}' .. client .. '{_ROUTE_SUFFIX}')
        if address then
          stream = '{_DIRECT_PREFIX}' .. address .. '{_DIRECT_SUFFIX}'
          trim = true
        end
      end
      if trim then
        redis.call('XADD', stream, 'MAXLEN', '~', {DIRECT_MAXLEN}, '*', unpack(entry))
      else
        redis.call('XADD', stream, '*', unpack(entry))
      end
"""
if ACCEPT.source.count(_QUEUE_XADD) != 1:  # pragma: no cover - a change to ACCEPT
    raise RuntimeError("ACCEPT changed: ACCEPT_DIRECT must be rebuilt")

#: ACCEPT (same KEYS, ARGV and answers) with the direct append above.
ACCEPT_DIRECT = Script("accept_direct", ACCEPT.source.replace(_QUEUE_XADD, _DIRECT_XADD))

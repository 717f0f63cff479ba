"""The Lua scripts of the Redis backend: writes that belong together run as
one script, so no other client sees (or interleaves with) half of them.

Redis does not roll a script back when a command inside it fails, so each
script checks everything that could fail before its first write.
"""

from __future__ import annotations

from pigeonpush.store import keys
from pigeonpush.store.redis_connection import Script

#: KEYS: AUTH, ROUTE. ARGV: token, server, ttl in ms, the used mark (keys.BOUND).
#: Bind only while AUTH holds the token the client presented, unused; AUTH
#: becomes mark .. token, so the token binds no second session. The tokens are
#: compared by their SHA-1 digests: how far an ordinary comparison of two
#: digests gets tells a guesser nothing about the stored token itself.
BIND_SESSION = Script(
    "bind_session",
    """
local stored = redis.call('GET', KEYS[1])
if not stored or string.sub(stored, 1, #ARGV[4]) == ARGV[4]
  or redis.sha1hex(stored) ~= redis.sha1hex(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[4] .. ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
""",
)

#: KEYS: AUTH, ROUTE. ARGV: token, server, the used mark (keys.BOUND).
#: Delete the session only while it is still this one: AUTH holds our token
#: (used or not) and ROUTE is ours or gone. A newer session (a new token) is
#: left intact.
END_SESSION = Script(
    "end_session",
    """
local auth = redis.call('GET', KEYS[1])
if auth ~= ARGV[1] and auth ~= ARGV[3] .. ARGV[1] then return 0 end
local route = redis.call('GET', KEYS[2])
if route and route ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
if route then redis.call('DEL', KEYS[2]) end
return 1
""",
)

#: KEYS: AUTH, ROUTE. Delete the token and answer the route (or nil).
REVOKE_SESSION = Script(
    "revoke_session",
    """
redis.call('DEL', KEYS[1])
return redis.call('GET', KEYS[2])
""",
)

#: KEYS: ROUTE. ARGV: server. Compare-and-delete.
DROP_ROUTE = Script(
    "drop_route",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
""",
)

#: The collapse step (PIGEON:COLLAPSE), on the client's slot: a Lua function
#: that, for one recipient, takes the message last sent with the same
#: collapse key out of the recipient's WAIT_ACK if it is still there
#: (answering that older id, or nil) and makes ``id`` the key's latest. The
#: WAIT_ACK and COLLAPSE keys share the client's hash tag.
_COLLAPSE_SLOT_LUA = """
local function collapse_slot(wait_key, collapse_key, field, id, ttl)
  local older = redis.call('HGET', collapse_key, field)
  local removed = nil
  if older and older ~= id and redis.call('SREM', wait_key, older) == 1 then removed = older end
  redis.call('HSET', collapse_key, field, id)
  if redis.call('PTTL', collapse_key) < ttl then redis.call('PEXPIRE', collapse_key, ttl) end
  return removed
end

local function check_type(key, wanted)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= wanted and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. kind .. ', not a ' .. wanted)
  end
end
"""

#: The whole collapse step on a single Redis, shared by ACCEPT and RELEASE:
#: ``collapse_slot`` then ``replaced`` in the older message's receipt. That
#: receipt is found from its id, so it is a key the script does not declare:
#: a Redis Cluster runs ADD_PENDING (``collapse_slot``) on the client's slot,
#: then RECORD_OUTCOME on the older message's slot (docs/data-model.rst).
_RECEIPT_PREFIX, _RECEIPT_SUFFIX = keys.receipt("\0").split("\0")
COLLAPSE_LUA = (
    f"""
local RECEIPT_PREFIX, RECEIPT_SUFFIX = '{_RECEIPT_PREFIX}', '{_RECEIPT_SUFFIX}'
"""
    + _COLLAPSE_SLOT_LUA
    + """
local function collapse(wait_key, collapse_key, client, field, id, ttl)
  local older = collapse_slot(wait_key, collapse_key, field, id, ttl)
  if older then
    local receipt = RECEIPT_PREFIX .. older .. RECEIPT_SUFFIX
    if redis.call('EXISTS', receipt) == 1 then
      redis.call('HSETNX', receipt, client, 'replaced')
    end
  end
end
"""
)

#: Accept a run of notifications in one call.
#: KEYS: QUEUE, then per notification: MSG_BODY, IDEMPOTENCY (or MSG_BODY
#: again when there is no key), RECEIPT, one WAIT_ACK per recipient, then
#: SCHEDULE for a scheduled one, or else one COLLAPSE per recipient for one
#: with a collapse key (nothing more for the others).
#: ARGV, 16 values per notification: recipient count, messageId, title,
#: text, extras (JSON), createdAt, expiresAt, recipients (JSON), TTL in ms,
#: has-idempotency-key ('1'/'0'), idempotency TTL in ms, idempotency record
#: (JSON), idempotency key, receipt TTL in ms (the TTL plus the retention),
#: collapse key ('' for none), send time ('' to send now).
#: Returns one answer per notification: 1 (written; an integer is the
#: cheapest reply to parse), or {0, first record} for a key seen before
#: (nothing written). Every key is type-checked before the first write,
#: so a call that finds a corrupt one writes nothing at all.
#: A scheduled notification writes its body and its receipt (marked
#: ``#scheduled``, with ``#sendAt`` and ``#collapseKey``) and joins SCHEDULE;
#: RELEASE does the rest when its time comes.
ACCEPT = Script(
    "accept",
    COLLAPSE_LUA
    + """
local W = 16
local n = #ARGV / W
local function span(m, k)
  local a = m * W
  local count = tonumber(ARGV[a + 1])
  local last_wait = k + 2 + count
  if ARGV[a + 16] ~= '' then return last_wait, last_wait + 1 end
  if ARGV[a + 15] ~= '' then return last_wait, last_wait + count end
  return last_wait, last_wait
end
local k = 2
for m = 0, n - 1 do
  local last_wait, last = span(m, k)
  for i = k + 3, last do
    local wanted = 'set'
    if i > last_wait then wanted = (ARGV[m * W + 16] ~= '' and 'zset') or 'hash' end
    local refused = check_type(KEYS[i], wanted)
    if refused then return refused end
  end
  k = last + 1
end
local answers = {}
k = 2
for m = 0, n - 1 do
  local a = m * W
  local last_wait, last = span(m, k)
  local body, idempotency, receipt = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local has_key = ARGV[a + 10] == '1'
  local first = has_key and redis.call('GET', idempotency)
  if first then
    answers[m + 1] = {0, first}
  else
    local id, ttl = ARGV[a + 2], tonumber(ARGV[a + 9])
    local collapse_key, send_at = ARGV[a + 15], ARGV[a + 16]
    redis.call('DEL', body, receipt)
    redis.call('HSET', body, 'title', ARGV[a + 3], 'text', ARGV[a + 4],
      'extras', ARGV[a + 5], 'createdAt', ARGV[a + 6], 'expiresAt', ARGV[a + 7])
    redis.call('PEXPIRE', body, ttl)
    redis.call('HSET', receipt, '#recipients', ARGV[a + 8], '#createdAt', ARGV[a + 6],
      '#expiresAt', ARGV[a + 7])
    redis.call('PEXPIRE', receipt, ARGV[a + 14])
    if send_at ~= '' then
      redis.call('HSET', receipt, '#sendAt', send_at, '#scheduled', '1')
      if collapse_key ~= '' then redis.call('HSET', receipt, '#collapseKey', collapse_key) end
      redis.call('ZADD', KEYS[last], send_at, id)
    else
      local recipients = collapse_key ~= '' and cjson.decode(ARGV[a + 8])
      local count = last_wait - k - 2
      for i = k + 3, last_wait do
        redis.call('SADD', KEYS[i], id)
        if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
        if recipients then
          collapse(KEYS[i], KEYS[i + count], recipients[i - k - 2], collapse_key, id, ttl)
        end
      end
      local entry = {'messageId', id, 'title', ARGV[a + 3], 'text', ARGV[a + 4],
        'extras', ARGV[a + 5], 'createdAt', ARGV[a + 6], 'expiresAt', ARGV[a + 7],
        'recipients', ARGV[a + 8]}
      if has_key then
        entry[#entry + 1] = 'idempotencyKey'
        entry[#entry + 1] = ARGV[a + 13]
      end
      if collapse_key ~= '' then
        entry[#entry + 1] = 'collapseKey'
        entry[#entry + 1] = collapse_key
      end
      redis.call('XADD', KEYS[1], '*', unpack(entry))
    end
    if has_key then redis.call('SET', idempotency, ARGV[a + 12], 'PX', ARGV[a + 11]) end
    answers[m + 1] = 1
  end
  k = last + 1
end
return answers
""",
)

#: Claim due scheduled messages. KEYS: SCHEDULE. ARGV: now, limit, lease end
#: (all seconds since the epoch). The claimed ids are scored at the lease's
#: end, so no other worker claims them before it ran out; answers them,
#: oldest send time first.
CLAIM_DUE = Script(
    "claim_due",
    """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], id) end
return ids
""",
)

#: Send one claimed scheduled message, once. KEYS: QUEUE, RECEIPT, one
#: WAIT_ACK per recipient, then one COLLAPSE per recipient if it has a
#: collapse key. ARGV: messageId, title, text, extras, createdAt, expiresAt,
#: recipients (JSON), TTL in ms, collapse key ('' for none).
#: Only while the receipt still has ``#scheduled`` (not cancelled, not sent
#: by another worker): deletes the mark, adds the id to every WAIT_ACK
#: (collapsing) and appends it to the queue; 1 if sent, 0 if not.
RELEASE = Script(
    "release",
    COLLAPSE_LUA
    + """
if redis.call('HEXISTS', KEYS[2], '#scheduled') == 0 then return 0 end
local collapse_key = ARGV[9]
local count = #KEYS - 2
if collapse_key ~= '' then count = count / 2 end
for i = 3, 2 + count do
  local refused = check_type(KEYS[i], 'set') or
    (collapse_key ~= '' and check_type(KEYS[i + count], 'hash'))
  if refused then return refused end
end
redis.call('HDEL', KEYS[2], '#scheduled')
local id, ttl = ARGV[1], tonumber(ARGV[8])
local recipients = cjson.decode(ARGV[7])
for i = 3, 2 + count do
  redis.call('SADD', KEYS[i], id)
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  if collapse_key ~= '' then
    collapse(KEYS[i], KEYS[i + count], recipients[i - 2], collapse_key, id, ttl)
  end
end
local entry = {'messageId', id, 'title', ARGV[2], 'text', ARGV[3], 'extras', ARGV[4],
  'createdAt', ARGV[5], 'expiresAt', ARGV[6], 'recipients', ARGV[7]}
if collapse_key ~= '' then
  entry[#entry + 1] = 'collapseKey'
  entry[#entry + 1] = collapse_key
end
redis.call('XADD', KEYS[1], '*', unpack(entry))
return 1
""",
)

#: Cancel a scheduled message. KEYS: RECEIPT, MSG_BODY. Answers -1 (no
#: receipt), 0 (sent already, or never scheduled), 1 (cancelled now), 2
#: (cancelled before). Deleting ``#scheduled`` decides it: RELEASE sends
#: nothing afterwards; a release in steps on a Redis Cluster that began
#: (``#releasing``) is past cancelling. The SCHEDULE entry is removed by the
#: caller (a leftover one is only cleaned up by the next release).
CANCEL = Script(
    "cancel",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], '#releasing') == 1 then return 0 end
if redis.call('HDEL', KEYS[1], '#scheduled') == 0 then
  if redis.call('HEXISTS', KEYS[1], '#cancelled') == 1 then return 2 end
  return 0
end
for _, client in ipairs(cjson.decode(redis.call('HGET', KEYS[1], '#recipients'))) do
  redis.call('HSETNX', KEYS[1], client, 'cancelled')
end
redis.call('HSET', KEYS[1], '#cancelled', '1')
redis.call('DEL', KEYS[2])
return 1
""",
)

#: Settle pending messages: an ACK or a drop.
#: KEYS, per pair: WAIT_ACK of the client, RECEIPT of the message.
#: ARGV, per pair: messageId, clientId, outcome (a recipient state).
#: Where the id was in WAIT_ACK, remove it and record the outcome in the
#: receipt, if the receipt is still kept; HSETNX: the first outcome stays.
#: Returns how many ids were removed. (The two keys of a pair are of two
#: families, a client's and a message's; a Redis Cluster port runs SREM
#: first, then the HSETNX on the message's slot when SREM removed the id.)
SETTLE = Script(
    "settle",
    """
local removed = 0
for i = 1, #KEYS, 2 do
  local a = (i - 1) / 2 * 3
  if redis.call('SREM', KEYS[i], ARGV[a + 1]) == 1 then
    removed = removed + 1
    if redis.call('EXISTS', KEYS[i + 1]) == 1 then
      redis.call('HSETNX', KEYS[i + 1], ARGV[a + 2], ARGV[a + 3])
    end
  end
end
return removed
""",
)

#: ACKs, grouped by client: SETTLE for ACKs without repeating a client's
#: key and id for each of its messages (a client ACKs a burst of PUSHes in
#: one read). KEYS: per group WAIT_ACK, then the RECEIPT of each of its
#: messages. ARGV: outcome, then per group clientId, message count,
#: messageIds. Returns the count removed.
SETTLE_ACKS = Script(
    "settle_acks",
    """
local outcome = ARGV[1]
local removed = 0
local k = 1
local a = 2
while a <= #ARGV do
  local client = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  local wait_ack = KEYS[k]
  for i = 1, n do
    if redis.call('SREM', wait_ack, ARGV[a + 1 + i]) == 1 then
      removed = removed + 1
      if redis.call('EXISTS', KEYS[k + i]) == 1 then
        redis.call('HSETNX', KEYS[k + i], client, outcome)
      end
    end
  end
  k = k + n + 1
  a = a + n + 2
end
return removed
""",
)

#: KEYS: DEVICE. ARGV: secretHash, createdAt. Create only.
REGISTER_DEVICE = Script(
    "register_device",
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'secretHash', ARGV[1], 'createdAt', ARGV[2])
return 1
""",
)

#: KEYS: QUEUE. ARGV: group, entry ids...
#: XACK then XDEL each entry, so the stream holds only unfinished work.
ACKNOWLEDGE = Script(
    "acknowledge",
    """
for i = 2, #ARGV do
  redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
return #ARGV - 1
""",
)

#: KEYS: QUEUE. ARGV: group, consumer, min idle ms, count, max rounds.
#: XAUTOCLAIM (scanning the pending list in rounds until ``count`` entries are
#: claimed or the list is done) then each claimed entry's delivery count from
#: XPENDING: {{id, {field, value, ...}, deliveries}, ...}.
RECLAIM = Script(
    "reclaim",
    """
local count = tonumber(ARGV[4])
local claimed = {}
local cursor = '0-0'
for _ = 1, tonumber(ARGV[5]) do
  local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor,
    'COUNT', count - #claimed)
  cursor = reply[1]
  for _, entry in ipairs(reply[2]) do
    if entry[2] then
      local info = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
      claimed[#claimed + 1] = {entry[1], entry[2], info[1][4]}
    end
  end
  if cursor == '0-0' or #claimed >= count then break end
end
return claimed
""",
)

#: XREADGROUP without blocking, its entries answered as one JSON value
#: ``[[id, [field, value, ...]], ...]`` ("" when there are none).
READ_PACKED = Script(
    "read_packed",
    """
local reply = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>')
if type(reply) == 'table' and reply.err then return reply end
if not reply then return '' end
return cjson.encode(reply[1][2])
""",
)


#: KEYS: one FAILED hash per failure. ARGV: TTL in ms, then the messageIds.
#: HINCRBY each pair and give its hash the TTL; answers the counts in order.
#: The keys' types are checked before the first write.
ADD_FAILURES = Script(
    "add_failures",
    """
for i = 1, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'hash' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. kind .. ', not a hash')
  end
end
local counts = {}
for i = 1, #KEYS do
  counts[i] = redis.call('HINCRBY', KEYS[i], ARGV[i + 1], 1)
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return counts
""",
)


#: KEYS: UPLINK (stream), the uplink's SEEN key (same hash tag, same slot).
#: ARGV: clientId, uplinkId, data (JSON), receivedAt, window in ms, max length.
#: Append unless SEEN holds the first copy's entry id: {1, new id} or {0, first id}.
ADD_UPLINK = Script(
    "add_uplink",
    """
local first = redis.call('GET', KEYS[2])
if first then return {0, first} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', 'clientId', ARGV[1],
  'uplinkId', ARGV[2], 'data', ARGV[3], 'receivedAt', ARGV[4])
redis.call('SET', KEYS[2], id, 'PX', ARGV[5])
return {1, id}
""",
)

#: KEYS: UPLINK_DEAD. ARGV: record (JSON), max length. Newest first, bounded.
ADD_DEAD_UPLINK = Script(
    "add_dead_uplink",
    """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return 1
""",
)


# -- Redis Cluster: a multi-recipient accept spans slots ---------------------------
# A cluster runs a script on one slot only. ``RedisStore`` then accepts a
# notification in steps, each atomic on its slot, in this order (see
# docs/data-model.rst): CLAIM the idempotency key -> WRITE_MESSAGE (body and
# receipt) -> ADD_PENDING (WAIT_ACK and the collapse, per client slot) ->
# RECORD_OUTCOME (``replaced``, on each older message's slot) -> XADD to a
# queue shard (or, scheduled, ZADD to SCHEDULE) -> the idempotency record
# (SET). A retry with the same key resumes with the claimed messageId; every
# step is safe to run again. A release runs RELEASE_BEGIN -> ADD_PENDING ->
# RECORD_OUTCOME -> XADD -> RELEASE_END, resumed by the next claim.

#: Claim prefix of an IDEMPOTENCY value whose acceptance is under way.
CLAIM_MARK = "claim:"

#: KEYS: IDEMPOTENCY. ARGV: claim (CLAIM_MARK .. messageId), TTL in ms.
#: Answers the stored value (a claim under way or the first acceptance's
#: record) or, having stored the claim, nil.
CLAIM = Script(
    "claim",
    """
local stored = redis.call('GET', KEYS[1])
if stored then return stored end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
""",
)

#: KEYS: MSG_BODY, RECEIPT. ARGV: title, text, extras, createdAt, expiresAt,
#: recipients (JSON), TTL in ms, receipt TTL in ms, send time ('' to send
#: now), collapse key ('' for none).
#: Writes both unless the receipt exists already (a resumed accept: outcomes
#: recorded since must stay); answers the clientIds that have an outcome.
#: A scheduled message's receipt gets ``#sendAt``, ``#scheduled`` and its
#: ``#collapseKey``, as ACCEPT writes them.
WRITE_MESSAGE = Script(
    "write_message",
    """
if redis.call('EXISTS', KEYS[2]) == 1 then
  local settled = {}
  local flat = redis.call('HGETALL', KEYS[2])
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 1) ~= '#' then settled[#settled + 1] = flat[i] end
  end
  return settled
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'title', ARGV[1], 'text', ARGV[2], 'extras', ARGV[3],
  'createdAt', ARGV[4], 'expiresAt', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('HSET', KEYS[2], '#recipients', ARGV[6], '#createdAt', ARGV[4],
  '#expiresAt', ARGV[5])
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[2], '#sendAt', ARGV[9], '#scheduled', '1')
  if ARGV[10] ~= '' then redis.call('HSET', KEYS[2], '#collapseKey', ARGV[10]) end
end
redis.call('PEXPIRE', KEYS[2], ARGV[8])
return {}
""",
)

#: KEYS: WAIT_ACK of clients of one slot, then, with a collapse key, their
#: COLLAPSE hashes. ARGV: messageId, TTL in ms, collapse key ('' for none),
#: then (with a collapse key) the clientIds in the keys' order.
#: SADD to each (raising its expiry to the TTL) and collapse as ACCEPT does,
#: except for the older message's receipt: answers {clientId, older id, ...}
#: for the caller's RECORD_OUTCOME. The types are checked first.
ADD_PENDING = Script(
    "add_pending",
    _COLLAPSE_SLOT_LUA
    + """
local collapse_key = ARGV[3]
local count = #KEYS
if collapse_key ~= '' then count = count / 2 end
for i = 1, count do
  local refused = check_type(KEYS[i], 'set') or
    (collapse_key ~= '' and check_type(KEYS[i + count], 'hash'))
  if refused then return refused end
end
local ttl = tonumber(ARGV[2])
local replaced = {}
for i = 1, count do
  redis.call('SADD', KEYS[i], ARGV[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  if collapse_key ~= '' then
    local older = collapse_slot(KEYS[i], KEYS[i + count], collapse_key, ARGV[1], ttl)
    if older then
      replaced[#replaced + 1] = ARGV[3 + i]
      replaced[#replaced + 1] = older
    end
  end
end
return replaced
""",
)

#: KEYS: RECEIPT. The first step of a release in steps (a cluster): answers 0
#: if the message is not scheduled any more (cancelled, or sent), else marks
#: it ``#releasing`` (CANCEL then answers sent) and answers 1. A release that
#: stopped after this is resumed by the next claim (the mark stays set).
RELEASE_BEGIN = Script(
    "release_begin",
    """
if redis.call('HEXISTS', KEYS[1], '#scheduled') == 0 then return 0 end
redis.call('HSET', KEYS[1], '#releasing', '1')
return 1
""",
)

#: KEYS: RECEIPT. The last step of a release in steps, once the WAIT_ACKs and
#: the queue have the message: it is sent. Answers 1, or 0 if another worker
#: finished it first.
RELEASE_END = Script(
    "release_end",
    """
local done = redis.call('HDEL', KEYS[1], '#scheduled')
redis.call('HDEL', KEYS[1], '#releasing')
return done
""",
)

#: KEYS: RECEIPT. ARGV: clientId, outcome. The second half of SETTLE on a
#: cluster (after SREM removed the id from the client's WAIT_ACK).
RECORD_OUTCOME = Script(
    "record_outcome",
    """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
end
return 0
""",
)


ALL = (
    BIND_SESSION,
    END_SESSION,
    REVOKE_SESSION,
    DROP_ROUTE,
    ACCEPT,
    CLAIM_DUE,
    RELEASE,
    CANCEL,
    SETTLE,
    SETTLE_ACKS,
    REGISTER_DEVICE,
    ACKNOWLEDGE,
    RECLAIM,
    READ_PACKED,
    ADD_FAILURES,
    ADD_UPLINK,
    ADD_DEAD_UPLINK,
    CLAIM,
    WRITE_MESSAGE,
    ADD_PENDING,
    RECORD_OUTCOME,
    RELEASE_BEGIN,
    RELEASE_END,
)

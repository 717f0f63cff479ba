"""The Lua scripts of the Redis backend: writes that belong together run as
one script, so no other client sees (or interleaves with) half of them.

Redis does not roll a script back when a command inside it fails, so each
script checks everything that could fail before its first write.
"""

from __future__ import annotations

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

#: Accept a run of notifications in one call.
#: KEYS: QUEUE, then per notification: MSG_BODY, IDEMPOTENCY (or MSG_BODY
#: again when there is no key), RECEIPT, one WAIT_ACK per recipient.
#: ARGV, 14 values per notification: recipient count, messageId, title,
#: text, extras (JSON), createdAt, expiresAt, recipients (JSON), TTL in ms,
#: has-idempotency-key ('1'/'0'), idempotency TTL in ms, idempotency record
#: (JSON), idempotency key, receipt TTL in ms (the TTL plus the retention).
#: Returns one answer per notification: 1 (written; an integer is the
#: cheapest reply to parse), or {0, first record} for a key seen before
#: (nothing written). Every WAIT_ACK key is checked before the first write,
#: so a call that finds a corrupt one writes nothing at all.
ACCEPT = Script(
    "accept",
    """
local n = #ARGV / 14
local k = 2
for m = 0, n - 1 do
  local last = k + 2 + tonumber(ARGV[m * 14 + 1])
  for i = k + 3, last do
    local kind = redis.call('TYPE', KEYS[i])['ok']
    if kind ~= 'set' and kind ~= 'none' then
      return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. kind .. ', not a set')
    end
  end
  k = last + 1
end
local answers = {}
k = 2
for m = 0, n - 1 do
  local a = m * 14
  local last = k + 2 + tonumber(ARGV[a + 1])
  local body, idempotency, receipt = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local has_key = ARGV[a + 10] == '1'
  local first = has_key and redis.call('GET', idempotency)
  if first then
    answers[m + 1] = {0, first}
  else
    local id, ttl = ARGV[a + 2], tonumber(ARGV[a + 9])
    redis.call('DEL', body, receipt)
    redis.call('HSET', body, 'title', ARGV[a + 3], 'text', ARGV[a + 4],
      'extras', ARGV[a + 5], 'createdAt', ARGV[a + 6], 'expiresAt', ARGV[a + 7])
    redis.call('PEXPIRE', body, ttl)
    redis.call('HSET', receipt, '#recipients', ARGV[a + 8], '#createdAt', ARGV[a + 6],
      '#expiresAt', ARGV[a + 7])
    redis.call('PEXPIRE', receipt, ARGV[a + 14])
    for i = k + 3, last do
      redis.call('SADD', KEYS[i], id)
      if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
    end
    if has_key then
      redis.call('XADD', KEYS[1], '*', 'messageId', id, 'title', ARGV[a + 3],
        'text', ARGV[a + 4], 'extras', ARGV[a + 5], 'createdAt', ARGV[a + 6],
        'expiresAt', ARGV[a + 7], 'recipients', ARGV[a + 8],
        'idempotencyKey', ARGV[a + 13])
      redis.call('SET', idempotency, ARGV[a + 12], 'PX', ARGV[a + 11])
    else
      redis.call('XADD', KEYS[1], '*', 'messageId', id, 'title', ARGV[a + 3],
        'text', ARGV[a + 4], 'extras', ARGV[a + 5], 'createdAt', ARGV[a + 6],
        'expiresAt', ARGV[a + 7], 'recipients', ARGV[a + 8])
    end
    answers[m + 1] = 1
  end
  k = last + 1
end
return answers
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


# -- Redis Cluster: a multi-recipient accept spans slots ---------------------------
# A cluster runs a script on one slot only. ``RedisStore`` then accepts a
# notification in steps, each atomic on its slot, in this order (see
# docs/data-model.rst): CLAIM the idempotency key -> WRITE_MESSAGE (body and
# receipt) -> ADD_PENDING (WAIT_ACK, per client slot) -> XADD to a queue shard
# -> the idempotency record (SET). A retry with the same key resumes with the
# claimed messageId; every step is safe to run again.

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
#: recipients (JSON), TTL in ms, receipt TTL in ms.
#: Writes both unless the receipt exists already (a resumed accept: outcomes
#: recorded since must stay); answers the clientIds that have an outcome.
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
redis.call('PEXPIRE', KEYS[2], ARGV[8])
return {}
""",
)

#: KEYS: WAIT_ACK of clients of one slot. ARGV: messageId, TTL in ms.
#: SADD to each (raising its expiry to the TTL); the types are checked first.
ADD_PENDING = Script(
    "add_pending",
    """
for i = 1, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'set' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. kind .. ', not a set')
  end
end
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return #KEYS
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
    SETTLE,
    REGISTER_DEVICE,
    ACKNOWLEDGE,
    RECLAIM,
    READ_PACKED,
    ADD_FAILURES,
    CLAIM,
    WRITE_MESSAGE,
    ADD_PENDING,
    RECORD_OUTCOME,
)

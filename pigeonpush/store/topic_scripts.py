"""The Lua scripts of topics and broadcast. Each touches one hash slot: a
topic's keys (``{topic:<name>}``) or one device's (``{<clientId>}``).

Offsets are Redis stream ids; ``older(a, b)`` compares two of them.
"""

from __future__ import annotations

from pigeonpush.store.redis_connection import Script

_OLDER = """
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
"""

#: KEYS: TOPIC, TOPIC_LOG. ARGV: a fresh epoch (used if the topic has none).
#: Answers {epoch, offset of the newest entry or 0-0}: where a new subscriber starts.
TOPIC_TAIL = Script(
    "topic_tail",
    """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last == 0 then return {epoch, '0-0'} end
return {epoch, last[1][1]}
""",
)

#: KEYS: TOPIC, TOPIC_LOG. The log's epoch and newest entry id ('0-0' for an
#: empty log), or nil for a topic with no epoch: a read, nothing is created.
TOPIC_END = Script(
    "topic_end",
    """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return false end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last == 0 then return {epoch, '0-0'} end
return {epoch, last[1][1]}
""",
)

#: KEYS: SUBSCRIPTIONS. ARGV: topic, starting position, most topics, broadcast name.
#: 1: subscribed; 0: it already was (its position stays); -1: refused, the
#: device holds the most topics it may.
SUBSCRIBE_DEVICE = Script(
    "subscribe_device",
    """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local held = redis.call('HLEN', KEYS[1]) - redis.call('HEXISTS', KEYS[1], ARGV[4])
if held >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
""",
)

#: KEYS: TOPIC, TOPIC_LOG, IDEMPOTENCY (or TOPIC again without a key),
#: SUBSCRIBERS (its count is the answer's third value). ARGV:
#: fresh epoch, max length, now (seconds), TTL in ms, then the TOPIC_FIELDS
#: values, then has-key ('1'/'0') and the idempotency TTL in ms. With a key
#: seen before: {0, "<messageId> <epoch> <offset>"}, nothing written. Else
#: appends, trims the log to max length
#: (recording the newest offset trimmed so: readers behind it missed
#: messages), drops the expired head, and gives the log the longest TTL it
#: holds. Answers {epoch, offset}.
PUBLISH = Script(
    "topic_publish",
    """
if ARGV[11] == '1' then
  local first = redis.call('GET', KEYS[3])
  if first then return {0, first} end
end
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local id = redis.call('XADD', KEYS[2], '*', 'messageId', ARGV[5], 'title', ARGV[6],
  'text', ARGV[7], 'extras', ARGV[8], 'createdAt', ARGV[9], 'expiresAt', ARGV[10])
local over = redis.call('XLEN', KEYS[2]) - tonumber(ARGV[2])
if over > 0 then
  local gone = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', over)
  redis.call('XTRIM', KEYS[2], 'MAXLEN', ARGV[2])
  redis.call('HSET', KEYS[1], 'trimmed', gone[#gone][1])
end
local now = tonumber(ARGV[3])
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 100)
for _, entry in ipairs(head) do
  if tonumber(entry[2][12]) > now then
    redis.call('XTRIM', KEYS[2], 'MINID', entry[1])
    break
  end
end
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
if ARGV[11] == '1' then
  redis.call('SET', KEYS[3], ARGV[5] .. ' ' .. epoch .. ' ' .. id, 'PX', ARGV[12])
end
return {epoch, id, redis.call('SCARD', KEYS[4])}
""",
)

#: KEYS: TOPIC, TOPIC_LOG. ARGV: fresh epoch, the device's epoch ('' if it
#: has no position), its offset, limit, now (seconds).
#: Answers {epoch, missed (0/1), trimmed or '', entries, passed}: the first
#: ``limit`` unexpired entries after the position, or from the start of the
#: log when the position is of another epoch or behind the trimmed offset
#: (missed); ``passed``: with no entry to answer, the last (expired) one read
#: past, or '' ('0-0' for a device with no position and nothing to read).
READ_AFTER = Script(
    "topic_read_after",
    _OLDER
    + """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local trimmed = redis.call('HGET', KEYS[1], 'trimmed')
local missed = 0
local from = '(' .. ARGV[3]
if ARGV[2] == '' then
  from = '-'
elseif ARGV[2] ~= epoch or (trimmed and older(ARGV[3], trimmed)) then
  missed = 1
  from = '-'
end
local limit, now = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
local last = ''
while #out < limit do
  local batch = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', limit)
  if #batch == 0 then break end
  for _, entry in ipairs(batch) do
    if tonumber(entry[2][12]) > now then
      out[#out + 1] = entry
      if #out == limit then break end
    end
  end
  last = batch[#batch][1]
  from = '(' .. last
end
if #out > 0 then last = '' elseif last == '' and ARGV[2] == '' then last = '0-0' end
return {epoch, missed, trimmed or '', out, last}
""",
)

#: KEYS: SUBSCRIPTIONS. ARGV: broadcast name, then per position: topic,
#: epoch, offset, and '1' to set it only where it holds the next value given
#: ('0': forward only, as an ACK moves it).
#: A topic the device is no longer subscribed to is left alone (broadcast
#: always counts); an ACK never moves a position back within an epoch.
ADVANCE = Script(
    "topic_advance",
    _OLDER
    + """
for i = 2, #ARGV, 5 do
  local topic, epoch, offset = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('HGET', KEYS[1], topic)
  local write = current or topic == ARGV[1]
  if ARGV[i + 3] == '1' then
    write = current == ARGV[i + 4]
  elseif current then
    local e, o = string.match(current, '^(%S+) (.+)$')
    if e == epoch and not older(o, offset) then write = false end
  end
  if write then redis.call('HSET', KEYS[1], topic, epoch .. ' ' .. offset) end
end
return 1
""",
)

#: KEYS: TOPIC_RECEIPT. ARGV: ACKs to add. Only to a receipt still kept.
COUNT_ACKS = Script(
    "topic_count_acks",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'acked', ARGV[1])
""",
)

ALL = (TOPIC_TAIL, TOPIC_END, SUBSCRIBE_DEVICE, PUBLISH, READ_AFTER, ADVANCE, COUNT_ACKS)

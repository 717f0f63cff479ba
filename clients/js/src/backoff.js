// Reconnection delays: exponential growth, capped, with full jitter.
//
// Full jitter (a delay drawn uniformly between zero and the exponential
// ceiling) spreads the clients of a server that just died over the whole
// window, so they do not come back as one thundering herd.

/**
 * A policy `attempt -> seconds` whose delay for attempt n (1 for the first
 * retry) lies in [0, min(maximum, initial * factor ** (n - 1))).
 * `random` returns a number in [0, 1) (tests pass a fixed one).
 */
export function fullJitter({ initial = 1, maximum = 60, factor = 2, random = Math.random } = {}) {
  if (!(initial > 0)) throw new RangeError(`initial must be positive, not ${initial}`);
  if (!(maximum >= initial)) {
    throw new RangeError(`maximum (${maximum}) must be at least initial (${initial})`);
  }
  if (!(factor >= 1)) throw new RangeError(`factor must be at least 1, not ${factor}`);
  return (attempt) => {
    const exponent = Math.min(Math.max(attempt, 1) - 1, 1000);
    // Infinity past ~1000 doublings: min() caps it.
    const ceiling = Math.min(maximum, initial * factor ** exponent);
    return ceiling * random();
  };
}

/**
 * The last `capacity` messageIds handled, oldest evicted first: a repeat of
 * one (its ACK was lost) is ACKed without calling the application again.
 */
export class RecentIds {
  constructor(capacity) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`the duplicate window must hold at least 1 id, not ${capacity}`);
    }
    this.capacity = capacity;
    this._ids = new Set();
  }

  get size() {
    return this._ids.size;
  }

  has(messageId) {
    return this._ids.has(messageId);
  }

  add(messageId) {
    // A Set keeps insertion order: delete + add moves the id to the newest end.
    this._ids.delete(messageId);
    this._ids.add(messageId);
    if (this._ids.size > this.capacity) {
      this._ids.delete(this._ids.values().next().value);
    }
  }
}

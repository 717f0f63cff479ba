// Why a PushClient gave up (the "error" event with `fatal: true` carries one).

/** Base class: the client stopped trying and needs the application's attention. */
export class PushClientError extends Error {
  constructor(message) {
    super(message);
    this.name = this.constructor.name;
  }
}

/**
 * reglog did not give a route: it refused the request (400, 401...:
 * `retryable` is false), or failed `maxRouteFailures` times in a row.
 */
export class RouteLookupFailed extends PushClientError {
  constructor(url, attempts, reason, { retryable = true, status = null, error = null } = {}) {
    super(
      retryable
        ? `route lookup at ${url} failed ${attempts} time(s) in a row; last error: ${reason}`
        : `route lookup at ${url} was refused: ${reason}`,
    );
    this.url = url;
    this.attempts = attempts;
    this.reason = reason;
    this.retryable = retryable;
    this.status = status;
    this.error = error;
  }
}

/** The push server speaks neither protocol version 2 nor 1. */
export class ProtocolVersionRefused extends PushClientError {}

/**
 * Another client logged in with the same clientId and took the session over
 * (KICK REPLACED). The client does not fight back: the two would replace each
 * other forever.
 */
export class SessionReplaced extends PushClientError {}

/**
 * A `subscribe` or `unsubscribe` did not happen: `code` is the server's answer
 * (`NOT_ALLOWED`: not in the operator's --device-topics; `TOO_MANY`;
 * `UNAVAILABLE`: try again), `OFFLINE` (no session of protocol version 3
 * now) or `DISCONNECTED` (the session ended before the answer; try again).
 */
export class SubscriptionFailed extends Error {
  constructor(code, reason = "") {
    super(reason ? `${code}: ${reason}` : code);
    this.name = "SubscriptionFailed";
    this.code = code;
    this.reason = reason;
  }
}

/**
 * Throw it (or reject with it) from the message callback to ask for the
 * message again after `retryAfter` seconds; any other error leaves the delay
 * to the server's backoff.
 */
export class RetryLater extends Error {
  constructor(retryAfter, reason = "") {
    if (typeof retryAfter !== "number" || !(retryAfter >= 0)) {
      throw new RangeError(`retryAfter must be zero or more seconds, not ${retryAfter}`);
    }
    super(reason || `retry after ${retryAfter} s`);
    this.name = "RetryLater";
    this.retryAfter = retryAfter;
  }
}

/**
 * `sendUplink` could not get the uplink to the store: the connection dropped
 * (or was not up) before UPLINK_ACK, or the client stopped. The uplink may or
 * may not be stored; sending it again with the same `uplinkId` is safe (the
 * server stores it once).
 */
export class UplinkNotSent extends Error {
  constructor(uplinkId, reason) {
    super(`uplink ${JSON.stringify(uplinkId)} not acknowledged: ${reason}`);
    this.name = "UplinkNotSent";
    this.uplinkId = uplinkId;
    this.reason = reason;
  }
}

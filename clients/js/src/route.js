// Asking reglog for a route: POST /v1/route -> {token, server, transport, heartbeat}.
//
// Transient failures (network errors, timeouts, 5xx, 408, 429, a 200 with an
// unusable body) are retried with backoff, for as long as it takes unless the
// application set a limit; any other 4xx is a refusal, reported at once. The
// request asks for the WebSocket transport and names the servers the client
// failed to reach lately (`avoid`), so that reglog picks another one.

import { SYSTEM_CLOCK } from "./clock.js";
import { RouteLookupFailed } from "./errors.js";

/** The reglog path that hands out routes. */
export const ROUTE_PATH = "/v1/route";
/** reglog takes at most this many servers to avoid per request... */
export const MAX_AVOID = 16;
/** ... each at most this long. */
export const MAX_AVOID_ADDRESS = 262;
/** What the client asks reglog for, in the request's `transport` field. */
export const REQUESTED_TRANSPORT = "websocket";
/** The route transports a WebSocket client can use. */
export const WEBSOCKET_TRANSPORTS = Object.freeze(["ws", "wss"]);
/** Every transport reglog may answer (tcp and tls need a raw socket). */
export const TRANSPORTS = Object.freeze(["tcp", "tls", "ws", "wss"]);

const RETRYABLE_4XX = new Set([408, 429]);
const QUOTE_LIMIT = 200;
const ADDRESS = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]/]+)):(\d{1,5})$/;
const URL_SCHEME = /^wss?:\/\//i;

/** `"host:port"` (IPv6 as `"[::1]:7100"`) -> {host, port}; RangeError if malformed. */
export function splitAddress(server) {
  const match = typeof server === "string" ? ADDRESS.exec(server) : null;
  const port = match ? Number(match[3]) : 0;
  if (!match || port < 1 || port > 65535) {
    throw new RangeError(`server address must be host:port, not ${JSON.stringify(server)}`);
  }
  return { host: match[1] ?? match[2], port };
}

/** The URL if it can reach reglog (http or https, with a host); RangeError otherwise. */
export function checkReglogUrl(url) {
  let parts = null;
  try {
    parts = new URL(url);
  } catch {
    // reported below
  }
  if (!parts || !["http:", "https:"].includes(parts.protocol) || !parts.hostname) {
    throw new RangeError(
      `reglogUrl must be an http:// or https:// URL, not ${JSON.stringify(url)}`,
    );
  }
  return url;
}

/**
 * A route from reglog's JSON answer; RangeError naming the bad field.
 *
 * `server` is `host:port` (or, accepted as well, a whole `ws://` / `wss://`
 * URL); `transport` is tcp, tls, ws or wss (absent: tcp); `path` (optional,
 * default `/`) is the WebSocket's path when `server` is `host:port`.
 */
export function parseRoute(body) {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new RangeError("the body is not a JSON object");
  }
  const { token, server, heartbeat, path } = body;
  if (typeof token !== "string" || token === "") {
    throw new RangeError("token must be a non-empty string");
  }
  if (typeof server !== "string") throw new RangeError("server must be a string host:port");
  const transport = body.transport ?? "tcp"; // older reglogs do not say: TCP
  if (!TRANSPORTS.includes(transport)) {
    throw new RangeError(`transport must be one of ${TRANSPORTS.join(", ")}, not ${transport}`);
  }
  if (URL_SCHEME.test(server)) {
    const url = new URL(server); // the scheme matched: a TypeError here is a bad URL
    if (url.protocol !== `${transport}:`) {
      throw new RangeError(`server ${server} does not match transport ${transport}`);
    }
  } else {
    splitAddress(server);
  }
  if (
    heartbeat !== undefined &&
    heartbeat !== null &&
    (typeof heartbeat !== "number" || !(heartbeat > 0) || !Number.isFinite(heartbeat))
  ) {
    throw new RangeError("heartbeat must be a positive number of seconds");
  }
  if (path !== undefined && path !== null && (typeof path !== "string" || !path.startsWith("/"))) {
    throw new RangeError("path must be a string starting with /");
  }
  return {
    token,
    server,
    transport,
    heartbeat: heartbeat ?? null,
    path: path ?? null,
  };
}

/**
 * The WebSocket URL of a route; a TypeError when reglog answered a transport
 * that a WebSocket cannot speak (tcp, tls: a reglog or a server without
 * WebSocket support).
 */
export function websocketUrl(route) {
  if (!WEBSOCKET_TRANSPORTS.includes(route.transport)) {
    throw new TypeError(
      `reglog answered transport ${route.transport} for ${route.server}: a WebSocket ` +
        "client needs ws or wss (does this reglog know the servers' WebSocket addresses?)",
    );
  }
  if (URL_SCHEME.test(route.server)) return route.server;
  return `${route.transport}://${route.server}${route.path ?? "/"}`;
}

/** The `host:port` of a route's server, as reglog's `avoid` takes it. */
export function serverAddress(server) {
  if (URL_SCHEME.test(server)) {
    try {
      return new URL(server).host;
    } catch {
      return server;
    }
  }
  return server;
}

/** The `avoid` field: the well-formed `host:port` ones, at most MAX_AVOID. */
export function avoidList(servers) {
  const valid = [];
  for (const server of servers) {
    if (valid.length >= MAX_AVOID) break;
    if (server.length > MAX_AVOID_ADDRESS) continue;
    try {
      splitAddress(server);
    } catch {
      continue;
    }
    valid.push(server);
  }
  return valid;
}

class Retryable extends Error {}

class Refused extends Error {
  constructor(message, status, error) {
    super(message);
    this.status = status;
    this.error = error;
  }
}

function quote(text) {
  return text.length > QUOTE_LIMIT ? `${text.slice(0, QUOTE_LIMIT)}...` : text;
}

function describeError(status, text) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not the project's JSON error
  }
  if (body && typeof body === "object" && typeof body.error === "string") {
    const detail = typeof body.message === "string" ? `${body.error}: ${body.message}` : body.error;
    return [`HTTP ${status} ${detail}`, body.error];
  }
  return [`HTTP ${status} ${quote(text)}`.trimEnd(), null];
}

/** Resolves after `seconds` on `clock`, or rejects when `signal` aborts. */
export function sleep(clock, seconds, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clock.clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = clock.setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, seconds * 1000);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Calls reglog until it answers with a route, or refuses, or (when
 * `attempts` is set) fails that many times in a row.
 * `lookup(signal)` resolves with a route or rejects with RouteLookupFailed;
 * aborting `signal` stops at once (rejecting with the signal's reason).
 */
export class RouteFetcher {
  constructor({
    reglogUrl,
    clientId,
    secret = null,
    attempts = null,
    backoff,
    timeout = 10,
    avoid = () => [],
    fetch = (...args) => globalThis.fetch(...args),
    onRetry = () => {},
    clock = SYSTEM_CLOCK,
  }) {
    if (attempts !== null && !(Number.isInteger(attempts) && attempts >= 1)) {
      throw new RangeError(`maxRouteFailures must be an integer of at least 1, not ${attempts}`);
    }
    this.url = checkReglogUrl(reglogUrl).replace(/\/+$/, "") + ROUTE_PATH;
    this._body = { clientId, transport: REQUESTED_TRANSPORT };
    // The secret is a property of this closure only: it never shows when the
    // fetcher is logged or inspected.
    this._secret = () => secret;
    this._attempts = attempts;
    this._backoff = backoff;
    this._timeout = timeout;
    this._avoid = avoid;
    this._fetch = fetch;
    this._onRetry = onRetry;
    this._clock = clock;
  }

  async lookup(signal) {
    const body = { ...this._body };
    const secret = this._secret();
    if (secret !== null) body.secret = secret;
    const servers = avoidList(this._avoid());
    if (servers.length > 0) body.avoid = servers;
    const payload = JSON.stringify(body);
    let reason = "";
    for (let attempt = 1; ; attempt++) {
      try {
        return await this._oneAttempt(payload, signal);
      } catch (e) {
        if (signal?.aborted) throw signal.reason;
        if (e instanceof Refused) {
          throw new RouteLookupFailed(this.url, attempt, e.message, {
            retryable: false,
            status: e.status,
            error: e.error,
          });
        }
        reason = e.message;
      }
      if (this._attempts !== null && attempt >= this._attempts) {
        throw new RouteLookupFailed(this.url, attempt, reason);
      }
      const delay = this._backoff(attempt);
      this._onRetry({ url: this.url, attempt, reason, delay });
      await sleep(this._clock, delay, signal);
    }
  }

  async _oneAttempt(payload, signal) {
    const controller = new AbortController();
    const abort = () => controller.abort(signal.reason);
    signal?.addEventListener("abort", abort, { once: true });
    let timedOut = false;
    const timer = this._clock.setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this._timeout * 1000);
    let status;
    let text;
    try {
      const response = await this._fetch(this.url, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: payload,
        signal: controller.signal,
        cache: "no-store",
      });
      status = response.status;
      text = await response.text();
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      if (timedOut) throw new Retryable(`no answer within ${this._timeout}s`);
      throw new Retryable(`${e?.name ?? "Error"}: ${e?.message ?? e}`);
    } finally {
      this._clock.clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
    }
    if (status === 200) {
      try {
        return parseRoute(JSON.parse(text));
      } catch (e) {
        throw new Retryable(`HTTP 200 with an unusable body (${e.message})`);
      }
    }
    const [message, error] = describeError(status, text);
    if (status >= 400 && status < 500 && !RETRYABLE_4XX.has(status)) {
      throw new Refused(message, status, error);
    }
    throw new Retryable(message);
  }
}

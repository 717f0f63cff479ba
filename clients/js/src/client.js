// PushClient: route, connect, authenticate, receive, ACK, reconnect.
//
// The life of a client is an explicit state machine (ClientState), the same
// as the Python SDK's (pigeonpush/sdk/client.py):
//
//   stopped --start()--> routing --route--> connecting --WebSocket up--> authenticating
//   authenticating --AUTH_OK--> online
//   connecting / authenticating --failure--> waiting (backoff) --> routing or connecting
//   online --connection lost--> waiting
//   any --stop() / give up--> stopping (closing the connection) --> stopped
//
// A token is good for one session: the route is spent as soon as a
// connection carrying its AUTH is up, so every new session starts with a
// fresh route from reglog. Only a connection that never came up leaves the
// token unused; after `reconnectThreshold` of those in a row the client asks
// reglog again, naming the servers it failed to reach lately (`avoid`).

import {
  MAX_AUTH_FRAME,
  PROTOCOL_VERSION,
  DEFAULT_MAX_FRAME,
  MIN_MAX_FRAME,
  MAX_MAX_FRAME,
  encodePayload,
  uplinkProblem,
  EncodeError,
} from "./codec.js";
import { RecentIds, fullJitter } from "./backoff.js";
import {
  ProtocolVersionRefused,
  PushClientError,
  RetryLater,
  RouteLookupFailed,
  SessionReplaced,
  SubscriptionFailed,
  UplinkNotSent,
} from "./errors.js";
import {
  MAX_AVOID,
  RouteFetcher,
  checkReglogUrl,
  parseRoute,
  serverAddress,
  websocketUrl,
} from "./route.js";
import { CLIENT_ID, CLIENT_ID_RULE, isClientId, isTopic } from "./identifiers.js";
import { Session } from "./session.js";
import { SYSTEM_CLOCK } from "./clock.js";

/** The states of a PushClient (`client.state`). */
export const ClientState = Object.freeze({
  STOPPED: "stopped", // not started, stopped, or gave up
  WAITING: "waiting", // backing off before the next attempt
  ROUTING: "routing", // asking reglog for a token and a server
  CONNECTING: "connecting", // WebSocket handshake under way
  AUTHENTICATING: "authenticating", // AUTH sent, waiting for AUTH_OK
  ONLINE: "online", // authenticated: messages flow
  STOPPING: "stopping", // closing the connection after stop() or giving up
});

/** Seconds a server the client failed to reach stays on its `avoid` list. */
export const AVOID_SECONDS = 60;
export { CLIENT_ID };

/**
 * The version to try after a server refused `refused`: the newest older one
 * among the numbers its AUTH_FAIL reason lists ("this server speaks 1, 2", or
 * after a colon), else version 1, which every server speaks.
 */
export function fallbackVersion(refused, reason) {
  const match = /(?:speaks|:)(?!.*(?:speaks|:))(.*)$/s.exec(reason);
  const named = match ? (match[1].match(/\d+/g) || []).map(Number) : [];
  const older = named.filter((version) => version >= 1 && version < refused);
  return older.length ? Math.max(...older) : 1;
}

/** The events a PushClient dispatches; `event.detail` carries the fields. */
export class PushClientEvent extends Event {
  constructor(type, detail) {
    super(type);
    this.detail = detail;
  }
}

function positive(name, value) {
  if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(`${name} must be a positive number of seconds, not ${value}`);
  }
  return value;
}

function atLeastOne(name, value) {
  if (!Number.isInteger(value) || value < 1) {
    throw new RangeError(`${name} must be an integer of at least 1, not ${value}`);
  }
  return value;
}

/** The clientId if valid; RangeError with the rule otherwise. */
export function checkClientId(clientId) {
  if (!isClientId(clientId)) {
    throw new RangeError(`clientId must be ${CLIENT_ID_RULE}, not ${JSON.stringify(clientId)}`);
  }
  return clientId;
}

function abortError(message) {
  const error = new Error(message);
  error.name = "AbortError";
  return error;
}

const NO_LOG = Object.freeze({ info() {}, warn() {} });

/**
 * A device's connection to PigeonPush over WebSocket, kept up until `stop()`.
 * See docs/js-client.rst for the options, the events and the policies.
 */
export class PushClient extends EventTarget {
  constructor({
    reglogUrl,
    clientId,
    onMessage = null,
    secret = null,
    heartbeat = 30,
    maxMissedPongs = 2,
    reconnectThreshold = 1,
    maxRouteFailures = null,
    authTimeout = 10,
    connectTimeout = 10,
    httpTimeout = 10,
    dedupWindow = 1024,
    maxFrame = DEFAULT_MAX_FRAME,
    backoff = null,
    WebSocket = null,
    fetch = null,
    routeSource = null,
    logger = NO_LOG,
    clock = SYSTEM_CLOCK,
  } = {}) {
    super();
    if (onMessage !== null && typeof onMessage !== "function") {
      throw new TypeError(`onMessage must be a function, not ${typeof onMessage}`);
    }
    if (!Number.isInteger(maxFrame) || maxFrame < MIN_MAX_FRAME || maxFrame > MAX_MAX_FRAME) {
      throw new RangeError(`maxFrame must be an integer from ${MIN_MAX_FRAME} to ${MAX_MAX_FRAME}`);
    }
    if (backoff !== null && typeof backoff !== "function") {
      throw new TypeError("backoff must be a function attempt -> seconds");
    }
    if (maxRouteFailures !== null) atLeastOne("maxRouteFailures", maxRouteFailures);
    this.clientId = checkClientId(clientId);
    this.reglogUrl = routeSource === null ? checkReglogUrl(reglogUrl) : (reglogUrl ?? null);
    this._onMessage = onMessage;
    this._heartbeat = positive("heartbeat", heartbeat);
    this._maxMissed = atLeastOne("maxMissedPongs", maxMissedPongs);
    this._reconnectThreshold = atLeastOne("reconnectThreshold", reconnectThreshold);
    this._authTimeout = positive("authTimeout", authTimeout);
    this._connectTimeout = positive("connectTimeout", connectTimeout);
    this._maxFrame = maxFrame;
    this._backoff = backoff ?? fullJitter();
    this._recent = new RecentIds(dedupWindow);
    this._WebSocket = WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError(
        "no WebSocket class: pass one as the WebSocket option " +
          "(Node 20 has a global one with --experimental-websocket; Node 22 and browsers always)",
      );
    }
    this._log = logger;
    this._clock = clock;
    if (routeSource === null) {
      const fetcher = new RouteFetcher({
        reglogUrl,
        clientId: this.clientId,
        secret,
        attempts: maxRouteFailures,
        backoff: this._backoff,
        timeout: positive("httpTimeout", httpTimeout),
        avoid: () => this.avoid,
        fetch: fetch ?? ((...args) => globalThis.fetch(...args)),
        clock,
        onRetry: ({ url, attempt, reason, delay }) =>
          this._log.info("Route lookup failed; retrying", { url, attempt, reason, delay }),
      });
      routeSource = (signal) => fetcher.lookup(signal);
    } else if (typeof routeSource !== "function") {
      throw new TypeError("routeSource must be a function signal -> Promise<route>");
    }
    this._routeSource = routeSource;

    this._state = ClientState.STOPPED;
    this._route = null;
    this._failures = 0; // attempts in a row that did not reach AUTH_OK
    this._routeFailures = 0; // connections that never came up on the current route
    this._unreachable = new Map(); // server -> when the client last failed to reach it (ms)
    this._authRefused = false;
    this._timer = null; // the backoff delay
    this._routing = null; // the AbortController of the route lookup under way
    this._session = null;
    this._online = null;
    this._gaveUp = null;
    this._startAfterStop = false;
    this._onlineWaiters = [];
    this._stopWaiters = [];
    this._inFlight = new Map(); // messageId -> sessions whose PUSH awaits the callback
    this._version = PROTOCOL_VERSION;
    this._uplinks = new Map(); // uplinkId -> the uplink not acknowledged yet, in the order sent
  }

  // --- public API ---------------------------------------------------------------

  /** One of ClientState's values. */
  get state() {
    return this._state;
  }

  /** The push server of the current connection, or null. */
  get server() {
    return this._session?.server ?? null;
  }

  /** Why the client last gave up (cleared by `start()`), or null. */
  get gaveUp() {
    return this._gaveUp;
  }

  /** The protocol version the next AUTH carries (lower after a server refused it). */
  get protocolVersion() {
    return this._version;
  }

  /**
   * The servers (`host:port`) this client failed to reach within
   * AVOID_SECONDS, most recent first: what the next route request asks
   * reglog to avoid.
   */
  get avoid() {
    const since = this._clock.now() - AVOID_SECONDS * 1000;
    for (const [server, failedAt] of this._unreachable) {
      if (failedAt <= since) this._unreachable.delete(server);
    }
    return [...this._unreachable.keys()].reverse();
  }

  /** Start connecting (idempotent). After giving up, starts afresh. */
  start() {
    if (this._state === ClientState.STOPPING) {
      this._startAfterStop = true;
      return;
    }
    if (this._state !== ClientState.STOPPED) return;
    this._failures = 0;
    this._routeFailures = 0;
    this._gaveUp = null;
    this._attempt();
  }

  /**
   * Stop trying and close the connection; resolves once it is closed.
   * Pending `whenOnline()` promises reject with an AbortError. Messages whose
   * callbacks still run are not ACKed: the server delivers them again later.
   */
  stop() {
    this._startAfterStop = false;
    if (this._state === ClientState.STOPPED) return Promise.resolve();
    const stopped = new Promise((resolve) => this._stopWaiters.push(resolve));
    if (this._state === ClientState.STOPPING) return stopped;
    this._halt();
    this._failOnlineWaiters(abortError("the client was stopped"));
    this._uplinksLost(null, "the client was stopped", true);
    if (this._session === null) this._finishStopping();
    return stopped;
  }

  /** The same as `stop()`. */
  close() {
    return this.stop();
  }

  /**
   * Resolves with `{server, heartbeat}` of the current session, or of the
   * next one; rejects with the error if the client gives up, with an
   * AbortError if it is stopped first.
   */
  whenOnline() {
    if (this._online !== null) return Promise.resolve(this._online);
    return new Promise((resolve, reject) => this._onlineWaiters.push({ resolve, reject }));
  }

  /**
   * Send `data` (an object or Map of strings, at most 64 pairs and 4,096
   * bytes of UTF-8) to the application servers. Resolves with the uplinkId
   * once the push server has stored it (UPLINK_ACK). Rejects with
   * UplinkNotSent when the connection is down, or drops before the
   * UPLINK_ACK, or the client stops; with `resendOnReconnect` the uplink is
   * kept instead and sent again, with the same id, on each next session until
   * acknowledged (the server stores it once). `uplinkId` defaults to a random
   * id. Throws RangeError for data over the limits or an id already pending,
   * TypeError for data that is not a map of strings.
   */
  sendUplink(data, { uplinkId = null, resendOnReconnect = false } = {}) {
    const id = uplinkId ?? randomId();
    let problem;
    try {
      problem = uplinkProblem(id, data);
    } catch (e) {
      if (e instanceof EncodeError) throw new TypeError(e.message);
      throw e;
    }
    if (problem !== null) {
      if (problem.startsWith("data must map")) throw new TypeError(problem);
      throw new RangeError(problem);
    }
    if (this._uplinks.has(id)) {
      throw new RangeError(`uplink ${JSON.stringify(id)} is already waiting for its UPLINK_ACK`);
    }
    const pairs = data instanceof Map ? Object.fromEntries(data) : { ...data };
    const pending = { uplinkId: id, data: pairs, resend: resendOnReconnect, session: null };
    const promise = new Promise((resolve, reject) => {
      pending.resolve = resolve;
      pending.reject = reject;
    });
    this._uplinks.set(id, pending);
    const session = this._session;
    if (session !== null && session.canUplink) {
      this._writeUplink(session, pending);
    } else if (!resendOnReconnect) {
      const online = session !== null && session.authenticated;
      this._uplinkFailed(
        pending,
        online ? "the push server speaks protocol version 1" : "not connected",
      );
    }
    return promise;
  }

  _writeUplink(session, pending) {
    try {
      session.sendUplink(pending.uplinkId, pending.data);
    } catch (e) {
      if (!(e instanceof EncodeError)) throw e;
      // Over this server's frame limit: no session would carry it.
      this._uplinks.delete(pending.uplinkId);
      pending.reject(new RangeError(`the uplink cannot be sent: ${e.message}`));
      return;
    }
    pending.session = session;
  }

  _uplinkFailed(pending, reason) {
    this._uplinks.delete(pending.uplinkId);
    pending.reject(new UplinkNotSent(pending.uplinkId, reason));
  }

  /** Fail the uplinks of `session` not to be resent (all of them when `every`). */
  _uplinksLost(session, reason, every) {
    for (const pending of [...this._uplinks.values()]) {
      if (every || (pending.session === session && !pending.resend)) {
        this._uplinkFailed(pending, reason);
      } else if (pending.session === session) {
        pending.session = null;
      }
    }
  }

  _uplinkAcked(session, uplinkId) {
    const pending = this._uplinks.get(uplinkId);
    if (pending === undefined) return;
    this._uplinks.delete(uplinkId);
    pending.resolve(uplinkId);
  }

  /** `addEventListener(type, listener)`, returning a function that removes it. */
  on(type, listener) {
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  // --- the attempt loop ---------------------------------------------------------

  _attempt() {
    this._timer = null;
    if (this._route !== null) {
      this._connect(this._route);
      return;
    }
    this._state = ClientState.ROUTING;
    const controller = new AbortController();
    this._routing = controller;
    let lookup;
    try {
      lookup = Promise.resolve(this._routeSource(controller.signal));
    } catch (e) {
      lookup = Promise.reject(e);
    }
    lookup.then(
      (route) => this._routed(route, controller),
      (error) => this._routeFailed(error, controller),
    );
  }

  _routed(answer, controller) {
    if (this._routing !== controller || this._state !== ClientState.ROUTING) return;
    this._routing = null;
    let route;
    try {
      route = parseRoute(answer);
    } catch (e) {
      this._routeFailed(e, null);
      return;
    }
    this._route = route;
    this._routeFailures = 0;
    if (!this.avoid.includes(serverAddress(route.server))) {
      // A server not known to be down: the backoff starts again, so a client
      // sent elsewhere after a crash comes back at once.
      this._failures = 0;
    }
    this._connect(route);
  }

  _routeFailed(error, controller) {
    if (
      controller !== null &&
      (this._routing !== controller || this._state !== ClientState.ROUTING)
    ) {
      return; // cancelled by stop()
    }
    this._routing = null;
    if (!(error instanceof PushClientError)) {
      error = new RouteLookupFailed(
        this.reglogUrl ?? "the route source",
        1,
        `${error?.name}: ${error?.message}`,
      );
    }
    this._giveUp(error);
  }

  _connect(route) {
    this._state = ClientState.CONNECTING;
    const server = serverAddress(route.server);
    let url;
    let auth;
    try {
      url = websocketUrl(route);
      auth = encodePayload({
        type: "AUTH",
        version: this._version,
        clientId: this.clientId,
        token: route.token,
      });
      if (auth.length > MAX_AUTH_FRAME) {
        throw new RangeError(
          `the AUTH frame would be ${auth.length} bytes, over ${MAX_AUTH_FRAME}: the token is too long`,
        );
      }
    } catch (e) {
      this._log.warn("Unusable route", { server: route.server, error: e.message });
      this._reportError(e, false);
      this._unreached(server); // reglog then prefers another server
      this._route = null;
      this._attemptFailed();
      return;
    }
    const session = new Session(this, {
      server,
      url,
      auth,
      version: this._version,
      heartbeat: route.heartbeat ?? this._heartbeat,
      maxMissedPongs: this._maxMissed,
      authTimeout: this._authTimeout,
      connectTimeout: this._connectTimeout,
      maxFrame: this._maxFrame,
      WebSocket: this._WebSocket,
      clock: this._clock,
    });
    this._session = session;
    try {
      session.start();
    } catch (e) {
      this._session = null;
      this._log.warn("Could not open a WebSocket", { url, error: e.message });
      this._reportError(e, false);
      this._route = null;
      this._attemptFailed();
    }
  }

  _attemptFailed() {
    this._failures += 1;
    this._routeFailures += 1;
    if (this._route !== null && this._routeFailures >= this._reconnectThreshold) {
      this._log.info("Connection attempts failed; asking reglog for a new route", {
        count: this._routeFailures,
        server: this._route.server,
      });
      this._route = null;
    }
    this._retryLater();
  }

  _retryLater() {
    // Retry n after n failures in a row; a session that was lost (no failure
    // yet) and the first failure both wait within the first window.
    const delay = this._backoff(Math.max(this._failures, 1));
    this._state = ClientState.WAITING;
    this._timer = this._clock.setTimeout(() => this._attempt(), delay * 1000);
  }

  _unreached(server) {
    this._unreachable.delete(server); // re-insert: the most recent comes last
    this._unreachable.set(server, this._clock.now());
    while (this._unreachable.size > MAX_AVOID) {
      this._unreachable.delete(this._unreachable.keys().next().value);
    }
  }

  /** Cancel whatever is pending and close the connection (stop, give up). */
  _halt() {
    if (this._timer !== null) {
      this._clock.clearTimeout(this._timer);
      this._timer = null;
    }
    if (this._routing !== null) {
      this._routing.abort(abortError("the client was stopped"));
      this._routing = null;
    }
    const session = this._session;
    if (session !== null && session.opened) {
      this._state = ClientState.STOPPING;
      session.close();
      return;
    }
    if (session !== null) {
      // Still connecting: nothing to say goodbye to.
      this._session = null;
      session.close();
    }
    this._state = ClientState.STOPPED;
  }

  _giveUp(error) {
    this._log.warn("Giving up", { error: error.message });
    this._route = null;
    this._gaveUp = error;
    this._halt();
    this._failOnlineWaiters(error);
    this._uplinksLost(null, `the client gave up: ${error.message}`, true);
    this._reportError(error, true);
  }

  _finishStopping() {
    this._state = ClientState.STOPPED;
    const waiters = this._stopWaiters;
    this._stopWaiters = [];
    for (const resolve of waiters) resolve();
    if (this._startAfterStop) {
      this._startAfterStop = false;
      this.start();
    }
  }

  _failOnlineWaiters(error) {
    const waiters = this._onlineWaiters;
    this._onlineWaiters = [];
    for (const { reject } of waiters) reject(error);
  }

  _emit(type, detail) {
    this.dispatchEvent(new PushClientEvent(type, detail));
  }

  /** The "error" event: fatal when the client gave up, otherwise for information. */
  _reportError(error, fatal) {
    this._emit("error", { error, fatal });
  }

  // --- what the session reports -------------------------------------------------

  _connectFailed(session, reason) {
    if (session !== this._session) return; // abandoned by stop()
    this._session = null;
    this._log.info("Could not connect", { server: session.server, reason });
    this._unreached(session.server);
    this._attemptFailed();
  }

  _sessionStarted(session) {
    // AUTH is on its way: the token is spent, whatever happens next.
    this._route = null;
    this._authRefused = false;
    this._state = ClientState.AUTHENTICATING;
    this._emit("connected", { server: session.server });
  }

  _sessionAuthenticated(session, heartbeat, frame) {
    this._failures = 0;
    this._routeFailures = 0;
    this._unreachable.delete(session.server);
    const online = {
      server: session.server,
      heartbeat,
      maxFrame: frame.maxFrame,
      ackWindow: frame.ackWindow,
    };
    this._online = online;
    this._state = ClientState.ONLINE;
    this._log.info("Authenticated", { server: session.server, clientId: this.clientId, heartbeat });
    const waiters = this._onlineWaiters;
    this._onlineWaiters = [];
    this._emit("online", online);
    for (const { resolve } of waiters) resolve(online);
    // Uplinks kept from an earlier session go again, with their ids, in order.
    for (const pending of [...this._uplinks.values()]) {
      if (pending.session === null && this._session === session && session.canUplink) {
        this._writeUplink(session, pending);
      }
    }
  }

  _sessionRefused(session, frame) {
    // The server is alive and answered: not one to avoid. The next attempt
    // asks reglog for a fresh token.
    this._authRefused = true;
    if (frame.code === "VERSION" && this._version > 1) {
      // An older server (a rolling upgrade): speak the newest version it names
      // below ours (version 2: no topics; 1: no NACK nor uplinks).
      const older = fallbackVersion(this._version, frame.reason || "");
      this._log.info("The server does not speak this protocol version; using an older one", {
        server: session.server,
        version: this._version,
        older,
      });
      this._version = older;
      return;
    }
    if (frame.code === "VERSION") {
      this._giveUp(
        new ProtocolVersionRefused(
          `push server ${session.server} does not speak protocol version ${this._version}: ` +
            (frame.reason || "no reason given"),
        ),
      );
      return;
    }
    this._log.info("AUTH refused; asking reglog again", {
      server: session.server,
      code: frame.code,
    });
  }

  _sessionKicked(session, frame) {
    this._emit("kicked", { server: session.server, reason: frame.reason, text: frame.text });
    if (frame.reason === "REPLACED") {
      this._giveUp(
        new SessionReplaced(
          `clientId ${JSON.stringify(this.clientId)} logged in again elsewhere and took over ` +
            `the session on ${session.server}; not reconnecting`,
        ),
      );
    }
  }

  _peerError(session, frame) {
    const error = new Error(
      `push server ${session.server} reported ERROR ${frame.code}: ${frame.text}`,
    );
    error.code = frame.code;
    this._reportError(error, false);
  }

  _sessionEnded(session, reason) {
    this._failRequests(session);
    if (session !== this._session) return;
    this._session = null;
    this._online = null;
    this._uplinksLost(session, `the connection ended before UPLINK_ACK (${reason})`, false);
    const detail = { server: session.server, reason, authenticated: session.authenticated };
    if (this._state === ClientState.STOPPING) {
      this._emit("offline", detail);
      this._finishStopping();
      return;
    }
    if (session.authenticated) {
      this._log.info("Lost the connection; reconnecting through reglog", {
        server: session.server,
        reason,
      });
      this._retryLater();
    } else {
      this._log.info("The connection ended before AUTH_OK", { server: session.server, reason });
      if (!this._authRefused) this._unreached(session.server);
      this._attemptFailed();
    }
    this._emit("offline", detail);
  }

  /** Subscribe this device to `topic` (protocol version 3; --device-topics). */
  subscribe(topic) {
    return this._request("SUBSCRIBE", topic);
  }

  /** Leave `topic`; as `subscribe`. */
  unsubscribe(topic) {
    return this._request("UNSUBSCRIBE", topic);
  }

  _request(type, topic) {
    if (!isTopic(topic)) {
      return Promise.reject(new TypeError(`not a topic name: ${JSON.stringify(topic)}`));
    }
    this._requests ??= new Map();
    this._nextRequest = ((this._nextRequest ?? 0) % 0xffffffff) + 1;
    const requestId = this._nextRequest;
    const session = this._session;
    if (session === null || !session.sendRequest(type, requestId, topic)) {
      return Promise.reject(new SubscriptionFailed("OFFLINE", "no session of protocol version 3"));
    }
    return new Promise((resolve, reject) => {
      this._requests.set(requestId, { session, resolve, reject });
    });
  }

  _subscriptionAnswered(session, frame) {
    const waiting = this._requests?.get(frame.requestId);
    if (waiting === undefined) return;
    this._requests.delete(frame.requestId);
    if (frame.code === "OK") waiting.resolve();
    else waiting.reject(new SubscriptionFailed(frame.code, frame.reason));
  }

  _failRequests(session) {
    for (const [requestId, waiting] of this._requests ?? []) {
      if (waiting.session !== session) continue;
      this._requests.delete(requestId);
      waiting.reject(new SubscriptionFailed("DISCONNECTED", "the session ended before the answer"));
    }
  }

  _messagesMissed(session, frame) {
    // The server's log of the topic no longer holds everything this device
    // had not received: some of its messages will never come.
    this._emit("missed", { topic: frame.topic });
  }

  _pushReceived(session, frame) {
    const { messageId } = frame;
    if (this._recent.has(messageId)) {
      // Handled before; its ACK was lost.
      const sent = session.sendAck(messageId);
      this._emit("acked", { messageId, sent, duplicate: true });
      return;
    }
    const waiting = this._inFlight.get(messageId);
    if (waiting !== undefined) {
      // Delivered again while the callback still runs: ACK when it succeeds.
      const open = waiting.filter((other) => !other.closing);
      open.push(session);
      this._inFlight.set(messageId, open);
      return;
    }
    this._inFlight.set(messageId, [session]);
    const message = Object.freeze({
      messageId,
      title: frame.title,
      text: frame.text,
      extras: Object.freeze(frame.extras),
      topic: frame.topic ?? null,
      receivedAt: new Date(this._clock.now()),
    });
    this._emit("message", { message });
    let outcome;
    try {
      outcome = Promise.resolve(this._onMessage === null ? undefined : this._onMessage(message));
    } catch (e) {
      outcome = Promise.reject(e);
    }
    outcome.then(
      () => this._handled(messageId),
      (error) => this._notHandled(error, messageId),
    );
  }

  _handled(messageId) {
    const sessions = this._inFlight.get(messageId) ?? [];
    this._inFlight.delete(messageId);
    this._recent.add(messageId);
    let sent = false;
    for (const session of sessions) sent = session.sendAck(messageId) || sent;
    this._emit("acked", { messageId, sent, duplicate: false });
  }

  _notHandled(error, messageId) {
    const sessions = this._inFlight.get(messageId) ?? [];
    this._inFlight.delete(messageId);
    const retryAfter = error instanceof RetryLater ? error.retryAfter : 0;
    if (!(error instanceof RetryLater)) {
      this._log.warn("The message callback failed; NACKed, it will be delivered again", {
        messageId,
        error: `${error?.name}: ${error?.message}`,
      });
    }
    let sent = false;
    for (const session of sessions) sent = session.sendNack(messageId, retryAfter) || sent;
    this._emit("nacked", { messageId, retryAfter, error, sent });
  }
}

/**
 * A random uplinkId: 16 URL-safe characters. It needs to be unique, not
 * secret: Node 18 without the global Web Crypto falls back to Math.random.
 */
function randomId() {
  const bytes = new Uint8Array(12);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replaceAll("+", "-").replaceAll("/", "_");
}

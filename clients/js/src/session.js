// One WebSocket connection to a push server, from AUTH to close.
//
// The session knows the frames and the timers; what a PUSH means and where
// to reconnect belong to its owner, a PushClient (the same split as the
// Python SDK's ClientProtocol and SessionOwner). Before AUTH_OK only the
// answer to AUTH is accepted; then PUSH, PONG, KICK and ERROR.

import {
  DecodeError,
  EncodeError,
  NACK_VERSION,
  SUBPROTOCOL,
  UPLINK_VERSION,
  checkLength,
  decode,
  encodePayload,
} from "./codec.js";

/** Seconds a closing session waits for the WebSocket's close before it lets go. */
export const CLOSE_GRACE = 5;

const PING = encodePayload({ type: "PING" });
const MAX_RETRY_AFTER_MS = 0xffffffff;

/**
 * Heartbeat: when nothing was *sent* for the heartbeat interval (the server's
 * idle timeout counts what it receives), send PING. Every frame received
 * shows the connection is alive and clears the count of unanswered PINGs;
 * when a PING is due and `maxMissedPongs` are already unanswered, the
 * connection is dead: drop it.
 */
export class Session {
  constructor(
    owner,
    {
      server,
      url,
      auth,
      version,
      heartbeat,
      maxMissedPongs,
      authTimeout,
      connectTimeout,
      maxFrame,
      WebSocket,
      clock,
    },
  ) {
    this.server = server;
    this.url = url;
    this.version = version;
    this.opened = false; // the WebSocket is up and AUTH was sent
    this.authenticated = false;
    this.closing = false;
    this.maxFrame = maxFrame;
    this.heartbeat = heartbeat; // seconds
    this._owner = owner;
    this._auth = auth;
    this._maxMissed = maxMissedPongs;
    this._authTimeout = authTimeout;
    this._connectTimeout = connectTimeout;
    this._WebSocket = WebSocket;
    this._clock = clock;
    this._ws = null;
    this._timer = null;
    this._graceTimer = null;
    this._lastSent = 0;
    this._unanswered = 0;
    this._reason = null;
    this._ended = false;
    this._listeners = null;
  }

  /** Open the WebSocket (throws what its constructor throws: a bad URL). */
  start() {
    const ws = new this._WebSocket(this.url, [SUBPROTOCOL]);
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    this._listeners = {
      open: () => this._opened(),
      message: (event) => this._received(event.data),
      close: (event) => this._closed(event),
      error: () => this._setReason(this.opened ? "the WebSocket failed" : null),
    };
    for (const [type, listener] of Object.entries(this._listeners)) {
      ws.addEventListener(type, listener);
    }
    this._timer = this._clock.setTimeout(() => {
      this._timer = null;
      this._setReason(`no connection within ${this._connectTimeout}s`);
      this._finish();
    }, this._connectTimeout * 1000);
  }

  // --- connection life --------------------------------------------------------

  _opened() {
    if (this._ended) return;
    this._cancelTimer();
    if (this._ws.protocol !== SUBPROTOCOL) {
      // Not a PigeonPush endpoint, or one that refuses this protocol version
      // family: nothing was sent, the token is still unused.
      this._setReason(
        `the server did not accept the WebSocket subprotocol ${SUBPROTOCOL} ` +
          `(it chose ${JSON.stringify(this._ws.protocol)})`,
      );
      this._finish();
      return;
    }
    this.opened = true;
    this._send(this._auth);
    this._timer = this._clock.setTimeout(() => {
      this._timer = null;
      this._drop(`no answer to AUTH within ${this._authTimeout}s`);
    }, this._authTimeout * 1000);
    this._owner._sessionStarted(this);
  }

  _closed(event) {
    const detail = event?.reason ? `: ${event.reason}` : "";
    this._setReason(`the connection closed (code ${event?.code ?? "unknown"}${detail})`);
    this._finish();
  }

  /** End the session cleanly (the owner is stopping). */
  close() {
    this._setReason("closed by the client");
    if (!this.opened) {
      this._finish();
      return;
    }
    this._closeWith(null);
  }

  /** Close after `frame` (or none), then wait up to CLOSE_GRACE for the close. */
  _closeWith(frame) {
    if (this.closing || this._ended) return;
    this.closing = true;
    this._cancelTimer();
    if (frame !== null) {
      try {
        this._send(encodePayload(frame));
      } catch {
        // the socket is failing already; the close below ends it
      }
    }
    try {
      this._ws.close(1000);
    } catch {
      // closed already
    }
    this._graceTimer = this._clock.setTimeout(() => {
      this._graceTimer = null;
      this._finish();
    }, CLOSE_GRACE * 1000);
  }

  /** Close without waiting for the peer: it stopped answering. */
  _drop(reason) {
    this._setReason(reason);
    this._closeWith(null);
    this._finish();
  }

  _finish() {
    if (this._ended) return;
    this._ended = true;
    this.closing = true;
    this._cancelTimer();
    if (this._graceTimer !== null) {
      this._clock.clearTimeout(this._graceTimer);
      this._graceTimer = null;
    }
    const ws = this._ws;
    if (ws !== null) {
      for (const [type, listener] of Object.entries(this._listeners)) {
        ws.removeEventListener(type, listener);
      }
      if (ws.readyState === 0 || ws.readyState === 1) {
        try {
          ws.close(1000);
        } catch {
          // closed already
        }
      }
    }
    const reason = this._reason ?? "the connection closed";
    if (this.opened) this._owner._sessionEnded(this, reason);
    else this._owner._connectFailed(this, reason);
  }

  _setReason(reason) {
    if (this._reason === null && reason !== null) this._reason = reason;
  }

  _cancelTimer() {
    if (this._timer !== null) {
      this._clock.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  // --- frames -------------------------------------------------------------------

  _received(data) {
    if (this._ended || this.closing || !this.opened) return;
    let frame;
    try {
      if (typeof data === "string") {
        throw new DecodeError("MALFORMED", "a text message: frames travel as binary messages");
      }
      if (!(data instanceof ArrayBuffer) && !ArrayBuffer.isView(data)) {
        throw new DecodeError("MALFORMED", "a message that is not binary data");
      }
      checkLength(data.byteLength, this.maxFrame);
      frame = decode(data);
    } catch (e) {
      if (!(e instanceof DecodeError)) throw e;
      this.protocolError(e.code, e.message);
      return;
    }
    this._unanswered = 0;
    try {
      if (this.authenticated) this._online(frame);
      else this._beforeAuth(frame);
    } catch (e) {
      this._owner._reportError(e, false);
      this.protocolError("INTERNAL", "internal error");
    }
  }

  _beforeAuth(frame) {
    switch (frame.type) {
      case "AUTH_OK":
        this._authenticatedBy(frame);
        break;
      case "AUTH_FAIL":
        this._setReason(`AUTH refused (${frame.code}${frame.reason ? `: ${frame.reason}` : ""})`);
        this._owner._sessionRefused(this, frame);
        this._closeWith(null);
        break;
      case "KICK":
        this._kicked(frame);
        break;
      case "ERROR":
        this._peerError(frame);
        break;
      default:
        this.protocolError("UNEXPECTED", `${frame.type} before AUTH_OK`);
    }
  }

  _online(frame) {
    switch (frame.type) {
      case "PUSH":
        this._owner._pushReceived(this, frame);
        break;
      case "MISSED":
        this._owner._messagesMissed(this, frame);
        break;
      case "SUBSCRIPTION":
        this._owner._subscriptionAnswered(this, frame);
        break;
      case "PONG":
        break; // _received already counted it
      case "UPLINK_ACK":
        this._owner._uplinkAcked(this, frame.uplinkId);
        break;
      case "KICK":
        this._kicked(frame);
        break;
      case "ERROR":
        this._peerError(frame);
        break;
      default:
        this.protocolError("UNEXPECTED", `${frame.type} after AUTH_OK`);
    }
  }

  _authenticatedBy(frame) {
    this._cancelTimer();
    this.authenticated = true;
    // The server's values win: its idle timeout is built on its heartbeat.
    this.maxFrame = frame.maxFrame;
    this.heartbeat = frame.heartbeatMs / 1000;
    this._lastSent = this._clock.now();
    this._timer = this._clock.setTimeout(() => this._heartbeatDue(), frame.heartbeatMs);
    this._owner._sessionAuthenticated(this, this.heartbeat, frame);
  }

  _kicked(frame) {
    this._setReason(`kicked by the server (${frame.reason}${frame.text ? `: ${frame.text}` : ""})`);
    this._owner._sessionKicked(this, frame);
    this._closeWith(null);
  }

  _peerError(frame) {
    this._setReason(`the server reported ERROR ${frame.code}: ${frame.text}`);
    this._owner._peerError(this, frame);
    this._closeWith(null);
  }

  /** End the connection with ERROR `code` (a name of ErrorCode). */
  protocolError(code, text) {
    this._setReason(`protocol error ${code}: ${text}`);
    this._closeWith({ type: "ERROR", code, text });
  }

  // --- sending ------------------------------------------------------------------

  _send(bytes) {
    this._ws.send(bytes);
    this._lastSent = this._clock.now();
  }

  /** ACK a message, if this session can still carry it; true if sent. */
  sendAck(messageId) {
    if (!this.authenticated || this.closing) return false;
    this._send(encodePayload({ type: "ACK", messageId }));
    return true;
  }

  /**
   * NACK a message (its callback failed), if this session can carry it: a
   * version 1 session cannot, and the server's ACK timeout brings the message
   * back instead. True if sent.
   */
  /** SUBSCRIBE or UNSUBSCRIBE, if this session can carry it (version 3). True if sent. */
  sendRequest(type, requestId, topic) {
    if (!this.authenticated || this.closing || this.version < 3) return false;
    this._send(encodePayload({ type, requestId, topic }));
    return true;
  }

  sendNack(messageId, retryAfter = 0) {
    if (!this.authenticated || this.closing || this.version < NACK_VERSION) return false;
    let retryAfterMs = Math.round(retryAfter * 1000);
    if (!(retryAfterMs >= 0 && retryAfterMs <= MAX_RETRY_AFTER_MS)) retryAfterMs = 0;
    try {
      this._send(encodePayload({ type: "NACK", messageId, retryAfterMs }));
    } catch (e) {
      if (e instanceof EncodeError) return false;
      throw e;
    }
    return true;
  }

  /** Whether UPLINK can go out on this session now (version 2, online). */
  get canUplink() {
    return this.authenticated && !this.closing && this.version >= UPLINK_VERSION;
  }

  /**
   * Send UPLINK if this session can carry it; false if it cannot. Throws
   * EncodeError for one over the server's frame limit.
   */
  sendUplink(uplinkId, data) {
    if (!this.canUplink) return false;
    const bytes = encodePayload({ type: "UPLINK", uplinkId, data });
    if (bytes.length > this.maxFrame) {
      throw new EncodeError(
        `the UPLINK frame is ${bytes.length} bytes, over the server's limit of ${this.maxFrame}`,
      );
    }
    this._send(bytes);
    return true;
  }

  // --- timers -------------------------------------------------------------------

  _heartbeatDue() {
    this._timer = null;
    const intervalMs = this.heartbeat * 1000;
    const remaining = this._lastSent + intervalMs - this._clock.now();
    if (remaining > 0) {
      // Something was sent since this timer was set: not quiet yet.
      this._timer = this._clock.setTimeout(() => this._heartbeatDue(), remaining);
      return;
    }
    if (this._unanswered >= this._maxMissed) {
      this._drop(`no answer to ${this._unanswered} PING(s) in a row`);
      return;
    }
    this._send(PING);
    this._unanswered += 1;
    this._timer = this._clock.setTimeout(() => this._heartbeatDue(), intervalMs);
  }
}

// Test doubles for the client's two seams: a WebSocket class whose "server
// side" the test drives by hand, and a fetch that answers from a script.
// Nothing here opens a socket.

import { decode, encodePayload } from "../pigeonpush.js";

export const flush = () => new Promise((resolve) => setImmediate(resolve));

/**
 * A clock that moves only when told (Twisted's task.Clock for this client):
 * `advance(ms)` runs the timers that fall due, in order, each at its time.
 */
export class FakeClock {
  constructor(now = 1_000_000) {
    this._now = now;
    this._calls = [];
    this._seq = 0;
  }

  now() {
    return this._now;
  }

  setTimeout(callback, ms) {
    const call = { at: this._now + Math.max(0, ms || 0), seq: this._seq++, callback };
    this._calls.push(call);
    return call;
  }

  clearTimeout(call) {
    const index = this._calls.indexOf(call);
    if (index >= 0) this._calls.splice(index, 1);
  }

  /** Timers not yet run. */
  get pending() {
    return this._calls.length;
  }

  advance(ms) {
    const target = this._now + ms;
    for (;;) {
      let next = null;
      for (const call of this._calls) {
        if (
          call.at <= target &&
          (next === null || call.at < next.at || (call.at === next.at && call.seq < next.seq))
        ) {
          next = call;
        }
      }
      if (next === null) break;
      this._calls.splice(this._calls.indexOf(next), 1);
      this._now = next.at;
      next.callback();
    }
    this._now = target;
  }
}

export class FakeWebSocket extends EventTarget {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor(url, protocols) {
    super();
    this.url = url;
    this.protocols = protocols;
    this.readyState = FakeWebSocket.CONNECTING;
    this.binaryType = "blob";
    this.protocol = "";
    this.raw = []; // what the client sent, as given to send()
    this.closeCalls = [];
  }

  /** The frames the client sent, decoded, with plain extras. */
  get sent() {
    return this.raw.map((data) => JSON.parse(JSON.stringify(decode(data))));
  }

  get sentTypes() {
    return this.sent.map((frame) => frame.type);
  }

  send(data) {
    if (this.readyState === FakeWebSocket.CONNECTING) {
      throw new Error("InvalidStateError: still connecting");
    }
    if (this.readyState !== FakeWebSocket.OPEN) return; // dropped, as browsers do
    if (!(data instanceof Uint8Array)) throw new TypeError("the client sends Uint8Arrays");
    this.raw.push(data.slice());
  }

  close(code) {
    this.closeCalls.push(code);
    if (this.readyState < FakeWebSocket.CLOSING) this.readyState = FakeWebSocket.CLOSING;
  }

  // --- the server side, driven by the test ----------------------------------------

  accept(protocol = "pigeonpush.v1") {
    this.readyState = FakeWebSocket.OPEN;
    this.protocol = protocol;
    this.dispatchEvent(new Event("open"));
  }

  /** Deliver a frame (an object, encoded here) or raw bytes or a string. */
  receive(frameOrData) {
    let data = frameOrData;
    if (frameOrData !== null && typeof frameOrData === "object" && "type" in frameOrData) {
      data = encodePayload(frameOrData).slice().buffer;
    } else if (frameOrData instanceof Uint8Array) {
      data = frameOrData.slice().buffer;
    }
    const event = new Event("message");
    event.data = data;
    this.dispatchEvent(event);
  }

  /** AUTH_OK with the given values (accepting the WebSocket first if needed). */
  authOk({ heartbeatMs = 30000, maxFrame = 8192, ackWindow = 32 } = {}) {
    if (this.readyState === FakeWebSocket.CONNECTING) this.accept();
    this.receive({ type: "AUTH_OK", heartbeatMs, maxFrame, ackWindow });
  }

  /** The close handshake ends (or the connection drops). */
  closed(code = 1000, reason = "") {
    this.readyState = FakeWebSocket.CLOSED;
    const event = new Event("close");
    event.code = code;
    event.reason = reason;
    event.wasClean = code === 1000;
    this.dispatchEvent(event);
  }

  /** The connection fails before it is up (refused, no route, HTTP 403). */
  refuse() {
    this.readyState = FakeWebSocket.CLOSED;
    this.dispatchEvent(new Event("error"));
    this.closed(1006);
  }
}

/**
 * A fetch answering each call with the next entry of `script`: an object
 * `{status, body}` (body: JSON value or string), an Error to throw, or
 * "hang" (never answers until aborted). `calls` records the requests.
 */
export function scriptedFetch(script) {
  const calls = [];
  const fetch = (url, init) => {
    calls.push({ url, init, body: JSON.parse(init.body) });
    const step = script.length > 1 ? script.shift() : script[0];
    if (step instanceof Error) return Promise.reject(step);
    if (step === "hang") {
      return new Promise((_, reject) => {
        init.signal.addEventListener("abort", () =>
          reject(new DOMException("aborted", "AbortError")),
        );
      });
    }
    const text = typeof step.body === "string" ? step.body : JSON.stringify(step.body);
    return Promise.resolve(new Response(text, { status: step.status }));
  };
  fetch.calls = calls;
  return fetch;
}

// PushClient against a fake WebSocket class and a fake route source or fetch,
// on a fake clock: no network, no real time. (node:test's mock.timers would
// do for setTimeout, but mocking Date needs Node 20.11 and Debian 12's
// nodejs is 18: the client takes its clock as an option instead.)

import { test, describe } from "node:test";
import { inspect } from "node:util";
import assert from "node:assert/strict";

import {
  ClientState,
  ProtocolVersionRefused,
  PushClient,
  RetryLater,
  RouteLookupFailed,
  SessionReplaced,
  fullJitter,
  RecentIds,
  parseRoute,
  websocketUrl,
} from "../pigeonpush.js";
import { fallbackVersion } from "../src/client.js";
import { avoidList } from "../src/route.js";
import { FakeClock, FakeWebSocket, flush, scriptedFetch } from "./fakes.js";

const EVENTS = ["connected", "online", "offline", "kicked", "error", "message", "acked", "nacked"];
const REGLOG = "http://reglog.test:8100";

/**
 * A client on a fake clock with a recording WebSocket class and, unless the
 * options give another, a route source answering `tok-N` / `10.0.0.N:7102`.
 * The backoff is `attempt -> attempt` seconds, recorded in `backoffs`.
 */
function harness(t, options = {}) {
  const clock = new FakeClock();
  const sockets = [];
  class WS extends FakeWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  const h = { sockets, clock, events: [], routes: [], backoffs: [] };
  let count = 0;
  const routeSource = (signal) => {
    count += 1;
    h.routes.push({ signal, avoid: h.client.avoid });
    return Promise.resolve({
      token: `tok-${count}`,
      server: `10.0.0.${count}:7102`,
      transport: "ws",
      heartbeat: 30,
    });
  };
  h.client = new PushClient({
    clientId: "device-1",
    reglogUrl: REGLOG,
    WebSocket: WS,
    clock,
    routeSource,
    backoff: (attempt) => {
      h.backoffs.push(attempt);
      return attempt;
    },
    ...options,
  });
  for (const type of EVENTS) {
    h.client.addEventListener(type, (event) => h.events.push({ type, ...event.detail }));
  }
  h.last = () => sockets.at(-1);
  h.types = () => h.events.map((e) => e.type);
  h.tick = async (seconds) => {
    await flush();
    clock.advance(Math.round(seconds * 1000));
    await flush();
  };
  /** start() and bring the first session online. */
  h.online = async (authOk = {}) => {
    h.client.start();
    await flush();
    h.last().authOk(authOk);
    await flush();
    return h.last();
  };
  return h;
}

const push = (messageId, extras = {}) => ({
  type: "PUSH",
  messageId,
  title: "t",
  text: "x",
  extras,
});

describe("connecting", () => {
  test("route, WebSocket with the subprotocol, AUTH version 3 first, AUTH_OK: online", async (t) => {
    const h = harness(t);
    h.client.start();
    assert.equal(h.client.state, ClientState.ROUTING);
    await flush();
    const ws = h.last();
    assert.equal(h.client.state, ClientState.CONNECTING);
    assert.equal(ws.url, "ws://10.0.0.1:7102/");
    assert.deepEqual(ws.protocols, ["pigeonpush.v1"]);
    assert.equal(ws.binaryType, "arraybuffer");
    ws.accept();
    assert.equal(h.client.state, ClientState.AUTHENTICATING);
    assert.deepEqual(ws.sent, [{ type: "AUTH", version: 3, clientId: "device-1", token: "tok-1" }]);
    const online = h.client.whenOnline();
    ws.authOk({ heartbeatMs: 20000, maxFrame: 4096, ackWindow: 8 });
    assert.equal(h.client.state, ClientState.ONLINE);
    assert.equal(h.client.server, "10.0.0.1:7102");
    assert.deepEqual(await online, {
      server: "10.0.0.1:7102",
      heartbeat: 20,
      maxFrame: 4096,
      ackWindow: 8,
    });
    assert.deepEqual(await h.client.whenOnline(), await online);
    assert.deepEqual(h.types(), ["connected", "online"]);
    assert.equal(h.events[1].heartbeat, 20);
  });

  test("start() is idempotent", async (t) => {
    const h = harness(t);
    h.client.start();
    h.client.start();
    await flush();
    assert.equal(h.sockets.length, 1);
    assert.equal(h.routes.length, 1);
  });

  test("a server that does not accept the subprotocol gets no AUTH: a failed attempt", async (t) => {
    const h = harness(t);
    h.client.start();
    await flush();
    const ws = h.last();
    ws.accept("");
    assert.deepEqual(ws.raw, []);
    assert.deepEqual(ws.closeCalls, [1000]);
    assert.equal(h.client.state, ClientState.WAITING);
    assert.deepEqual(h.client.avoid, ["10.0.0.1:7102"]);
    await h.tick(1);
    assert.deepEqual(h.routes[1].avoid, ["10.0.0.1:7102"]);
  });

  test("no connection within connectTimeout: closed, avoided, retried", async (t) => {
    const h = harness(t, { connectTimeout: 3 });
    h.client.start();
    await flush();
    await h.tick(2.9);
    assert.equal(h.client.state, ClientState.CONNECTING);
    await h.tick(0.1);
    assert.deepEqual(h.last().closeCalls, [1000]);
    assert.equal(h.client.state, ClientState.WAITING);
    assert.deepEqual(h.client.avoid, ["10.0.0.1:7102"]);
    assert.deepEqual(h.types(), []); // a failed attempt emits no event
  });

  test("no answer to AUTH within authTimeout: dropped, token spent, a new route", async (t) => {
    const h = harness(t, { authTimeout: 5 });
    h.client.start();
    await flush();
    h.last().accept();
    await h.tick(5);
    assert.equal(h.client.state, ClientState.WAITING);
    const offline = h.events.find((e) => e.type === "offline");
    assert.deepEqual(offline, {
      type: "offline",
      server: "10.0.0.1:7102",
      reason: "no answer to AUTH within 5s",
      authenticated: false,
    });
    await h.tick(1);
    assert.equal(h.routes.length, 2);
    assert.equal(h.last().url, "ws://10.0.0.2:7102/");
  });

  test("a WebSocket constructor that throws (a bad URL) is a failed attempt", async (t) => {
    let calls = 0;
    class Throwing {
      constructor() {
        calls += 1;
        throw new SyntaxError("bad URL");
      }
    }
    const h = harness(t, { WebSocket: Throwing });
    h.client.start();
    await flush();
    assert.equal(calls, 1);
    assert.equal(h.client.state, ClientState.WAITING);
    assert.equal(h.events[0].type, "error");
    assert.equal(h.events[0].fatal, false);
    await h.tick(1);
    assert.equal(calls, 2);
    assert.equal(h.routes.length, 2);
  });
});

describe("the WebSocket address from reglog's answer", () => {
  const cases = [
    [{ server: "push.example:7102", transport: "ws" }, "ws://push.example:7102/"],
    [{ server: "push.example:443", transport: "wss" }, "wss://push.example:443/"],
    [{ server: "[::1]:7102", transport: "ws" }, "ws://[::1]:7102/"],
    [
      { server: "push.example:7102", transport: "ws", path: "/v1/ws" },
      "ws://push.example:7102/v1/ws",
    ],
    [{ server: "wss://push.example/pigeon", transport: "wss" }, "wss://push.example/pigeon"],
  ];
  for (const [answer, url] of cases) {
    test(`${JSON.stringify(answer)} -> ${url}`, async (t) => {
      const h = harness(t, { routeSource: async () => ({ token: "t", heartbeat: 30, ...answer }) });
      h.client.start();
      await flush();
      assert.equal(h.last().url, url);
    });
  }

  for (const transport of ["tcp", "tls", undefined]) {
    test(`transport ${transport}: an error event, the server avoided, another route later`, async (t) => {
      const answers = [];
      const h = harness(t, {
        routeSource: async () => {
          answers.push(h.client.avoid);
          return { token: "t", server: "10.0.0.9:7100", transport };
        },
      });
      h.client.start();
      await flush();
      assert.equal(h.sockets.length, 0);
      assert.equal(h.events[0].type, "error");
      assert.equal(h.events[0].fatal, false);
      assert.match(h.events[0].error.message, /needs ws or wss/);
      assert.equal(h.client.state, ClientState.WAITING);
      await h.tick(1);
      assert.deepEqual(answers, [[], ["10.0.0.9:7100"]]);
    });
  }

  test("a URL in server whose scheme contradicts transport is an unusable answer: give up", async (t) => {
    const h = harness(t, {
      routeSource: async () => ({ token: "t", server: "ws://a:1/", transport: "wss" }),
    });
    h.client.start();
    await flush();
    assert.equal(h.client.state, ClientState.STOPPED);
    assert.ok(h.client.gaveUp instanceof RouteLookupFailed);
  });
});

describe("route lookup through fetch", () => {
  const grant = {
    status: 200,
    body: { token: "tok", server: "10.0.0.5:7102", transport: "ws", heartbeat: 30 },
  };

  test("POST /v1/route with clientId, the transport wanted and the secret", async (t) => {
    const fetch = scriptedFetch([grant]);
    const h = harness(t, { routeSource: null, fetch, secret: "s3cret", reglogUrl: `${REGLOG}/` });
    h.client.start();
    await flush();
    assert.equal(fetch.calls.length, 1);
    const [call] = fetch.calls;
    assert.equal(call.url, `${REGLOG}/v1/route`);
    assert.equal(call.init.method, "POST");
    assert.equal(call.init.headers["Content-Type"], "application/json");
    assert.deepEqual(call.body, { clientId: "device-1", transport: "websocket", secret: "s3cret" });
    assert.equal(h.last().url, "ws://10.0.0.5:7102/");
    assert.ok(!inspect(h.client, { depth: Infinity, showHidden: true }).includes("s3cret"));
  });

  test("503, a network error, a timeout and a bad 200 are retried with the backoff", async (t) => {
    const fetch = scriptedFetch([
      { status: 503, body: { error: "no_server", message: "no push server is alive" } },
      new TypeError("fetch failed"),
      "hang",
      { status: 200, body: { token: "" } },
      { status: 429, body: "slow down" },
      grant,
    ]);
    const h = harness(t, { routeSource: null, fetch, httpTimeout: 2 });
    h.client.start();
    await flush();
    await h.tick(1); // after the 503
    await h.tick(2); // after the network error
    assert.equal(fetch.calls.length, 3);
    await h.tick(2); // the hanging request times out
    await h.tick(3);
    await h.tick(4); // after the bad 200
    await h.tick(5); // after the 429
    assert.equal(fetch.calls.length, 6);
    assert.deepEqual(h.backoffs, [1, 2, 3, 4, 5]);
    assert.equal(h.client.state, ClientState.CONNECTING);
  });

  test("a 4xx refusal gives up at once with reglog's error", async (t) => {
    const fetch = scriptedFetch([
      { status: 401, body: { error: "bad_secret", message: "unknown clientId or wrong secret" } },
    ]);
    const h = harness(t, { routeSource: null, fetch });
    const online = h.client.whenOnline();
    h.client.start();
    await assert.rejects(online, RouteLookupFailed);
    const error = h.client.gaveUp;
    assert.equal(error.retryable, false);
    assert.equal(error.status, 401);
    assert.equal(error.error, "bad_secret");
    assert.match(
      error.message,
      /was refused: HTTP 401 bad_secret: unknown clientId or wrong secret/,
    );
    assert.equal(h.client.state, ClientState.STOPPED);
    assert.deepEqual(h.types(), ["error"]);
    assert.equal(h.events[0].fatal, true);
    assert.equal(h.events[0].error, error);
  });

  test("maxRouteFailures: gives up after that many failures in a row", async (t) => {
    const fetch = scriptedFetch([{ status: 500, body: "<html>oops</html>" }]);
    const h = harness(t, { routeSource: null, fetch, maxRouteFailures: 3 });
    h.client.start();
    await h.tick(1);
    await h.tick(2);
    assert.equal(fetch.calls.length, 3);
    const error = h.client.gaveUp;
    assert.ok(error instanceof RouteLookupFailed);
    assert.equal(error.retryable, true);
    assert.equal(error.attempts, 3);
    assert.match(
      error.message,
      /failed 3 time\(s\) in a row; last error: HTTP 500 <html>oops<\/html>/,
    );
  });

  test("without maxRouteFailures it keeps asking", async (t) => {
    const fetch = scriptedFetch([{ status: 503, body: "" }]);
    const h = harness(t, { routeSource: null, fetch, backoff: () => 1 });
    h.client.start();
    for (let i = 0; i < 50; i++) await h.tick(1);
    assert.equal(fetch.calls.length, 51);
    assert.equal(h.client.state, ClientState.ROUTING);
  });

  test("on the system clock (the default): retried after a real delay", async () => {
    const fetch = scriptedFetch([{ status: 503, body: "" }, grant]);
    const client = new PushClient({
      clientId: "d-1",
      reglogUrl: REGLOG,
      WebSocket: FakeWebSocket,
      fetch,
      backoff: () => 0.005,
    });
    client.start();
    while (client.state === ClientState.ROUTING)
      await new Promise((resolve) => setTimeout(resolve, 1));
    assert.equal(fetch.calls.length, 2);
    assert.equal(client.state, ClientState.CONNECTING);
    await client.stop();
  });

  test("stop() during a lookup aborts the request", async (t) => {
    const fetch = scriptedFetch(["hang"]);
    const h = harness(t, { routeSource: null, fetch });
    h.client.start();
    await flush();
    await h.client.stop();
    assert.equal(fetch.calls[0].init.signal.aborted, true);
    assert.equal(h.client.state, ClientState.STOPPED);
    assert.equal(h.client.gaveUp, null);
  });

  test("servers the client failed to reach are named in avoid, for 60 s", async (t) => {
    const fetch = scriptedFetch([grant]);
    const h = harness(t, { routeSource: null, fetch });
    h.client.start();
    await flush();
    h.last().refuse();
    await h.tick(1);
    assert.deepEqual(fetch.calls[1].body.avoid, ["10.0.0.5:7102"]);
    h.last().refuse();
    await h.tick(2);
    h.last().refuse();
    await h.tick(3);
    assert.equal(fetch.calls.length, 4);
    assert.deepEqual(fetch.calls[3].body.avoid, ["10.0.0.5:7102"]);
    h.last().authOk(); // reached: off the list
    assert.deepEqual(h.client.avoid, []);
    h.last().closed(1006);
    await h.tick(1);
    h.last().refuse();
    await h.client.stop();
    assert.deepEqual(h.client.avoid, ["10.0.0.5:7102"]);
    await h.tick(59.999);
    assert.deepEqual(h.client.avoid, ["10.0.0.5:7102"]);
    await h.tick(0.001);
    assert.deepEqual(h.client.avoid, []);
  });
});

describe("messages", () => {
  test("the callback runs, then ACK; message and acked events", async (t) => {
    const seen = [];
    const h = harness(t, { onMessage: (message) => seen.push(message) });
    const ws = await h.online();
    ws.receive(push("m1", { orderId: "A-1" }));
    await flush();
    assert.equal(seen.length, 1);
    assert.equal(seen[0].messageId, "m1");
    assert.equal(seen[0].extras.orderId, "A-1");
    assert.ok(seen[0].receivedAt instanceof Date);
    assert.ok(Object.isFrozen(seen[0]));
    assert.deepEqual(ws.sent.at(-1), { type: "ACK", messageId: "m1" });
    assert.deepEqual(h.types().slice(2), ["message", "acked"]);
    assert.deepEqual(h.events.at(-1), {
      type: "acked",
      messageId: "m1",
      sent: true,
      duplicate: false,
    });
  });

  test("without a callback, the message event alone and the ACK", async (t) => {
    const h = harness(t);
    const ws = await h.online();
    ws.receive(push("m1"));
    await flush();
    assert.deepEqual(ws.sentTypes, ["AUTH", "ACK"]);
  });

  test("a Promise: the ACK waits for it to resolve", async (t) => {
    let finish;
    const h = harness(t, { onMessage: () => new Promise((resolve) => (finish = resolve)) });
    const ws = await h.online();
    ws.receive(push("m1"));
    await flush();
    assert.deepEqual(ws.sentTypes, ["AUTH"]);
    finish();
    await flush();
    assert.deepEqual(ws.sentTypes, ["AUTH", "ACK"]);
  });

  test("a callback that throws: NACK with no preference, nacked event", async (t) => {
    const h = harness(t, {
      onMessage: () => {
        throw new Error("disk full");
      },
    });
    const ws = await h.online();
    ws.receive(push("m1"));
    await flush();
    assert.deepEqual(ws.sent.at(-1), { type: "NACK", messageId: "m1", retryAfterMs: 0 });
    const nacked = h.events.at(-1);
    assert.equal(nacked.type, "nacked");
    assert.equal(nacked.error.message, "disk full");
    assert.equal(nacked.sent, true);
  });

  test("a rejection with RetryLater(seconds): NACK with retryAfterMs", async (t) => {
    const h = harness(t, { onMessage: async () => Promise.reject(new RetryLater(30)) });
    const ws = await h.online();
    ws.receive(push("m1"));
    await flush();
    assert.deepEqual(ws.sent.at(-1), { type: "NACK", messageId: "m1", retryAfterMs: 30000 });
    assert.equal(h.events.at(-1).retryAfter, 30);
  });

  test("RetryLater beyond the u32 milliseconds is sent as 0 (the server's backoff)", async (t) => {
    const h = harness(t, { onMessage: () => Promise.reject(new RetryLater(5e6)) });
    const ws = await h.online();
    ws.receive(push("m1"));
    await flush();
    assert.deepEqual(ws.sent.at(-1), { type: "NACK", messageId: "m1", retryAfterMs: 0 });
    assert.throws(() => new RetryLater(-1), RangeError);
  });

  test("a failed message is not remembered: its redelivery runs the callback again", async (t) => {
    let calls = 0;
    const h = harness(t, {
      onMessage: () => {
        calls += 1;
        if (calls === 1) throw new Error("not yet");
      },
    });
    const ws = await h.online();
    ws.receive(push("m1"));
    await flush();
    ws.receive(push("m1"));
    await flush();
    assert.equal(calls, 2);
    assert.deepEqual(ws.sentTypes, ["AUTH", "NACK", "ACK"]);
  });

  test("a duplicate is ACKed without calling back, also on a later session", async (t) => {
    let calls = 0;
    const h = harness(t, { onMessage: () => void (calls += 1) });
    const ws = await h.online();
    ws.receive(push("m1"));
    await flush();
    ws.receive(push("m1"));
    await flush();
    assert.equal(calls, 1);
    assert.deepEqual(ws.sentTypes, ["AUTH", "ACK", "ACK"]);
    assert.equal(h.events.at(-1).duplicate, true);
    ws.closed(1006);
    await h.tick(1);
    const next = h.last();
    next.authOk();
    next.receive(push("m1"));
    await flush();
    assert.equal(calls, 1);
    assert.deepEqual(next.sentTypes, ["AUTH", "ACK"]);
  });

  test("a copy arriving while the callback runs waits for its outcome", async (t) => {
    let calls = 0;
    let finish;
    const h = harness(t, {
      onMessage: () => {
        calls += 1;
        return new Promise((resolve) => (finish = resolve));
      },
    });
    const ws = await h.online();
    ws.receive(push("m1"));
    ws.receive(push("m1"));
    await flush();
    assert.equal(calls, 1);
    finish();
    await flush();
    assert.deepEqual(ws.sentTypes, ["AUTH", "ACK", "ACK"]);
  });

  test("the duplicate window is bounded: the oldest id is forgotten", async (t) => {
    let calls = 0;
    const h = harness(t, { dedupWindow: 2, onMessage: () => void (calls += 1) });
    const ws = await h.online();
    for (const id of ["m1", "m2", "m3", "m1"]) {
      ws.receive(push(id));
      await flush();
    }
    assert.equal(calls, 4);
    const ids = new RecentIds(2);
    ["a", "b", "a", "c"].forEach((id) => ids.add(id));
    assert.deepEqual([ids.has("a"), ids.has("b"), ids.has("c"), ids.size], [true, false, true, 2]);
    assert.throws(() => new RecentIds(0), RangeError);
  });

  test("a callback that ends after the connection dropped sends nothing", async (t) => {
    let finish;
    const h = harness(t, { onMessage: () => new Promise((resolve) => (finish = resolve)) });
    const ws = await h.online();
    ws.receive(push("m1"));
    await flush();
    ws.closed(1006);
    finish();
    await flush();
    assert.deepEqual(ws.sentTypes, ["AUTH"]);
    assert.deepEqual(h.events.at(-1), {
      type: "acked",
      messageId: "m1",
      sent: false,
      duplicate: false,
    });
  });
});

describe("heartbeat", () => {
  test("PING after a quiet interval; a PONG keeps the connection", async (t) => {
    const h = harness(t);
    const ws = await h.online({ heartbeatMs: 1000 });
    await h.tick(0.999);
    assert.deepEqual(ws.sentTypes, ["AUTH"]);
    await h.tick(0.001);
    assert.deepEqual(ws.sentTypes, ["AUTH", "PING"]);
    ws.receive({ type: "PONG" });
    await h.tick(1);
    ws.receive({ type: "PONG" });
    await h.tick(1);
    ws.receive({ type: "PONG" });
    await h.tick(1);
    assert.deepEqual(ws.sentTypes, ["AUTH", "PING", "PING", "PING", "PING"]);
    assert.equal(h.client.state, ClientState.ONLINE);
  });

  test("sending something (an ACK) postpones the PING", async (t) => {
    const h = harness(t);
    const ws = await h.online({ heartbeatMs: 1000 });
    await h.tick(0.6);
    ws.receive(push("m1"));
    await flush();
    await h.tick(0.6);
    assert.deepEqual(ws.sentTypes, ["AUTH", "ACK"]);
    await h.tick(0.4);
    assert.deepEqual(ws.sentTypes, ["AUTH", "ACK", "PING"]);
  });

  test("maxMissedPongs unanswered PINGs: dropped, then a new session with a new token", async (t) => {
    const h = harness(t, { maxMissedPongs: 2 });
    const ws = await h.online({ heartbeatMs: 1000 });
    await h.tick(1);
    await h.tick(1);
    assert.deepEqual(ws.sentTypes, ["AUTH", "PING", "PING"]);
    assert.equal(h.client.state, ClientState.ONLINE);
    await h.tick(1);
    assert.deepEqual(ws.closeCalls, [1000]);
    assert.equal(h.client.state, ClientState.WAITING);
    const offline = h.events.find((e) => e.type === "offline");
    assert.equal(offline.reason, "no answer to 2 PING(s) in a row");
    assert.equal(offline.authenticated, true);
    assert.deepEqual(h.backoffs, [1]); // a lost session waits within the first window
    await h.tick(1);
    h.last().accept();
    assert.equal(h.last().sent[0].token, "tok-2");
  });

  test("any frame from the server counts as an answer", async (t) => {
    const h = harness(t, { maxMissedPongs: 1 });
    const ws = await h.online({ heartbeatMs: 1000 });
    await h.tick(1);
    ws.receive(push("m1"));
    await flush();
    await h.tick(1);
    assert.equal(h.client.state, ClientState.ONLINE);
  });

  test("before AUTH_OK the route's heartbeat is not used for PINGs", async (t) => {
    const h = harness(t, { authTimeout: 100 });
    h.client.start();
    await flush();
    h.last().accept();
    await h.tick(60);
    assert.deepEqual(h.last().sentTypes, ["AUTH"]);
  });
});

describe("reconnecting", () => {
  test("every session gets a fresh token; the backoff grows, and restarts at AUTH_OK", async (t) => {
    let count = 0;
    const h = harness(t, {
      // Always the same server: it stays on the avoid list, so failures add up.
      routeSource: async () => ({
        token: `tok-${++count}`,
        server: "10.0.0.1:7102",
        transport: "ws",
      }),
    });
    let ws = await h.online();
    ws.closed(1006);
    await h.tick(1);
    assert.equal(count, 2);
    ws = h.last();
    ws.refuse(); // failures: 1
    await h.tick(1);
    h.last().refuse(); // 2
    await h.tick(2);
    h.last().accept();
    h.last().closed(1006); // closed before AUTH_OK: 3
    await h.tick(3);
    assert.deepEqual(h.backoffs, [1, 1, 2, 3]);
    h.last().authOk();
    h.last().closed(1006);
    await flush();
    assert.deepEqual(h.backoffs, [1, 1, 2, 3, 1]);
    assert.deepEqual(
      h.sockets.map((s) => s.sent[0]?.token ?? null),
      ["tok-1", null, null, "tok-4", "tok-5"],
    );
  });

  test("a route to a server not on the avoid list starts the backoff again", async (t) => {
    const h = harness(t);
    h.client.start();
    await flush();
    for (let i = 0; i < 3; i++) {
      h.last().refuse();
      await h.tick(1);
    }
    assert.deepEqual(h.backoffs, [1, 1, 1]);
  });

  test("reconnectThreshold: a route whose server was never reached is tried again", async (t) => {
    const h = harness(t, { reconnectThreshold: 2 });
    h.client.start();
    await flush();
    h.last().refuse();
    await h.tick(1);
    assert.equal(h.routes.length, 1);
    assert.equal(h.sockets.length, 2);
    assert.equal(h.last().url, "ws://10.0.0.1:7102/");
    h.last().refuse();
    await h.tick(2);
    assert.equal(h.routes.length, 2);
  });

  test("the default backoff: full jitter, doubling, capped at 60 s", () => {
    const top = fullJitter({ random: () => 0.999999 });
    assert.deepEqual(
      [1, 2, 3, 4, 7].map((n) => Math.round(top(n))),
      [1, 2, 4, 8, 60],
    );
    assert.equal(Math.round(top(10000)), 60);
    assert.equal(fullJitter({ random: () => 0 })(5), 0);
    const draws = Array.from({ length: 200 }, () => fullJitter()(7));
    assert.ok(draws.every((d) => d >= 0 && d < 60));
    assert.ok(new Set(draws).size > 100, "the delays are spread");
    assert.throws(() => fullJitter({ initial: 0 }), RangeError);
    assert.throws(() => fullJitter({ maximum: 0.5 }), RangeError);
    assert.throws(() => fullJitter({ factor: 0.5 }), RangeError);
  });

  test("a client on the default backoff keeps trying forever and never waits over 60 s", async (t) => {
    const h = harness(t, { backoff: null });
    h.client.start();
    await flush();
    for (let i = 0; i < 30; i++) {
      h.last().refuse();
      await h.tick(60);
    }
    assert.equal(h.sockets.length, 31);
    assert.equal(h.routes.length, 31);
  });
});

describe("AUTH_FAIL", () => {
  for (const code of ["BAD_TOKEN", "UNAVAILABLE", "FULL"]) {
    test(`${code}: closed, back to reglog, the server not avoided`, async (t) => {
      const h = harness(t);
      h.client.start();
      await flush();
      const ws = h.last();
      ws.accept();
      ws.receive({ type: "AUTH_FAIL", code, reason: "no" });
      assert.deepEqual(ws.closeCalls, [1000]);
      assert.equal(ws.sentTypes.length, 1);
      ws.closed();
      await flush();
      const offline = h.events.at(-1);
      assert.equal(offline.type, "offline");
      assert.equal(offline.reason, `AUTH refused (${code}: no)`);
      assert.deepEqual(h.client.avoid, []);
      await h.tick(1);
      assert.equal(h.routes.length, 2);
    });
  }

  test("VERSION: the next session speaks version 1, which never NACKs", async (t) => {
    const h = harness(t, {
      onMessage: () => {
        throw new Error("no");
      },
    });
    h.client.start();
    await flush();
    h.last().accept();
    h.last().receive({ type: "AUTH_FAIL", code: "VERSION", reason: "supported versions: 1" });
    h.last().closed();
    await h.tick(1);
    const ws = h.last();
    ws.accept();
    assert.equal(ws.sent[0].version, 1);
    assert.equal(h.client.protocolVersion, 1);
    ws.authOk();
    ws.receive(push("m1"));
    await flush();
    assert.deepEqual(ws.sentTypes, ["AUTH"]);
    assert.equal(h.events.at(-1).sent, false);
  });

  test("VERSION: the next session speaks the newest version the server lists", async (t) => {
    const h = harness(t);
    h.client.start();
    await flush();
    h.last().accept();
    h.last().receive({
      type: "AUTH_FAIL",
      code: "VERSION",
      reason: "protocol version 3 is not supported; this server speaks 1, 2",
    });
    h.last().closed();
    await h.tick(1);
    const ws = h.last();
    ws.accept();
    assert.equal(ws.sent[0].version, 2);
    assert.equal(h.client.protocolVersion, 2);
  });

  test("fallbackVersion reads the versions after 'speaks' or a colon, else 1", () => {
    assert.equal(fallbackVersion(3, "this server speaks 1, 2"), 2);
    assert.equal(fallbackVersion(3, "supported versions: 1"), 1);
    assert.equal(fallbackVersion(3, "supported versions: 3"), 1);
    assert.equal(fallbackVersion(3, "no reason"), 1);
    assert.equal(fallbackVersion(2, "this server speaks 1, 3"), 1);
  });

  test("VERSION to version 1 too: gives up with ProtocolVersionRefused", async (t) => {
    const h = harness(t);
    h.client.start();
    for (let i = 0; i < 2; i++) {
      await flush();
      await h.tick(1);
      h.last().accept();
      h.last().receive({ type: "AUTH_FAIL", code: "VERSION", reason: "supported versions: 3" });
      h.last().closed();
    }
    await flush();
    assert.ok(h.client.gaveUp instanceof ProtocolVersionRefused);
    assert.match(
      h.client.gaveUp.message,
      /does not speak protocol version 1: supported versions: 3/,
    );
    assert.equal(h.client.state, ClientState.STOPPED);
    const fatal = h.events.filter((e) => e.type === "error" && e.fatal);
    assert.equal(fatal.length, 1);
    await h.tick(120);
    assert.equal(h.sockets.length, 2);
  });
});

describe("KICK", () => {
  test("REPLACED: kicked event, gives up with SessionReplaced, no reconnect", async (t) => {
    const h = harness(t);
    const ws = await h.online();
    const online = h.client.whenOnline();
    ws.receive({ type: "KICK", reason: "REPLACED", text: "logged in elsewhere" });
    assert.equal(h.client.state, ClientState.STOPPING);
    ws.closed();
    await flush();
    assert.equal(h.client.state, ClientState.STOPPED);
    assert.ok(h.client.gaveUp instanceof SessionReplaced);
    assert.deepEqual(h.types().slice(2), ["kicked", "error", "offline"]);
    assert.deepEqual(h.events[2], {
      type: "kicked",
      server: "10.0.0.1:7102",
      reason: "REPLACED",
      text: "logged in elsewhere",
    });
    await online; // the session that was online then
    await h.tick(120);
    assert.equal(h.sockets.length, 1);
    h.client.start(); // the application decides to try again
    await flush();
    assert.equal(h.sockets.length, 2);
    assert.equal(h.client.gaveUp, null);
  });

  for (const reason of ["SHUTTING_DOWN", "POLICY"]) {
    test(`${reason}: kicked event, then a new route within the first backoff window`, async (t) => {
      const h = harness(t);
      const ws = await h.online();
      ws.receive({ type: "KICK", reason, text: "" });
      ws.closed();
      await flush();
      assert.equal(h.events.at(-1).reason, `kicked by the server (${reason})`);
      assert.deepEqual(h.backoffs, [1]);
      await h.tick(1);
      assert.equal(h.routes.length, 2);
      assert.equal(h.client.gaveUp, null);
    });
  }

  test("a KICK before AUTH_OK is taken too", async (t) => {
    const h = harness(t);
    h.client.start();
    await flush();
    h.last().accept();
    h.last().receive({ type: "KICK", reason: "SHUTTING_DOWN", text: "" });
    h.last().closed();
    await flush();
    assert.deepEqual(h.types(), ["connected", "kicked", "offline"]);
  });
});

describe("bad frames get ERROR and a close", () => {
  const cases = [
    ["an unknown type", Uint8Array.of(0x2a), "UNKNOWN_TYPE", true],
    ["an empty message", new Uint8Array(0), "MALFORMED", true],
    ["a malformed PUSH", Uint8Array.of(0x06, 0x00, 0x05, 0x61), "MALFORMED", true],
    ["invalid UTF-8", Uint8Array.of(0x06, 0, 1, 0xff, 0, 0, 0, 0, 0, 0), "MALFORMED", true],
    ["a text message", "hello", "MALFORMED", true],
    ["over 8192 bytes before AUTH_OK", new Uint8Array(8193).fill(6), "TOO_LARGE", false],
    ["a PUSH before AUTH_OK", push("m1"), "UNEXPECTED", false],
    ["a PONG before AUTH_OK", { type: "PONG" }, "UNEXPECTED", false],
    ["an ACK (the wrong direction)", { type: "ACK", messageId: "m" }, "UNEXPECTED", true],
    ["a PING from the server", { type: "PING" }, "UNEXPECTED", true],
    [
      "a second AUTH_OK",
      { type: "AUTH_OK", heartbeatMs: 1, maxFrame: 1024, ackWindow: 1 },
      "UNEXPECTED",
      true,
    ],
    ["an AUTH", { type: "AUTH", version: 2, clientId: "c", token: "t" }, "UNEXPECTED", true],
  ];
  for (const [name, data, code, online] of cases) {
    test(`${name}: ERROR ${code}`, async (t) => {
      const h = harness(t);
      h.client.start();
      await flush();
      const ws = h.last();
      ws.accept();
      if (online) ws.authOk();
      ws.receive(data);
      const sent = ws.sent.length;
      const last = ws.sent.at(-1);
      assert.equal(last.type, "ERROR");
      assert.equal(last.code, code);
      assert.deepEqual(ws.closeCalls, [1000]);
      ws.receive({ type: "PONG" }); // nothing is read after the ERROR
      assert.equal(ws.sent.length, sent);
      ws.closed();
      await flush();
      assert.match(h.events.at(-1).reason, new RegExp(`^protocol error ${code}: `));
      assert.equal(h.client.state, ClientState.WAITING);
      await h.tick(1);
      assert.equal(h.routes.length, 2);
    });
  }

  test("after AUTH_OK the limit is the server's maxFrame", async (t) => {
    const h = harness(t);
    const ws = await h.online({ maxFrame: 2048 });
    // PUSH length = 1 + (2 + 2) + (2 + 1) + (2 + 1) + 2 + (2 + 1) + (2 + |v|) = 18 + |v|
    ws.receive(push("m1", { k: "v".repeat(2030) }));
    await flush();
    assert.equal(ws.sent.at(-1).type, "ACK");
    ws.receive(push("m2", { k: "v".repeat(2031) }));
    assert.deepEqual(ws.sent.at(-1), {
      type: "ERROR",
      code: "TOO_LARGE",
      text: "a frame of 2049 bytes is over the limit of 2048",
    });
  });

  for (const code of ["MALFORMED", "TIMEOUT", "INTERNAL", "RATE_LIMITED"]) {
    test(`ERROR ${code} from the server: an error event, no answer, reconnect with backoff`, async (t) => {
      const h = harness(t);
      const ws = await h.online();
      ws.receive({ type: "ERROR", code, text: "bye" });
      assert.deepEqual(ws.sentTypes, ["AUTH"]);
      assert.deepEqual(ws.closeCalls, [1000]);
      const error = h.events.at(-1);
      assert.equal(error.type, "error");
      assert.equal(error.fatal, false);
      assert.equal(error.error.code, code);
      ws.closed();
      await flush();
      assert.equal(h.events.at(-1).reason, `the server reported ERROR ${code}: bye`);
      await h.tick(1);
      assert.equal(h.routes.length, 2);
    });
  }

  test("a server that never completes the close is let go after 5 s", async (t) => {
    const h = harness(t);
    const ws = await h.online();
    ws.receive(Uint8Array.of(0x2a));
    assert.equal(h.client.state, ClientState.ONLINE);
    await h.tick(5);
    assert.equal(h.client.state, ClientState.WAITING);
  });

  test("a message callback is never run for a frame after the ERROR", async (t) => {
    let calls = 0;
    const h = harness(t, { onMessage: () => void (calls += 1) });
    const ws = await h.online();
    ws.receive(Uint8Array.of(0x2a));
    ws.receive(push("m1"));
    await flush();
    assert.equal(calls, 0);
  });
});

describe("the client's own failures", () => {
  test("an exception while handling a frame: ERROR INTERNAL, an error event, a close", async (t) => {
    const logger = {
      info(message) {
        if (message === "Authenticated") throw new Error("the log is full");
      },
      warn() {},
    };
    const h = harness(t, { logger });
    h.client.start();
    await flush();
    const ws = h.last();
    ws.authOk();
    assert.deepEqual(ws.sent.at(-1), { type: "ERROR", code: "INTERNAL", text: "internal error" });
    assert.deepEqual(ws.closeCalls, [1000]);
    const error = h.events.find((e) => e.type === "error");
    assert.equal(error.error.message, "the log is full");
    assert.equal(error.fatal, false);
  });

  test("on() returns a function that removes the listener", async (t) => {
    const h = harness(t);
    const seen = [];
    const off = h.client.on("connected", (e) => seen.push(e.detail.server));
    h.client.start();
    await flush();
    h.last().accept();
    off();
    h.last().closed(1006);
    await h.tick(1);
    h.last().accept();
    assert.deepEqual(seen, ["10.0.0.1:7102"]);
  });
});

describe("stopping", () => {
  test("stop() while online closes and resolves once closed", async (t) => {
    const h = harness(t);
    const ws = await h.online();
    let done = false;
    const stopped = h.client.stop().then(() => (done = true));
    assert.equal(h.client.state, ClientState.STOPPING);
    assert.deepEqual(ws.closeCalls, [1000]);
    await flush();
    assert.equal(done, false);
    assert.equal(h.client.stop() instanceof Promise, true);
    ws.closed();
    await stopped;
    assert.equal(h.client.state, ClientState.STOPPED);
    assert.deepEqual(h.events.at(-1), {
      type: "offline",
      server: "10.0.0.1:7102",
      reason: "closed by the client",
      authenticated: true,
    });
    await h.tick(120);
    assert.equal(h.sockets.length, 1);
  });

  test("close() is stop(); a peer that does not close is let go after 5 s", async (t) => {
    const h = harness(t);
    await h.online();
    const stopped = h.client.close();
    await h.tick(5);
    await stopped;
    assert.equal(h.client.state, ClientState.STOPPED);
  });

  test("stop() while waiting cancels the timer; whenOnline rejects with AbortError", async (t) => {
    const h = harness(t);
    h.client.start();
    await flush();
    h.last().refuse();
    const online = h.client.whenOnline();
    await h.client.stop();
    await assert.rejects(online, { name: "AbortError" });
    await h.tick(120);
    assert.equal(h.sockets.length, 1);
    assert.equal(await h.client.stop(), undefined);
  });

  test("stop() while connecting abandons the WebSocket", async (t) => {
    const h = harness(t);
    h.client.start();
    await flush();
    await h.client.stop();
    assert.deepEqual(h.last().closeCalls, [1000]);
    h.last().accept(); // too late: nothing is sent
    assert.deepEqual(h.last().raw, []);
    assert.equal(h.client.state, ClientState.STOPPED);
  });

  test("start() during stopping starts again once stopped", async (t) => {
    const h = harness(t);
    const ws = await h.online();
    h.client.stop();
    h.client.start();
    ws.closed();
    await flush();
    assert.equal(h.client.state, ClientState.CONNECTING);
    assert.equal(h.sockets.length, 2);
  });

  test("a message callback finishing after stop() sends nothing", async (t) => {
    let finish;
    const h = harness(t, { onMessage: () => new Promise((resolve) => (finish = resolve)) });
    const ws = await h.online();
    ws.receive(push("m1"));
    await flush();
    h.client.stop();
    finish();
    await flush();
    assert.deepEqual(ws.sentTypes, ["AUTH"]);
  });
});

describe("options", () => {
  const WS = FakeWebSocket;
  const good = { clientId: "d-1", reglogUrl: REGLOG, WebSocket: WS };
  const bad = {
    "a clientId with a space": { clientId: "a b" },
    "an empty clientId": { clientId: "" },
    "a clientId of 129 characters": { clientId: "x".repeat(129) },
    "no clientId": { clientId: undefined },
    "a reglogUrl that is not http": { reglogUrl: "ws://reglog" },
    "a reglogUrl that is not a URL": { reglogUrl: "reglog:8100" },
    "heartbeat 0": { heartbeat: 0 },
    "authTimeout -1": { authTimeout: -1 },
    "connectTimeout NaN": { connectTimeout: NaN },
    "httpTimeout Infinity": { httpTimeout: Infinity },
    "maxMissedPongs 0": { maxMissedPongs: 0 },
    "reconnectThreshold 1.5": { reconnectThreshold: 1.5 },
    "maxRouteFailures 0": { maxRouteFailures: 0 },
    "dedupWindow 0": { dedupWindow: 0 },
    "maxFrame 1023": { maxFrame: 1023 },
    "onMessage that is not a function": { onMessage: "print" },
    "backoff that is not a function": { backoff: 5 },
    "routeSource that is not a function": { routeSource: {} },
  };
  for (const [name, override] of Object.entries(bad)) {
    test(`${name} is refused at once`, () => {
      assert.throws(() => new PushClient({ ...good, ...override }), /must be|must/);
    });
  }

  test("no WebSocket class anywhere is a clear TypeError", () => {
    const saved = Object.getOwnPropertyDescriptor(globalThis, "WebSocket");
    delete globalThis.WebSocket;
    try {
      assert.throws(
        () => new PushClient({ clientId: "d", reglogUrl: REGLOG }),
        /--experimental-websocket/,
      );
    } finally {
      if (saved) Object.defineProperty(globalThis, "WebSocket", saved);
    }
  });

  test("128 characters of the allowed set are accepted", () => {
    const client = new PushClient({ ...good, clientId: "aZ0-_.:".repeat(18).slice(0, 128) });
    assert.equal(client.state, ClientState.STOPPED);
  });
});

describe("route answers", () => {
  const good = { token: "t", server: "h:1", transport: "ws", heartbeat: 30 };
  test("a good answer; transport absent means tcp", () => {
    assert.deepEqual(parseRoute(good), { ...good, path: null });
    assert.equal(parseRoute({ token: "t", server: "h:1" }).transport, "tcp");
  });
  const bad = {
    "not an object": [],
    "no token": { ...good, token: undefined },
    "an empty token": { ...good, token: "" },
    "a server without a port": { ...good, server: "h" },
    "a server with port 0": { ...good, server: "h:0" },
    "a server that is a number": { ...good, server: 7 },
    "an unknown transport": { ...good, transport: "quic" },
    "heartbeat 0": { ...good, heartbeat: 0 },
    "heartbeat as a string": { ...good, heartbeat: "30" },
    "a path without /": { ...good, path: "ws" },
  };
  for (const [name, body] of Object.entries(bad)) {
    test(`${name} is refused`, () => assert.throws(() => parseRoute(body), RangeError));
  }
  test("avoid: only host:port strings, at most 16", () => {
    const servers = ["ws://a:1/", "x".repeat(300) + ":1", "h"];
    for (let i = 1; i <= 20; i++) servers.push(`10.0.0.${i}:7102`);
    const list = avoidList(servers);
    assert.equal(list.length, 16);
    assert.equal(list[0], "10.0.0.1:7102");
  });
  test("websocketUrl refuses tcp and tls with a sentence", () => {
    assert.throws(() => websocketUrl(parseRoute({ ...good, transport: "tls" })), /needs ws or wss/);
  });
});

describe("topics (protocol version 3)", () => {
  test("a PUSH through a topic says it; subscribe waits for the answer", async (t) => {
    const seen = [];
    const missed = [];
    const h = harness(t, { onMessage: (message) => seen.push(message) });
    h.client.on("missed", (event) => missed.push(event.detail.topic));
    await assert.rejects(h.client.subscribe("news"), (e) => e.code === "OFFLINE");
    const ws = await h.online();
    ws.receive({ ...push("m1"), topic: "news" });
    ws.receive(push("m2"));
    ws.receive({ type: "MISSED", topic: "news" });
    await flush();
    assert.deepEqual(
      seen.map((m) => [m.messageId, m.topic]),
      [
        ["m1", "news"],
        ["m2", null],
      ],
    );
    assert.deepEqual(missed, ["news"]);

    const subscribing = h.client.subscribe("public.news");
    const leaving = h.client.unsubscribe("private");
    const [subscribe, unsubscribe] = ws.sent.filter((f) => f.type.endsWith("SUBSCRIBE"));
    assert.equal(subscribe.topic, "public.news");
    ws.receive({ type: "SUBSCRIPTION", requestId: subscribe.requestId, code: "OK", reason: "" });
    ws.receive({
      type: "SUBSCRIPTION",
      requestId: unsubscribe.requestId,
      code: "NOT_ALLOWED",
      reason: "not for devices",
    });
    await subscribing;
    await assert.rejects(leaving, (e) => e.code === "NOT_ALLOWED");
    await assert.rejects(h.client.subscribe("no spaces"), TypeError);
    const cut = h.client.subscribe("news");
    ws.closed(1006);
    await assert.rejects(cut, (e) => e.code === "DISCONNECTED");
  });
});

// PushClient.sendUplink against the fake WebSocket on a fake clock: resolves
// on UPLINK_ACK, rejects clearly when the connection drops first, or keeps
// the uplink for the next session when asked (resendOnReconnect).

import { test } from "node:test";
import assert from "node:assert/strict";

import { PushClient, UplinkNotSent } from "../pigeonpush.js";
import { FakeClock, FakeWebSocket, flush } from "./fakes.js";

function harness(options = {}) {
  const clock = new FakeClock();
  const sockets = [];
  class WS extends FakeWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  let count = 0;
  const client = new PushClient({
    clientId: "device-1",
    reglogUrl: "http://reglog.test:8100",
    WebSocket: WS,
    clock,
    routeSource: async () => ({ token: `tok-${++count}`, server: "10.0.0.1:7102", transport: "ws" }),
    backoff: () => 1,
    ...options,
  });
  client.addEventListener("error", () => {});
  const h = { client, clock, sockets, last: () => sockets.at(-1) };
  h.online = async (authOk = {}) => {
    client.start();
    await flush();
    h.last().authOk(authOk);
    await flush();
    return h.last();
  };
  h.reconnect = async () => {
    await flush();
    clock.advance(1000);
    await flush();
    h.last().authOk();
    await flush();
    return h.last();
  };
  return h;
}

/** The promise's outcome so far: ["pending"], ["resolved", v] or ["rejected", e]. */
function track(promise) {
  const state = ["pending"];
  promise.then(
    (value) => state.splice(0, 2, "resolved", value),
    (error) => state.splice(0, 2, "rejected", error),
  );
  return state;
}

test("an uplink resolves on its UPLINK_ACK", async () => {
  const h = harness();
  const ws = await h.online();
  const state = track(h.client.sendUplink({ temp: "21.5" }, { uplinkId: "u-1" }));
  assert.deepEqual(ws.sent.at(-1), { type: "UPLINK", uplinkId: "u-1", data: { temp: "21.5" } });
  ws.receive({ type: "UPLINK_ACK", uplinkId: "other" });
  await flush();
  assert.deepEqual(state, ["pending"]);
  ws.receive({ type: "UPLINK_ACK", uplinkId: "u-1" });
  await flush();
  assert.deepEqual(state, ["resolved", "u-1"]);
});

test("the default uplinkId is random", async () => {
  const h = harness();
  const ws = await h.online();
  h.client.sendUplink(new Map([["k", "v"]]));
  h.client.sendUplink({});
  const [one, two] = ws.sent.slice(-2);
  assert.equal(one.uplinkId.length, 16);
  assert.deepEqual(one.data, { k: "v" });
  assert.notEqual(one.uplinkId, two.uplinkId);
});

test("a drop before the UPLINK_ACK rejects with UplinkNotSent", async () => {
  const h = harness();
  const ws = await h.online();
  const state = track(h.client.sendUplink({}, { uplinkId: "u-1" }));
  ws.closed(1006);
  await flush();
  assert.equal(state[0], "rejected");
  assert.ok(state[1] instanceof UplinkNotSent);
  assert.equal(state[1].uplinkId, "u-1");
  assert.match(state[1].message, /the connection ended before UPLINK_ACK/);
});

test("offline, an uplink rejects at once", async () => {
  const h = harness();
  await assert.rejects(h.client.sendUplink({}, { uplinkId: "u-1" }), {
    name: "UplinkNotSent",
    reason: "not connected",
  });
});

test("resendOnReconnect: sent again with the same id on the next session", async () => {
  const h = harness();
  const ws = await h.online();
  const first = track(h.client.sendUplink({ n: "1" }, { uplinkId: "u-1", resendOnReconnect: true }));
  ws.receive({ type: "ERROR", code: "INTERNAL", text: "the uplink could not be stored" });
  ws.closed(1000);
  await flush();
  const second = track(h.client.sendUplink({ n: "2" }, { uplinkId: "u-2", resendOnReconnect: true }));
  assert.deepEqual([first, second], [["pending"], ["pending"]]);
  const again = await h.reconnect();
  assert.deepEqual(
    again.sent.filter((frame) => frame.type === "UPLINK"),
    [
      { type: "UPLINK", uplinkId: "u-1", data: { n: "1" } },
      { type: "UPLINK", uplinkId: "u-2", data: { n: "2" } },
    ],
  );
  again.receive({ type: "UPLINK_ACK", uplinkId: "u-2" });
  again.receive({ type: "UPLINK_ACK", uplinkId: "u-1" });
  await flush();
  assert.deepEqual([first, second], [["resolved", "u-1"], ["resolved", "u-2"]]);
});

test("stop() rejects kept uplinks", async () => {
  const h = harness();
  const ws = await h.online();
  const state = track(h.client.sendUplink({}, { uplinkId: "u-1", resendOnReconnect: true }));
  h.client.stop();
  ws.closed(1000);
  await flush();
  assert.equal(state[0], "rejected");
  assert.equal(state[1].reason, "the client was stopped");
});

test("bad uplinks throw before anything is sent", async () => {
  const h = harness();
  const ws = await h.online();
  assert.throws(() => h.client.sendUplink({ k: "v".repeat(4096) }), {
    name: "RangeError",
    message: "data is 4097 bytes of UTF-8; the limit is 4096",
  });
  assert.throws(() => h.client.sendUplink({}, { uplinkId: "" }), RangeError);
  assert.throws(() => h.client.sendUplink({ k: 1 }), TypeError);
  assert.throws(() => h.client.sendUplink("text"), TypeError);
  h.client.sendUplink({}, { uplinkId: "u-1" });
  assert.throws(() => h.client.sendUplink({}, { uplinkId: "u-1" }), /already waiting/);
  assert.deepEqual(
    ws.sent.filter((frame) => frame.type === "UPLINK").map((frame) => frame.uplinkId),
    ["u-1"],
  );
});

test("an uplink over the server's frame limit rejects", async () => {
  const h = harness();
  await h.online({ maxFrame: 1024 });
  await assert.rejects(h.client.sendUplink({ k: "v".repeat(2000) }, { uplinkId: "u-1" }), {
    name: "RangeError",
    message: /over the server's limit of 1024/,
  });
});

test("a version 1 session cannot carry uplinks", async () => {
  const h = harness();
  h.client.start();
  await flush();
  h.last().accept();
  h.last().receive({ type: "AUTH_FAIL", code: "VERSION", reason: "supported versions: 1" });
  h.last().closed(1000);
  const ws = await h.reconnect();
  assert.equal(ws.sent[0].version, 1);
  await assert.rejects(h.client.sendUplink({}, { uplinkId: "u-1" }), {
    reason: "the push server speaks protocol version 1",
  });
});

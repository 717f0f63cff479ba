// The client against a live pigeon-standalone with --websocket, over real
// sockets: route, connect, AUTH, a notification sent through the API
// arrives, is ACKed, and its receipt says so. Started by
// tests/test_js_client_live.py, which runs the standalone and passes its
// addresses in the environment:
//   PIGEONPUSH_REGLOG_URL, PIGEONPUSH_API_URL, PIGEONPUSH_API_KEY
// Node 22 has a global WebSocket, Node 20 with --experimental-websocket (the
// pytest test passes it); older ones use the `ws` package (Debian: node-ws).

import { test } from "node:test";
import assert from "node:assert/strict";

import { PushClient } from "../pigeonpush.js";

const REGLOG_URL = process.env.PIGEONPUSH_REGLOG_URL;
const API_URL = process.env.PIGEONPUSH_API_URL;
const API_KEY = process.env.PIGEONPUSH_API_KEY;
const WebSocketClass = globalThis.WebSocket ?? (await import("ws")).WebSocket;
const HEADERS = { "Content-Type": "application/json", Authorization: `Bearer ${API_KEY}` };

async function waitFor(what, condition, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function send(to, title) {
  const response = await fetch(`${API_URL}/v1/notifications`, {
    method: "POST",
    headers: HEADERS,
    body: JSON.stringify({ to: [to], title, text: "from the live test", extras: { n: "1" } }),
  });
  const body = await response.text();
  assert.equal(response.status, 202, body);
  return JSON.parse(body).messageId;
}

async function receipt(messageId) {
  const response = await fetch(`${API_URL}/v1/notifications/${messageId}`, { headers: HEADERS });
  assert.equal(response.status, 200);
  return response.json();
}

test("a notification reaches the client over WebSocket and is ACKed", async () => {
  assert.ok(REGLOG_URL && API_URL && API_KEY, "run through tests/test_js_client_live.py");
  const received = [];
  const acked = [];
  const client = new PushClient({
    WebSocket: WebSocketClass,
    reglogUrl: REGLOG_URL,
    clientId: "node-live-1",
    onMessage: (message) => {
      received.push(message);
    },
  });
  client.addEventListener("acked", (event) => acked.push(event.detail));
  const online = new Promise((resolve) => client.addEventListener("online", (e) => resolve(e.detail)));
  client.start();
  try {
    const detail = await online;
    assert.match(detail.server, /^127\.0\.0\.1:\d+$/);
    const messageId = await send("node-live-1", "hello node");
    await waitFor("the ACK", () => acked.some((a) => a.messageId === messageId && a.sent));
    assert.deepEqual(
      received.map((m) => [m.messageId, m.title, { ...m.extras }]),
      [[messageId, "hello node", { n: "1" }]],
    );
    await waitFor("the receipt to say acked", async () => {
      const answer = await receipt(messageId);
      return answer.acked === 1 && answer.pending.length === 0;
    });
  } finally {
    await client.stop();
  }
});

test("a NACKed message comes again and is ACKed the second time", async () => {
  const seen = [];
  const client = new PushClient({
    WebSocket: WebSocketClass,
    reglogUrl: REGLOG_URL,
    clientId: "node-live-2",
    onMessage: (message) => {
      seen.push(message.messageId);
      if (seen.length === 1) throw new Error("not now");
    },
  });
  const online = new Promise((resolve) => client.addEventListener("online", resolve));
  client.start();
  try {
    await online;
    const messageId = await send("node-live-2", "again");
    await waitFor("the redelivery", () => seen.length >= 2);
    assert.deepEqual(seen.slice(0, 2), [messageId, messageId]);
    await waitFor("the receipt to say acked", async () => (await receipt(messageId)).acked === 1);
  } finally {
    await client.stop();
  }
});

test("an uplink from the client over WebSocket is stored and read through the pull API", async () => {
  const client = new PushClient({
    WebSocket: WebSocketClass,
    reglogUrl: REGLOG_URL,
    clientId: "node-live-3",
  });
  const online = new Promise((resolve) => client.addEventListener("online", resolve));
  client.start();
  try {
    await online;
    const uplinkId = await client.sendUplink({ temp: "21.5" }, { uplinkId: "node-reading-1" });
    assert.equal(uplinkId, "node-reading-1");
    const response = await fetch(`${API_URL}/v1/uplinks?after=0&wait=10`, { headers: HEADERS });
    assert.equal(response.status, 200);
    const { uplinks } = await response.json();
    const mine = uplinks.filter((uplink) => uplink.clientId === "node-live-3");
    assert.deepEqual(
      mine.map((uplink) => [uplink.uplinkId, uplink.data]),
      [["node-reading-1", { temp: "21.5" }]],
    );
  } finally {
    await client.stop();
  }
});

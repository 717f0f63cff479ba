// The hex vectors of docs/protocol.rst (docs/protocol-vectors.json), read
// here as they are, checked against the codec both ways: the JavaScript
// client and the specification cannot drift apart.

import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import {
  AuthFailCode,
  DEFAULT_MAX_FRAME,
  DecodeError,
  EncodeError,
  ErrorCode,
  FrameReader,
  FrameType,
  KickReason,
  PROTOCOL_VERSION,
  checkLength,
  decode,
  encode,
  encodePayload,
} from "../pigeonpush.js";

const VECTORS = JSON.parse(
  readFileSync(new URL("../../../docs/protocol-vectors.json", import.meta.url), "utf-8"),
);

function bytesOf(vector) {
  return Uint8Array.from(Buffer.from(vector.hex.replaceAll(" ", ""), "hex"));
}

function hexOf(bytes) {
  return Buffer.from(bytes).toString("hex");
}

/** A decoded frame as plain JSON data (extras have a null prototype). */
function plain(frame) {
  return JSON.parse(JSON.stringify(frame));
}

describe("frames: every vector encodes to its bytes and decodes to its frame", () => {
  for (const vector of VECTORS.frames) {
    test(vector.name, () => {
      const data = bytesOf(vector);
      assert.equal(hexOf(encode(vector.frame)), hexOf(data));
      assert.equal(new DataView(data.buffer).getUint32(0), data.length - 4);
      assert.equal(hexOf(encodePayload(vector.frame)), hexOf(data.subarray(4)));
      const decoded = decode(data.subarray(4));
      assert.deepEqual(plain(decoded), vector.frame);
      // Re-encoding what was decoded gives the same bytes: one encoding per frame.
      assert.equal(hexOf(encode(decoded)), hexOf(data));
      // The same bytes through the stream reader, one byte at a time.
      const reader = new FrameReader(VECTORS.maxFrame);
      const frames = [];
      for (const byte of data) frames.push(...reader.push(Uint8Array.of(byte)));
      assert.deepEqual(frames.map(plain), [vector.frame]);
    });
  }
});

describe("decodeOnly: AUTH of other versions reads the version only", () => {
  for (const vector of VECTORS.decodeOnly) {
    test(vector.name, () => {
      assert.deepEqual(plain(decode(bytesOf(vector).subarray(4))), vector.frame);
    });
  }
});

describe("errors: every vector is refused with its code", () => {
  for (const vector of VECTORS.errors) {
    test(vector.name, () => {
      const data = bytesOf(vector);
      const length = new DataView(data.buffer).getUint32(0);
      const refuse = () => {
        checkLength(length, VECTORS.maxFrame);
        decode(data.subarray(4));
      };
      assert.throws(refuse, (e) => e instanceof DecodeError && e.code === vector.error);
      assert.throws(
        () => new FrameReader(VECTORS.maxFrame).push(data),
        (e) => e instanceof DecodeError && e.code === vector.error,
      );
    });
  }
});

test("the vectors cover every type and code, and the file's limits are the codec's", () => {
  const frames = VECTORS.frames.map((v) => v.frame);
  assert.deepEqual(new Set(frames.map((f) => f.type)), new Set(Object.keys(FrameType)));
  const codes = (type, field) =>
    new Set(frames.filter((f) => f.type === type).map((f) => f[field]));
  assert.deepEqual(codes("AUTH_FAIL", "code"), new Set(Object.keys(AuthFailCode)));
  assert.deepEqual(codes("KICK", "reason"), new Set(Object.keys(KickReason)));
  assert.deepEqual(codes("ERROR", "code"), new Set(Object.keys(ErrorCode)));
  assert.deepEqual(
    new Set(VECTORS.errors.map((v) => v.error)),
    new Set(["MALFORMED", "UNKNOWN_TYPE", "TOO_LARGE"]),
  );
  assert.equal(VECTORS.maxFrame, DEFAULT_MAX_FRAME);
  assert.equal(VECTORS.protocolVersion, PROTOCOL_VERSION);
});

test("an error names what is wrong without quoting the bytes", () => {
  assert.throws(() => decode(Uint8Array.of(0x2a)), {
    code: "UNKNOWN_TYPE",
    message: "unknown frame type 0x2a",
  });
  assert.throws(() => decode(Uint8Array.of(0x07, 0x00, 0x02, 0xc0, 0xaf)), {
    code: "MALFORMED",
    message: "ACK: messageId is not valid UTF-8",
  });
  assert.throws(() => decode(Uint8Array.of(0x04, 0x00)), {
    message: "PING: 1 byte(s) after the last field",
  });
});

test("a leading U+FEFF and a __proto__ key survive a round trip", () => {
  const frame = {
    type: "PUSH",
    messageId: "m",
    title: "\uFEFFhi",
    text: "",
    extras: { ["__proto__"]: "x" },
  };
  const wire = encodePayload({ ...frame, extras: new Map([["__proto__", "x"]]) });
  const decoded = decode(wire);
  assert.equal(decoded.title, "\uFEFFhi");
  assert.equal(Object.getPrototypeOf(decoded.extras), null);
  assert.deepEqual(Object.keys(decoded.extras), ["__proto__"]);
  assert.equal(decoded.extras["__proto__"], "x");
});

test("decode takes an ArrayBuffer, a Uint8Array or any view", () => {
  const payload = encodePayload({ type: "ACK", messageId: "m1" });
  const copy = payload.slice().buffer;
  assert.deepEqual(decode(copy), { type: "ACK", messageId: "m1" });
  assert.deepEqual(decode(new DataView(copy)), { type: "ACK", messageId: "m1" });
  assert.throws(() => decode("07"), TypeError);
});

describe("what the wire cannot carry is an EncodeError", () => {
  const cases = {
    "an unknown type": { type: "UPLOAD" },
    "not an object": null,
    "a string over 65,535 bytes": { type: "ACK", messageId: "é".repeat(32768) },
    "an unpaired surrogate": { type: "ACK", messageId: "a\uD800b" },
    "a string field that is not a string": { type: "ACK", messageId: 42 },
    "an unknown AUTH_FAIL code": { type: "AUTH_FAIL", code: "NOPE", reason: "" },
    "an unknown KICK reason": { type: "KICK", reason: "BORED", text: "" },
    "an unknown ERROR code": { type: "ERROR", code: "OOPS", text: "" },
    "a version over u16": { type: "AUTH", version: 65536, clientId: "c", token: "t" },
    "a retryAfterMs over u32": { type: "NACK", messageId: "m", retryAfterMs: 2 ** 32 },
    "a negative retryAfterMs": { type: "NACK", messageId: "m", retryAfterMs: -1 },
    "a fractional heartbeatMs": { type: "AUTH_OK", heartbeatMs: 1.5, maxFrame: 8192, ackWindow: 1 },
    "heartbeatMs 0": { type: "AUTH_OK", heartbeatMs: 0, maxFrame: 8192, ackWindow: 1 },
    "maxFrame under 1024": { type: "AUTH_OK", heartbeatMs: 1, maxFrame: 1023, ackWindow: 1 },
    "ackWindow 0": { type: "AUTH_OK", heartbeatMs: 1, maxFrame: 8192, ackWindow: 0 },
    "extras that are an array": { type: "PUSH", messageId: "m", title: "", text: "", extras: [] },
    "an extras value that is a number": {
      type: "PUSH",
      messageId: "m",
      title: "",
      text: "",
      extras: { k: 1 },
    },
    "an extras Map with a number key": {
      type: "PUSH",
      messageId: "m",
      title: "",
      text: "",
      extras: new Map([[1, "v"]]),
    },
  };
  for (const [name, frame] of Object.entries(cases)) {
    test(name, () => assert.throws(() => encodePayload(frame), EncodeError));
  }
  test("more than 65,535 extras pairs", () => {
    const extras = new Map();
    for (let i = 0; i < 65536; i++) extras.set(`k${i}`, "");
    assert.throws(
      () => encodePayload({ type: "PUSH", messageId: "m", title: "", text: "", extras }),
      /65536 pairs/,
    );
  });
});

test("the stream reader refuses a length over its limit before the body arrives", () => {
  const reader = new FrameReader(1024);
  assert.throws(
    () => reader.push(Uint8Array.of(0, 0, 4, 1)),
    (e) => e.code === "TOO_LARGE",
  );
  const ok = new FrameReader(1024);
  assert.deepEqual(ok.push(Uint8Array.of(0, 0, 0, 1, 4, 0, 0, 0, 1)), [{ type: "PING" }]);
  assert.deepEqual(ok.push(Uint8Array.of(5)), [{ type: "PONG" }]);
});

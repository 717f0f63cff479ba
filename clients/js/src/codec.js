// The PigeonPush wire protocol (docs/protocol.rst), version 3: frames as
// plain objects with the field names of the specification, to and from bytes.
//
// A frame is `{type: "PUSH", messageId, title, text, extras}` and so on; codes
// travel by name (`{type: "KICK", reason: "SHUTTING_DOWN", text: ""}`), exactly
// as in docs/protocol-vectors.json. Over WebSocket one binary message holds one
// frame without the length prefix (`encodePayload` / `decode`); over a byte
// stream (TCP) each frame has its u32 length first (`encode` / `FrameReader`).

import { TOPIC } from "./identifiers.js";

/** The protocol version this client sends in AUTH. */
export const PROTOCOL_VERSION = 3;
/** The first version with NACK. */
export const NACK_VERSION = 2;
/** The first version with UPLINK and UPLINK_ACK. */
export const UPLINK_VERSION = 2;
/** Longest uplinkId, in bytes of UTF-8. */
export const MAX_UPLINK_ID_BYTES = 64;
/** Most pairs in an UPLINK's data. */
export const MAX_UPLINK_PAIRS = 64;
/** Most bytes of UTF-8 over an UPLINK's data keys and values. */
export const MAX_UPLINK_DATA_BYTES = 4096;
/** The versions this codec speaks. */
export const SUPPORTED_VERSIONS = Object.freeze([1, 2, 3]);
/** The frame limit (`length`: type + body) until AUTH_OK says otherwise. */
export const DEFAULT_MAX_FRAME = 8192;
/** The smallest `maxFrame` a server may announce. */
export const MIN_MAX_FRAME = 1024;
/** The largest `length` a u32 can carry. */
export const MAX_MAX_FRAME = 0xffffffff;
/** The largest AUTH frame (`length`): the smallest limit a server may have. */
export const MAX_AUTH_FRAME = 1024;
/** The WebSocket subprotocol that carries these frames. */
export const SUBPROTOCOL = "pigeonpush.v1";

const MAX_U16 = 0xffff;
const MAX_U32 = 0xffffffff;

/** Frame type name -> type byte. */
export const FrameType = Object.freeze({
  AUTH: 0x01,
  AUTH_OK: 0x02,
  AUTH_FAIL: 0x03,
  PING: 0x04,
  PONG: 0x05,
  PUSH: 0x06,
  ACK: 0x07,
  KICK: 0x08,
  ERROR: 0x09,
  NACK: 0x0a,
  UPLINK: 0x0b,
  UPLINK_ACK: 0x0c,
  SUBSCRIBE: 0x0d, // version 3, client to server
  UNSUBSCRIBE: 0x0e, // version 3, client to server
  SUBSCRIPTION: 0x0f, // version 3: the answer to either
  MISSED: 0x10, // version 3, server to client
});

/** AUTH_FAIL code name -> code. */
export const AuthFailCode = Object.freeze({ BAD_TOKEN: 1, VERSION: 2, UNAVAILABLE: 3, FULL: 4 });
/** KICK reason name -> code. */
export const KickReason = Object.freeze({ REPLACED: 1, SHUTTING_DOWN: 2, POLICY: 3 });
/** ERROR code name -> code. */
export const ErrorCode = Object.freeze({
  MALFORMED: 1,
  UNKNOWN_TYPE: 2,
  TOO_LARGE: 3,
  UNEXPECTED: 4,
  TIMEOUT: 5,
  INTERNAL: 6,
  RATE_LIMITED: 7,
});

const TYPE_NAMES = invert(FrameType);
const AUTH_FAIL_NAMES = invert(AuthFailCode);
const KICK_NAMES = invert(KickReason);
const ERROR_NAMES = invert(ErrorCode);
/** SUBSCRIPTION code name -> code (version 3). */
const SubscriptionCode = Object.freeze({ OK: 0, NOT_ALLOWED: 1, TOO_MANY: 2, UNAVAILABLE: 3 });
const SUBSCRIPTION_NAMES = invert(SubscriptionCode);

function invert(table) {
  const names = new Map();
  for (const [name, code] of Object.entries(table)) names.set(code, name);
  return names;
}

/**
 * Bytes a receiver must refuse. `code` is the ERROR code name to answer with
 * (MALFORMED, UNKNOWN_TYPE, TOO_LARGE); the message says what is wrong
 * without quoting the bytes.
 */
export class DecodeError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "DecodeError";
    this.code = code;
  }
}

/** A frame the wire cannot carry (a string over 65,535 bytes, a bad code...). */
export class EncodeError extends Error {
  constructor(message) {
    super(message);
    this.name = "EncodeError";
  }
}

const utf8Encoder = new TextEncoder();
// fatal: invalid UTF-8 is an error, never repaired; ignoreBOM: a leading
// U+FEFF is a character of the string, not a marker to drop.
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

// --- encoding -----------------------------------------------------------------

class Writer {
  constructor() {
    this.parts = [];
    this.length = 0;
  }

  u8(value) {
    this.parts.push(Uint8Array.of(value));
    this.length += 1;
  }

  u16(value, field) {
    if (!Number.isInteger(value) || value < 0 || value > MAX_U16) {
      throw new EncodeError(`${field} must be an integer from 0 to 65535, not ${value}`);
    }
    this.parts.push(Uint8Array.of(value >>> 8, value & 0xff));
    this.length += 2;
  }

  u32(value, field) {
    if (!Number.isInteger(value) || value < 0 || value > MAX_U32) {
      throw new EncodeError(`${field} must be an integer from 0 to 4294967295, not ${value}`);
    }
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setUint32(0, value);
    this.parts.push(bytes);
    this.length += 4;
  }

  string(value, field) {
    if (typeof value !== "string") {
      throw new EncodeError(`${field} must be a string, not ${typeof value}`);
    }
    if (LONE_SURROGATE.test(value)) {
      throw new EncodeError(`${field} holds an unpaired surrogate: it is not valid UTF-8`);
    }
    const bytes = utf8Encoder.encode(value);
    if (bytes.length > MAX_U16) {
      throw new EncodeError(`${field} is ${bytes.length} bytes of UTF-8, over 65535`);
    }
    this.u16(bytes.length, field);
    this.parts.push(bytes);
    this.length += bytes.length;
  }

  map(value, field) {
    const pairs = extrasPairs(value, field);
    if (pairs.length > MAX_U16) {
      throw new EncodeError(`${field} has ${pairs.length} pairs, over 65535`);
    }
    this.u16(pairs.length, field);
    for (const [key, item] of pairs) {
      this.string(key, `${field} key`);
      this.string(item, `${field}[${JSON.stringify(key)}]`);
    }
  }

  bytes() {
    const out = new Uint8Array(this.length);
    let offset = 0;
    for (const part of this.parts) {
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }
}

function extrasPairs(value, field) {
  if (value === undefined) return [];
  if (value instanceof Map) {
    // A Map's keys are distinct already, but may not be strings.
    return [...value.entries()];
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new EncodeError(`${field} must be an object or a Map of strings to strings`);
  }
  return Object.entries(value);
}

function code(table, name, field) {
  const value = Object.hasOwn(table, name) ? table[name] : undefined;
  if (value === undefined) {
    throw new EncodeError(`${field} must be one of ${Object.keys(table).join(", ")}, not ${name}`);
  }
  return value;
}

function atLeast(value, minimum, field) {
  if (Number.isInteger(value) && value < minimum) {
    throw new EncodeError(`${field} must be at least ${minimum}, not ${value}`);
  }
}

/**
 * The frame as one WebSocket message: the type byte and the body, no prefix.
 * Throws EncodeError for what the wire cannot carry.
 */
export function encodePayload(frame) {
  if (frame === null || typeof frame !== "object") {
    throw new EncodeError("a frame must be an object with a type");
  }
  const type = code(FrameType, frame.type, "type");
  const w = new Writer();
  w.u8(type);
  switch (frame.type) {
    case "AUTH":
      w.u16(frame.version, "version");
      w.string(frame.clientId, "clientId");
      w.string(frame.token, "token");
      break;
    case "AUTH_OK":
      atLeast(frame.heartbeatMs, 1, "heartbeatMs");
      atLeast(frame.maxFrame, MIN_MAX_FRAME, "maxFrame");
      atLeast(frame.ackWindow, 1, "ackWindow");
      w.u32(frame.heartbeatMs, "heartbeatMs");
      w.u32(frame.maxFrame, "maxFrame");
      w.u32(frame.ackWindow, "ackWindow");
      break;
    case "AUTH_FAIL":
      w.u8(code(AuthFailCode, frame.code, "code"));
      w.string(frame.reason ?? "", "reason");
      break;
    case "PING":
    case "PONG":
      break;
    case "PUSH":
      w.string(frame.messageId, "messageId");
      w.string(frame.title, "title");
      w.string(frame.text, "text");
      w.map(frame.extras, "extras");
      if (frame.topic) {
        w.string(frame.topic, "topic"); // version 3
      }
      break;
    case "ACK":
      w.string(frame.messageId, "messageId");
      break;
    case "MISSED":
      w.string(frame.topic, "topic");
      break;
    case "SUBSCRIBE":
    case "UNSUBSCRIBE":
      w.u32(frame.requestId, "requestId");
      w.string(frame.topic, "topic");
      break;
    case "SUBSCRIPTION":
      w.u32(frame.requestId, "requestId");
      w.u8(code(SubscriptionCode, frame.code, "code"));
      w.string(frame.reason ?? "", "reason");
      break;
    case "NACK":
      w.string(frame.messageId, "messageId");
      w.u32(frame.retryAfterMs ?? 0, "retryAfterMs");
      break;
    case "UPLINK":
      w.string(frame.uplinkId, "uplinkId");
      w.map(frame.data, "data");
      break;
    case "UPLINK_ACK":
      w.string(frame.uplinkId, "uplinkId");
      break;
    case "KICK":
      w.u8(code(KickReason, frame.reason, "reason"));
      w.string(frame.text ?? "", "text");
      break;
    case "ERROR":
      w.u8(code(ErrorCode, frame.code, "code"));
      w.string(frame.text ?? "", "text");
      break;
  }
  return w.bytes();
}

/** The frame with its u32 length prefix, as on a byte stream (TCP). */
export function encode(frame) {
  const payload = encodePayload(frame);
  const out = new Uint8Array(4 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length);
  out.set(payload, 4);
  return out;
}

// --- decoding -----------------------------------------------------------------

class Reader {
  constructor(bytes, what) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.offset = 0;
    this.what = what;
  }

  need(count, field) {
    if (this.offset + count > this.bytes.length) {
      throw new DecodeError("MALFORMED", `${this.what}: ${field} runs past the end of the frame`);
    }
  }

  u8(field) {
    this.need(1, field);
    return this.bytes[this.offset++];
  }

  u16(field) {
    this.need(2, field);
    const value = this.view.getUint16(this.offset);
    this.offset += 2;
    return value;
  }

  u32(field) {
    this.need(4, field);
    const value = this.view.getUint32(this.offset);
    this.offset += 4;
    return value;
  }

  string(field) {
    const length = this.u16(field);
    this.need(length, field);
    const raw = this.bytes.subarray(this.offset, this.offset + length);
    this.offset += length;
    try {
      return utf8Decoder.decode(raw);
    } catch {
      throw new DecodeError("MALFORMED", `${this.what}: ${field} is not valid UTF-8`);
    }
  }

  map(field) {
    const count = this.u16(field);
    // A null prototype: a key such as "__proto__" is an ordinary key.
    const pairs = Object.create(null);
    for (let i = 0; i < count; i++) {
      const key = this.string(`${field} key`);
      const value = this.string(`${field} value`);
      if (Object.hasOwn(pairs, key)) {
        throw new DecodeError("MALFORMED", `${this.what}: ${field} repeats a key`);
      }
      pairs[key] = value;
    }
    return pairs;
  }

  codeOf(names, field) {
    const value = this.u8(field);
    const name = names.get(value);
    if (name === undefined) {
      throw new DecodeError("MALFORMED", `${this.what}: ${field} ${value} is not defined`);
    }
    return name;
  }

  end() {
    if (this.offset !== this.bytes.length) {
      throw new DecodeError(
        "MALFORMED",
        `${this.what}: ${this.bytes.length - this.offset} byte(s) after the last field`,
      );
    }
  }
}

function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data))
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError("frame bytes must be a Uint8Array, an ArrayBuffer or a view of one");
}

/**
 * The frame in `payload`: the type byte and the body (a WebSocket message, or
 * the bytes after a length prefix). Throws DecodeError with the ERROR code to
 * answer. The size limit is the caller's (see `checkLength`).
 */
export function decode(payload) {
  const bytes = asBytes(payload);
  if (bytes.length === 0) throw new DecodeError("MALFORMED", "an empty frame (no type byte)");
  const type = TYPE_NAMES.get(bytes[0]);
  if (type === undefined) {
    const hex = bytes[0].toString(16).padStart(2, "0");
    throw new DecodeError("UNKNOWN_TYPE", `unknown frame type 0x${hex}`);
  }
  const r = new Reader(bytes.subarray(1), type);
  let frame;
  switch (type) {
    case "AUTH": {
      const version = r.u16("version");
      if (!SUPPORTED_VERSIONS.includes(version)) {
        // Another version's layout: only the version is read.
        return { type, version };
      }
      frame = { type, version, clientId: r.string("clientId"), token: r.string("token") };
      break;
    }
    case "AUTH_OK": {
      frame = {
        type,
        heartbeatMs: r.u32("heartbeatMs"),
        maxFrame: r.u32("maxFrame"),
        ackWindow: r.u32("ackWindow"),
      };
      if (frame.heartbeatMs < 1) throw new DecodeError("MALFORMED", "AUTH_OK: heartbeatMs is 0");
      if (frame.maxFrame < MIN_MAX_FRAME) {
        throw new DecodeError("MALFORMED", `AUTH_OK: maxFrame is below ${MIN_MAX_FRAME}`);
      }
      if (frame.ackWindow < 1) throw new DecodeError("MALFORMED", "AUTH_OK: ackWindow is 0");
      break;
    }
    case "AUTH_FAIL":
      frame = { type, code: r.codeOf(AUTH_FAIL_NAMES, "code"), reason: r.string("reason") };
      break;
    case "PING":
    case "PONG":
      frame = { type };
      break;
    case "PUSH":
      frame = {
        type,
        messageId: r.string("messageId"),
        title: r.string("title"),
        text: r.string("text"),
        extras: r.map("extras"),
      };
      if (r.offset < r.bytes.length) {
        frame.topic = r.string("topic"); // version 3: the topic it came through
      }
      break;
    case "ACK":
      frame = { type, messageId: r.string("messageId") };
      break;
    case "MISSED":
      frame = { type, topic: r.string("topic") };
      break;
    case "SUBSCRIBE":
    case "UNSUBSCRIBE":
      frame = { type, requestId: r.u32("requestId"), topic: r.string("topic") };
      if (!TOPIC.test(frame.topic)) {
        throw new DecodeError("MALFORMED", `${type}: the topic breaks the topic grammar`);
      }
      break;
    case "SUBSCRIPTION":
      frame = {
        type,
        requestId: r.u32("requestId"),
        code: r.codeOf(SUBSCRIPTION_NAMES, "code"),
        reason: r.string("reason"),
      };
      break;
    case "NACK":
      frame = { type, messageId: r.string("messageId"), retryAfterMs: r.u32("retryAfterMs") };
      break;
    case "UPLINK":
      frame = { type, uplinkId: r.string("uplinkId"), data: r.map("data") };
      break;
    case "UPLINK_ACK":
      frame = { type, uplinkId: r.string("uplinkId") };
      break;
    case "KICK":
      frame = { type, reason: r.codeOf(KICK_NAMES, "reason"), text: r.string("text") };
      break;
    case "ERROR":
      frame = { type, code: r.codeOf(ERROR_NAMES, "code"), text: r.string("text") };
      break;
  }
  r.end();
  return frame;
}

/**
 * What makes an uplink unacceptable beyond its encoding (the limits of
 * docs/protocol.rst), or null.
 */
export function uplinkProblem(uplinkId, data) {
  const idBytes = utf8Encoder.encode(String(uplinkId)).length;
  if (idBytes < 1 || idBytes > MAX_UPLINK_ID_BYTES) {
    return `uplinkId must be 1 to ${MAX_UPLINK_ID_BYTES} bytes of UTF-8, not ${idBytes}`;
  }
  const pairs = extrasPairs(data, "data");
  if (pairs.length > MAX_UPLINK_PAIRS) {
    return `data has ${pairs.length} pairs; the limit is ${MAX_UPLINK_PAIRS}`;
  }
  let total = 0;
  for (const [key, value] of pairs) {
    if (typeof key !== "string" || typeof value !== "string") {
      return "data must map strings to strings";
    }
    total += utf8Encoder.encode(key).length + utf8Encoder.encode(value).length;
  }
  if (total > MAX_UPLINK_DATA_BYTES) {
    return `data is ${total} bytes of UTF-8; the limit is ${MAX_UPLINK_DATA_BYTES}`;
  }
  return null;
}

/** Throws DecodeError TOO_LARGE when a frame of `length` bytes is over `maxFrame`. */
export function checkLength(length, maxFrame) {
  if (length > maxFrame) {
    throw new DecodeError(
      "TOO_LARGE",
      `a frame of ${length} bytes is over the limit of ${maxFrame}`,
    );
  }
}

/**
 * Splits a byte stream into frames (the TCP framing): `push(bytes)` returns
 * the frames completed so far. The length is checked against `maxFrame`
 * before the body is buffered; after a DecodeError the reader is unusable.
 */
export class FrameReader {
  constructor(maxFrame = DEFAULT_MAX_FRAME) {
    this.maxFrame = maxFrame;
    this._buffer = new Uint8Array(0);
  }

  push(data) {
    const incoming = asBytes(data);
    const buffer = new Uint8Array(this._buffer.length + incoming.length);
    buffer.set(this._buffer);
    buffer.set(incoming, this._buffer.length);
    const frames = [];
    let offset = 0;
    while (buffer.length - offset >= 4) {
      const length = new DataView(buffer.buffer, offset, 4).getUint32(0);
      checkLength(length, this.maxFrame);
      if (buffer.length - offset - 4 < length) break;
      frames.push(decode(buffer.subarray(offset + 4, offset + 4 + length)));
      offset += 4 + length;
    }
    this._buffer = buffer.slice(offset);
    return frames;
  }
}

// Type declarations for pigeonpush-client (the code is plain JavaScript).

// --- the codec (docs/protocol.rst) ---------------------------------------------

export const PROTOCOL_VERSION: 3;
export const NACK_VERSION: 2;
export const UPLINK_VERSION: 2;
export const MAX_UPLINK_ID_BYTES: 64;
export const MAX_UPLINK_PAIRS: 64;
export const MAX_UPLINK_DATA_BYTES: 4096;
export const SUPPORTED_VERSIONS: readonly number[];
export const DEFAULT_MAX_FRAME: 8192;
export const MIN_MAX_FRAME: 1024;
export const MAX_MAX_FRAME: 4294967295;
export const MAX_AUTH_FRAME: 1024;
export const SUBPROTOCOL: "pigeonpush.v1";

export const FrameType: Readonly<{
  AUTH: 1;
  AUTH_OK: 2;
  AUTH_FAIL: 3;
  PING: 4;
  PONG: 5;
  PUSH: 6;
  ACK: 7;
  KICK: 8;
  ERROR: 9;
  NACK: 10;
  UPLINK: 11;
  UPLINK_ACK: 12;
  SUBSCRIBE: 13;
  UNSUBSCRIBE: 14;
  SUBSCRIPTION: 15;
  MISSED: 16;
}>;
export const AuthFailCode: Readonly<{ BAD_TOKEN: 1; VERSION: 2; UNAVAILABLE: 3; FULL: 4 }>;
export const KickReason: Readonly<{ REPLACED: 1; SHUTTING_DOWN: 2; POLICY: 3 }>;
export const ErrorCode: Readonly<{
  MALFORMED: 1;
  UNKNOWN_TYPE: 2;
  TOO_LARGE: 3;
  UNEXPECTED: 4;
  TIMEOUT: 5;
  INTERNAL: 6;
  RATE_LIMITED: 7;
}>;

export type AuthFailCodeName = keyof typeof AuthFailCode;
export type KickReasonName = keyof typeof KickReason;
export type ErrorCodeName = keyof typeof ErrorCode;
export type Extras = Record<string, string>;

export type Frame =
  | { type: "AUTH"; version: number; clientId: string; token: string }
  | { type: "AUTH"; version: number } // a version this codec does not speak
  | { type: "AUTH_OK"; heartbeatMs: number; maxFrame: number; ackWindow: number }
  | { type: "AUTH_FAIL"; code: AuthFailCodeName; reason: string }
  | { type: "PING" }
  | { type: "PONG" }
  | {
      type: "PUSH";
      messageId: string;
      title: string;
      text: string;
      extras: Extras;
      /** Version 3: the topic it came through ("*": broadcast). */
      topic?: string;
    }
  | { type: "ACK"; messageId: string }
  | { type: "NACK"; messageId: string; retryAfterMs: number }
  | { type: "UPLINK"; uplinkId: string; data: Extras }
  | { type: "UPLINK_ACK"; uplinkId: string }
  | { type: "KICK"; reason: KickReasonName; text: string }
  | { type: "ERROR"; code: ErrorCodeName; text: string }
  | { type: "MISSED"; topic: string }
  | { type: "SUBSCRIBE" | "UNSUBSCRIBE"; requestId: number; topic: string }
  | {
      type: "SUBSCRIPTION";
      requestId: number;
      code: "OK" | "NOT_ALLOWED" | "TOO_MANY" | "UNAVAILABLE";
      reason: string;
    };

export type Bytes = Uint8Array | ArrayBuffer | ArrayBufferView;

export class DecodeError extends Error {
  code: "MALFORMED" | "UNKNOWN_TYPE" | "TOO_LARGE";
}
export class EncodeError extends Error {}

/** The frame as one WebSocket message: type byte and body, no prefix. */
export function encodePayload(frame: Frame): Uint8Array;
/** The frame with its u32 length prefix (TCP). */
export function encode(frame: Frame): Uint8Array;
/** The frame in a WebSocket message (or the bytes after a length prefix). */
export function decode(payload: Bytes): Frame;
/** Why an uplink breaks the limits of docs/protocol.rst, or null. */
export function uplinkProblem(uplinkId: string, data: Extras | Map<string, string>): string | null;
export function checkLength(length: number, maxFrame: number): void;
export class FrameReader {
  constructor(maxFrame?: number);
  maxFrame: number;
  push(data: Bytes): Frame[];
}

// --- the client -----------------------------------------------------------------

export const ClientState: Readonly<{
  STOPPED: "stopped";
  WAITING: "waiting";
  ROUTING: "routing";
  CONNECTING: "connecting";
  AUTHENTICATING: "authenticating";
  ONLINE: "online";
  STOPPING: "stopping";
}>;
export type ClientStateName = (typeof ClientState)[keyof typeof ClientState];

export const AVOID_SECONDS: 60;
export const CLOSE_GRACE: 5;
export const CLIENT_ID: RegExp;
export function checkClientId(clientId: unknown): string;

export interface Message {
  readonly messageId: string;
  readonly title: string;
  readonly text: string;
  readonly extras: Readonly<Extras>;
  /** The topic it came through ("*": broadcast), or null (sent to clientIds). */
  readonly topic: string | null;
  readonly receivedAt: Date;
}

/** What reglog answers to POST /v1/route (or a routeSource resolves with). */
export interface RouteAnswer {
  token: string;
  server: string;
  transport?: "tcp" | "tls" | "ws" | "wss";
  heartbeat?: number | null;
  path?: string | null;
}
export interface Route {
  token: string;
  server: string;
  transport: "tcp" | "tls" | "ws" | "wss";
  heartbeat: number | null;
  path: string | null;
}

export interface Clock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}
export const SYSTEM_CLOCK: Clock;

export interface Logger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

export interface PushClientOptions {
  reglogUrl?: string;
  clientId: string;
  onMessage?: ((message: Message) => unknown) | null;
  secret?: string | null;
  heartbeat?: number;
  maxMissedPongs?: number;
  reconnectThreshold?: number;
  maxRouteFailures?: number | null;
  authTimeout?: number;
  connectTimeout?: number;
  httpTimeout?: number;
  dedupWindow?: number;
  maxFrame?: number;
  backoff?: ((attempt: number) => number) | null;
  WebSocket?: { new (url: string, protocols?: string | string[]): WebSocket } | null;
  fetch?: typeof fetch | null;
  clock?: Clock;
  routeSource?: ((signal: AbortSignal) => Promise<RouteAnswer>) | null;
  logger?: Logger;
}

export interface Online {
  server: string;
  heartbeat: number;
  maxFrame: number;
  ackWindow: number;
}

export interface PushClientEventMap {
  connected: { server: string };
  online: Online;
  offline: { server: string; reason: string; authenticated: boolean };
  kicked: { server: string; reason: KickReasonName; text: string };
  message: { message: Message };
  acked: { messageId: string; sent: boolean; duplicate: boolean };
  /** Version 3: some messages of `topic` ("*": broadcast) will never come. */
  missed: { topic: string };
  nacked: { messageId: string; retryAfter: number; error: unknown; sent: boolean };
  error: { error: Error; fatal: boolean };
}

export class PushClientEvent<D = unknown> extends Event {
  constructor(type: string, detail: D);
  readonly detail: D;
}

export class PushClient extends EventTarget {
  constructor(options: PushClientOptions);
  readonly clientId: string;
  readonly reglogUrl: string | null;
  readonly state: ClientStateName;
  readonly server: string | null;
  readonly gaveUp: PushClientError | null;
  readonly protocolVersion: number;
  readonly avoid: string[];
  start(): void;
  stop(): Promise<void>;
  close(): Promise<void>;
  whenOnline(): Promise<Online>;
  /** Resolves with the uplinkId once the server stored it (UPLINK_ACK). */
  sendUplink(
    data: Extras | Map<string, string>,
    options?: { uplinkId?: string | null; resendOnReconnect?: boolean },
  ): Promise<string>;
  /** Protocol version 3: subscribe this device to a topic the operator opened to devices. */
  subscribe(topic: string): Promise<void>;
  unsubscribe(topic: string): Promise<void>;
  on<K extends keyof PushClientEventMap>(
    type: K,
    listener: (event: PushClientEvent<PushClientEventMap[K]>) => void,
  ): () => void;
  addEventListener<K extends keyof PushClientEventMap>(
    type: K,
    listener: (event: PushClientEvent<PushClientEventMap[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
}

// --- errors ---------------------------------------------------------------------

export class PushClientError extends Error {}
export class RouteLookupFailed extends PushClientError {
  constructor(
    url: string,
    attempts: number,
    reason: string,
    options?: { retryable?: boolean; status?: number | null; error?: string | null },
  );
  url: string;
  attempts: number;
  reason: string;
  retryable: boolean;
  status: number | null;
  error: string | null;
}
export class ProtocolVersionRefused extends PushClientError {}
export class SessionReplaced extends PushClientError {}
export class SubscriptionFailed extends Error {
  constructor(code: string, reason?: string);
  code: "NOT_ALLOWED" | "TOO_MANY" | "UNAVAILABLE" | "OFFLINE" | "DISCONNECTED" | string;
  reason: string;
}
export class RetryLater extends Error {
  constructor(retryAfter: number, reason?: string);
  retryAfter: number;
}
export class UplinkNotSent extends Error {
  constructor(uplinkId: string, reason: string);
  uplinkId: string;
  reason: string;
}

// --- backoff, de-duplication, routes ----------------------------------------------

export function fullJitter(options?: {
  initial?: number;
  maximum?: number;
  factor?: number;
  random?: () => number;
}): (attempt: number) => number;

export class RecentIds {
  constructor(capacity: number);
  readonly capacity: number;
  readonly size: number;
  has(messageId: string): boolean;
  add(messageId: string): void;
}

export const ROUTE_PATH: "/v1/route";
export const REQUESTED_TRANSPORT: "websocket";
export const TRANSPORTS: readonly string[];
export const WEBSOCKET_TRANSPORTS: readonly string[];
export function parseRoute(body: unknown): Route;
export function websocketUrl(route: Route): string;
export function splitAddress(server: string): { host: string; port: number };
export class RouteFetcher {
  constructor(options: {
    reglogUrl: string;
    clientId: string;
    secret?: string | null;
    attempts?: number | null;
    backoff: (attempt: number) => number;
    timeout?: number;
    avoid?: () => Iterable<string>;
    fetch?: typeof fetch;
    onRetry?: (info: { url: string; attempt: number; reason: string; delay: number }) => void;
    clock?: Clock;
  });
  readonly url: string;
  lookup(signal?: AbortSignal): Promise<Route>;
}

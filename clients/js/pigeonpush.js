// pigeonpush-client: a PigeonPush device client over WebSocket, for browsers
// and Node, with no dependencies and no build step.
//
//   import { PushClient } from "./pigeonpush.js";
//   const client = new PushClient({ reglogUrl, clientId, onMessage });
//   client.start();

export * from "./src/codec.js";
export {
  PushClient,
  PushClientEvent,
  ClientState,
  AVOID_SECONDS,
  CLIENT_ID,
  checkClientId,
} from "./src/client.js";
export { CLOSE_GRACE } from "./src/session.js";
export { SYSTEM_CLOCK } from "./src/clock.js";
export { fullJitter, RecentIds } from "./src/backoff.js";
export {
  PushClientError,
  RouteLookupFailed,
  ProtocolVersionRefused,
  SessionReplaced,
  SubscriptionFailed,
  RetryLater,
  UplinkNotSent,
} from "./src/errors.js";
export {
  ROUTE_PATH,
  REQUESTED_TRANSPORT,
  TRANSPORTS,
  WEBSOCKET_TRANSPORTS,
  RouteFetcher,
  parseRoute,
  websocketUrl,
  splitAddress,
} from "./src/route.js";

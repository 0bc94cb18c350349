/**
 * @pushmesh/client — the pushmesh client SDK. See docs/sdk.md.
 *
 * ```js
 * import { Client } from "@pushmesh/client";
 * const client = new Client("wss://push.example.com/ws", { getToken: () => fetchToken() });
 * const news = client.subscribe("news", { onMessage: (m) => show(m.data) });
 * news.on("notRecovered", () => reloadNews());
 * await client.connect();
 * ```
 */

export { Backoff, type BackoffOptions } from "./backoff.js";
export {
  Client,
  type ClientEvents,
  type ClientMessage,
  type ClientOptions,
  type ConnectedEvent,
  type ConnectingEvent,
  type ConnectionState,
  type DisconnectedEvent,
  type PresenceAnswer,
  type WebSocketConstructor,
  type WebSocketLike,
  withTimeout,
} from "./client.js";
export { Emitter, type Listener } from "./emitter.js";
export { type ClientErrorCode, PushmeshError, ReplyError, TimeoutError } from "./errors.js";
export { type Discontinuity, PositionTracker, type StreamPosition, type Verdict } from "./positions.js";
export { ClientCloseCode, CloseCode } from "./protocol.js";
export {
  type ChannelMessage,
  type NotRecoveredEvent,
  type PresenceEvent,
  type RecoveredEvent,
  type SubscribedEvent,
  type SubscribeOptions,
  Subscription,
  type SubscriptionEvents,
  type SubscriptionState,
  type UnsubscribedEvent,
} from "./subscription.js";
export { refreshDelay, type TokenTimes, tokenTimes } from "./token.js";

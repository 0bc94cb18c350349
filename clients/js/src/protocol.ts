/**
 * The client WebSocket protocol's frames (docs/protocol.md), as the SDK
 * sends and reads them.
 */

import type { StreamPosition } from "./positions.js";

export interface WelcomeFrame {
  type: "welcome";
  connection: string;
  gateway: string;
  user?: string;
}

export interface ReplyFrame {
  type: "reply";
  id: number | null;
  ok?: true;
  recovered?: boolean;
  epoch?: string;
  offset?: number;
  /** `rpc`: the backend's answer; `presence`: who is in the channel. */
  data?: unknown;
  error?: { code: string; message: string };
}

export interface MessageFrame {
  type: "message";
  channel?: string;
  data: unknown;
  epoch?: string;
  offset?: number;
}

export interface MembershipFrame {
  type: "subscribed" | "unsubscribed";
  channel: string;
}

/** Someone joined or left a channel whose namespace sends `join_leave`. */
export interface PresenceFrame {
  type: "join" | "leave";
  channel: string;
  user?: string;
  connection: string;
}

export type ServerFrame = WelcomeFrame | ReplyFrame | MessageFrame | MembershipFrame | PresenceFrame;

export type Command =
  | { op: "auth"; token: string }
  | { op: "refresh"; token: string }
  | { op: "subscribe"; channel: string; since?: StreamPosition }
  | { op: "unsubscribe"; channel: string }
  | { op: "ping" }
  | { op: "publish"; channel: string; data: unknown }
  | { op: "rpc"; method: string; data?: unknown }
  | { op: "presence"; channel: string };

/** Parse one text frame; undefined when it is not a frame of this protocol. */
export function parseFrame(data: unknown): ServerFrame | undefined {
  if (typeof data !== "string") return undefined;
  let v: unknown;
  try {
    v = JSON.parse(data);
  } catch {
    return undefined;
  }
  if (typeof v !== "object" || v === null || typeof (v as { type?: unknown }).type !== "string") return undefined;
  switch ((v as { type: string }).type) {
    case "welcome":
    case "reply":
    case "message":
    case "subscribed":
    case "unsubscribed":
    case "join":
    case "leave":
      return v as ServerFrame;
    default:
      return undefined;
  }
}

/** Close codes the gateway sends (docs/protocol.md#close-codes). */
export const CloseCode = {
  /** The gateway is restarting (drain): reconnect at once. */
  SERVICE_RESTART: 1012,
  /** Slow consumer: the connection's outbound queue overflowed. */
  TRY_AGAIN_LATER: 1013,
  /** Disconnected through the server API. */
  DISCONNECTED: 4000,
  /** The token is missing, malformed, badly signed or not allowed. */
  UNAUTHORIZED: 4001,
  /** The token expired. */
  TOKEN_EXPIRED: 4002,
  /** The user holds the most connections allowed. */
  TOO_MANY_CONNECTIONS: 4003,
  /** The gateway heard nothing from the client for two ping intervals. */
  IDLE_TIMEOUT: 4004,
} as const;

/**
 * Codes the SDK itself closes a connection with (3000–3999 is the range for
 * libraries), reported in `disconnected` events like the gateway's.
 */
export const ClientCloseCode = {
  /** `disconnect()` was called. */
  NORMAL: 1000,
  /** No reply to a ping within `pingTimeoutMs`: the connection is dead or stuck. */
  NO_PONG: 3001,
  /** No welcome frame within `connectTimeoutMs` of starting to connect. */
  CONNECT_TIMEOUT: 3002,
  /** `getToken` failed or timed out before connecting. */
  TOKEN_UNAVAILABLE: 3003,
  /** Opening the WebSocket threw (a malformed URL, a blocked port…). */
  OPEN_FAILED: 3004,
} as const;

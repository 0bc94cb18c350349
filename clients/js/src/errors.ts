/**
 * Errors the SDK hands to promises and `error` events. Each carries a
 * machine-readable `code`: the gateway's own error codes for refused
 * commands (`permission_denied`, `invalid_channel`, … — see
 * docs/protocol.md) and the SDK's codes below for everything else.
 */

/** The SDK's own error codes (the gateway's reply codes pass through as they are). */
export type ClientErrorCode =
  | "timeout"
  | "not_connected"
  | "connection_closed"
  | "disconnected"
  | "unauthorized"
  | "token_expired"
  | "token"
  | "refresh_refused"
  | "protocol"
  | "closed_by_server"
  | "already_subscribed"
  | "unsubscribed"
  | "no_websocket";

export class PushmeshError extends Error {
  /** An SDK code (`ClientErrorCode`) or the gateway's reply code. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "PushmeshError";
    this.code = code;
  }
}

/** A promise's deadline passed (every promise the SDK returns has one). */
export class TimeoutError extends PushmeshError {
  constructor(what: string, ms: number) {
    super("timeout", `${what} timed out after ${ms} ms`);
    this.name = "TimeoutError";
  }
}

/** The gateway refused a command: `code` and `message` are its reply's. */
export class ReplyError extends PushmeshError {
  constructor(code: string, message: string) {
    super(code, message);
    this.name = "ReplyError";
  }
}

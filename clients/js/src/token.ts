/**
 * What the SDK reads from a JWT: its `exp` and `iat`, to refresh it ahead
 * of expiry. The token is not verified here (the gateway does that); a
 * token that cannot be read is simply never refreshed ahead of time.
 */

export interface TokenTimes {
  /** `exp` in ms since the epoch. */
  expiresAt: number;
  /** `iat` in ms since the epoch, when present. */
  issuedAt?: number;
}

export function tokenTimes(token: string): TokenTimes | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims: unknown = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    if (typeof claims !== "object" || claims === null) return undefined;
    const { exp, iat } = claims as { exp?: unknown; iat?: unknown };
    if (typeof exp !== "number" || !Number.isFinite(exp)) return undefined;
    const times: TokenTimes = { expiresAt: exp * 1000 };
    if (typeof iat === "number" && Number.isFinite(iat)) times.issuedAt = iat * 1000;
    return times;
  } catch {
    return undefined;
  }
}

/** The longest delay `setTimeout` takes (about 24.8 days). */
const MAX_TIMER = 2 ** 31 - 1;

/**
 * How long from `now` until the token received at `receivedAt` should be
 * replaced: `aheadMs` before it expires, but never later than half-way
 * through its lifetime (so a short-lived token is still refreshed in time)
 * and never sooner than `minMs` (so a stale token does not refresh in a
 * tight loop). All times in ms since the epoch.
 *
 * With `iat`, the lifetime is `exp − iat`, counted from when the token was
 * received: only differences of this machine's clock are used, so a clock
 * that disagrees with the issuer's does not matter. Without `iat`, the
 * remaining time is `exp − now` on this machine's clock.
 */
export function refreshDelay(times: TokenTimes, receivedAt: number, now: number, aheadMs: number, minMs = 500): number {
  const withIat = times.issuedAt !== undefined;
  const lifetime = withIat ? times.expiresAt - (times.issuedAt as number) : times.expiresAt - receivedAt;
  const remaining = withIat ? lifetime - (now - receivedAt) : times.expiresAt - now;
  const ahead = Math.min(aheadMs, lifetime / 2);
  return Math.min(MAX_TIMER, Math.max(minMs, Math.floor(remaining - ahead)));
}

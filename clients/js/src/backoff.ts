/**
 * Reconnect delays: exponential backoff with full jitter (the delay is
 * drawn uniformly from [0, min(max, base·2^attempt)]), so clients that lost
 * the same gateway at the same moment spread their reconnects over the
 * window instead of arriving together.
 */

export interface BackoffOptions {
  /** The first window's upper bound, in ms. */
  baseMs: number;
  /** The largest window, in ms. */
  maxMs: number;
  /** A number in [0, 1); `Math.random` by default (tests pass their own). */
  random?: () => number;
}

export class Backoff {
  #attempt = 0;
  readonly #base: number;
  readonly #max: number;
  readonly #random: () => number;

  constructor(options: BackoffOptions) {
    if (!(options.baseMs > 0) || !(options.maxMs >= options.baseMs)) {
      throw new RangeError(`backoff needs 0 < baseMs <= maxMs, got baseMs=${options.baseMs} maxMs=${options.maxMs}`);
    }
    this.#base = options.baseMs;
    this.#max = options.maxMs;
    this.#random = options.random ?? Math.random;
  }

  /** How many delays were handed out since the last reset. */
  get attempt(): number {
    return this.#attempt;
  }

  /** The upper bound of the next delay's window. */
  window(): number {
    // 2^30 · base is beyond any sane max; stop the exponent there.
    return Math.min(this.#max, this.#base * 2 ** Math.min(this.#attempt, 30));
  }

  /** The next delay, in whole ms. */
  next(): number {
    const delay = Math.floor(this.#random() * this.window());
    this.#attempt++;
    return delay;
  }

  /** Start over from the smallest window (after a success). */
  reset(): void {
    this.#attempt = 0;
  }
}

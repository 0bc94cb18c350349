/**
 * Where a subscription is in its channel's stream, and what each arriving
 * message means for it.
 *
 * The gateway stamps every channel message with its stream position: an
 * `epoch` (which run of the channel's stream) and an `offset` (1, 2, 3, …
 * within the epoch, without holes). Two positions are kept:
 *
 * - `position`: where to resume. It is sent as `since` when the
 *   subscription is made again (after a reconnect), and the gateway sends
 *   what came after it. It is the last message delivered, or the stream's
 *   position when the subscription was made or failed to recover.
 * - `floor`: the last message delivered on this connection's run of the
 *   subscription; a message at or below it in the same epoch is a
 *   duplicate (dropped), one more than a step above it is a gap.
 *
 * An epoch of `""` means "the channel had no stream yet": any epoch may
 * follow, starting at offset 1.
 */

export interface StreamPosition {
  epoch: string;
  offset: number;
}

/** Why the app may have missed messages (see the `notRecovered` event). */
export type Discontinuity =
  /** The gateway could not recover from `since` (the hub restarted, or the history no longer reaches back that far). */
  | "history"
  /** A message of a new epoch arrived on a live subscription: the stream restarted (a hub failed or restarted), and the old epoch's last messages may be lost. */
  | "epoch_changed"
  /** A message skipped offsets within its epoch: the ones between were lost on the way. */
  | "gap";

export interface Verdict {
  /** False for a duplicate: do not hand it to the app. */
  deliver: boolean;
  /** Set when the message shows that something may be missing before it. */
  discontinuity?: Discontinuity;
}

export class PositionTracker {
  #position: StreamPosition | undefined;
  #floor: StreamPosition | undefined;

  constructor(start?: StreamPosition) {
    this.#position = start ? { ...start } : undefined;
  }

  /** The position to send as `since` (undefined: never known). */
  get position(): StreamPosition | undefined {
    return this.#position ? { ...this.#position } : undefined;
  }

  /** The subscription was made again and recovered from `since`: the messages after it follow. */
  recovered(since: StreamPosition): void {
    this.#floor = { ...since };
    this.#position = { ...since };
  }

  /**
   * The subscription was made without recovery (a first subscribe, or a
   * failed recovery): resume from the stream's current position when the
   * gateway told it, and accept whatever comes next.
   */
  restart(current: StreamPosition | undefined): void {
    this.#floor = undefined;
    if (current) this.#position = { ...current };
  }

  /** Judge a message at (`epoch`, `offset`) and advance. */
  accept(epoch: string, offset: number): Verdict {
    const floor = this.#floor;
    if (floor && floor.epoch === epoch && offset <= floor.offset) return { deliver: false };
    const base = floor ?? this.#position;
    let discontinuity: Discontinuity | undefined;
    if (base) {
      // (`floor` always has an epoch: only `position` can be "".)
      if (base.epoch === "") {
        if (offset > 1) discontinuity = "gap";
      } else if (base.epoch !== epoch) {
        discontinuity = "epoch_changed";
      } else if (offset > base.offset + 1) {
        discontinuity = "gap";
      }
    }
    this.#floor = { epoch, offset };
    const p = this.#position;
    // Never move the resume point backwards within an epoch (messages held
    // back by the gateway during a failed recovery may be older than it).
    if (!p || p.epoch !== epoch || offset > p.offset) this.#position = { epoch, offset };
    return discontinuity ? { deliver: true, discontinuity } : { deliver: true };
  }
}

/**
 * One channel the app subscribed to. The subscription outlives
 * connections: the client makes it again on every new connection, with
 * `since` set to the last position it delivered, so the gateway sends what
 * was missed (or says it cannot, and the app hears `notRecovered`).
 */

import { Emitter } from "./emitter.js";
import { PushmeshError, type ReplyError, TimeoutError } from "./errors.js";
import { type Discontinuity, PositionTracker, type StreamPosition } from "./positions.js";
import type { MessageFrame, ReplyFrame } from "./protocol.js";

export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";

/** A message published to a channel. */
export interface ChannelMessage<T = unknown> {
  channel: string;
  /** Exactly the JSON the backend published. */
  data: T;
  /** The message's stream position (absent only for messages the backend sent without one). */
  epoch?: string;
  offset?: number;
}

export interface SubscribedEvent {
  /** The subscription had a position and asked the gateway for what it missed. */
  recovering: boolean;
  /** It asked, and got everything: the missed messages follow, before live ones. */
  recovered: boolean;
  /** Not the first time: made again after a reconnect (or a retry). */
  resubscribed: boolean;
  /** The channel's position as the gateway saw it, when known. */
  position?: StreamPosition;
}

export interface RecoveredEvent {
  /** The position recovery started from; the messages after it follow. */
  since: StreamPosition;
  /** The channel's position when the gateway answered. */
  position?: StreamPosition;
}

export interface NotRecoveredEvent {
  /** `history`: the gateway could not recover; `epoch_changed`, `gap`: a live message showed a hole. */
  reason: Discontinuity;
  /** The last position the app was consistent with. */
  since?: StreamPosition;
  /** Where the stream is now (what the app reloads up to). */
  position?: StreamPosition;
}

export interface UnsubscribedEvent {
  /** `client`: `unsubscribe()`; `server`: the backend's `POST /unsubscribe`; `refused`: the gateway refused the subscribe for good. */
  reason: "client" | "server" | "refused";
  error?: PushmeshError;
}

/** A `join` or `leave` of the channel (namespaces with `join_leave`). */
export interface PresenceEvent {
  channel: string;
  connection: string;
  user?: string;
}

export interface SubscriptionEvents<T = unknown> {
  subscribed: SubscribedEvent;
  join: PresenceEvent;
  leave: PresenceEvent;
  recovered: RecoveredEvent;
  notRecovered: NotRecoveredEvent;
  message: ChannelMessage<T>;
  error: { error: PushmeshError };
  unsubscribed: UnsubscribedEvent;
}

export interface SubscribeOptions<T = unknown> {
  /** Resume from this position (one the app kept from an earlier run, e.g. `subscription.position`). */
  since?: StreamPosition;
  /** Called for each message, before other `message` listeners. */
  onMessage?: (message: ChannelMessage<T>) => void;
}

/** What a subscription needs from its client. @internal */
export interface SubscriptionHost {
  readonly timeoutMs: number;
  unsubscribe(sub: Subscription<never>, timeoutMs: number): Promise<void>;
}

/** Gateway errors that will not go away by retrying the same subscribe. */
const PERMANENT = new Set(["permission_denied", "invalid_channel", "limit_exceeded", "bad_request", "unknown_op"]);

export class Subscription<T = unknown> extends Emitter<SubscriptionEvents<T>> {
  readonly channel: string;
  #state: SubscriptionState = "subscribing";
  #host: SubscriptionHost;
  #tracker: PositionTracker;
  /** The subscription has a position of its own to recover from (`since` given, or one subscribe done). */
  #baseline: boolean;
  #last: SubscribedEvent | undefined;

  /** @internal Created by `Client.subscribe`. */
  constructor(host: SubscriptionHost, channel: string, options: SubscribeOptions<T> = {}) {
    super();
    this.#host = host;
    this.channel = channel;
    this.#tracker = new PositionTracker(options.since);
    this.#baseline = options.since !== undefined;
    if (options.onMessage) this.on("message", options.onMessage);
  }

  get state(): SubscriptionState {
    return this.#state;
  }

  /** The last position delivered (or the stream's position at subscribe time): keep it to resume later with `since`. */
  get position(): StreamPosition | undefined {
    return this.#tracker.position;
  }

  /**
   * Resolves with the `subscribed` event once the subscription is live
   * (at once if it is); rejects when it ends first or after `timeoutMs`.
   */
  ready(timeoutMs: number = this.#host.timeoutMs): Promise<SubscribedEvent> {
    if (this.#state === "subscribed" && this.#last) return Promise.resolve(this.#last);
    if (this.#state === "unsubscribed") {
      return Promise.reject(new PushmeshError("unsubscribed", `subscription to ${this.channel} has ended`));
    }
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        offSub();
        offEnd();
      };
      const timer = setTimeout(() => {
        done();
        reject(new TimeoutError(`subscribe to ${this.channel}`, timeoutMs));
      }, timeoutMs);
      const offSub = this.on("subscribed", (e) => {
        done();
        resolve(e);
      });
      const offEnd = this.on("unsubscribed", (e) => {
        done();
        reject(e.error ?? new PushmeshError("unsubscribed", `subscription to ${this.channel} ended (${e.reason})`));
      });
    });
  }

  /**
   * Leave the channel. Messages stop at once; the promise resolves when
   * the gateway confirmed (at once when not connected), and rejects after
   * `timeoutMs`.
   */
  unsubscribe(timeoutMs: number = this.#host.timeoutMs): Promise<void> {
    if (this.#state === "unsubscribed") return Promise.resolve();
    return this.#host.unsubscribe(this as Subscription<never>, timeoutMs);
  }

  // ---- driven by the client -------------------------------------------

  /** @internal The `since` to send with the next subscribe. */
  _since(): StreamPosition {
    return this.#tracker.position ?? { epoch: "", offset: 0 };
  }

  /** @internal */
  _setState(state: SubscriptionState): void {
    if (this.#state !== "unsubscribed") this.#state = state;
  }

  /** @internal The gateway accepted a subscribe that carried `since`. */
  _subscribed(reply: ReplyFrame, since: StreamPosition): void {
    const position = reply.epoch !== undefined ? { epoch: reply.epoch, offset: reply.offset ?? 0 } : undefined;
    const resubscribed = this.#last !== undefined;
    const recovering = this.#baseline;
    this.#baseline = true;
    this.#state = "subscribed";
    let recovered = false;
    if (!recovering) {
      // A first subscribe: `since` was the empty position, only to learn
      // where the stream is now (or that it has no messages yet).
      this.#tracker.restart(position ?? { epoch: "", offset: 0 });
    } else if (reply.recovered === true) {
      recovered = true;
      this.#tracker.recovered(since);
    } else if (since.epoch === "" && (position === undefined || position.epoch === "")) {
      // The channel had no messages then and has none now: nothing missed.
      // (The gateway gives no position when the hub has no stream for the
      // channel; it would say the same if no hub answered, but then it
      // could not have confirmed the subscribe either.)
      recovered = true;
      this.#tracker.restart({ epoch: "", offset: 0 });
    } else {
      // Not recovered: resume from where the stream is now (with no
      // stream, from its start).
      this.#tracker.restart(position ?? { epoch: "", offset: 0 });
    }
    const event: SubscribedEvent = position ? { recovering, recovered, resubscribed, position } : { recovering, recovered, resubscribed };
    this.#last = event;
    this.emit("subscribed", event);
    if (!recovering || this.#state !== "subscribed") return;
    if (recovered) {
      this.emit("recovered", position ? { since, position } : { since });
    } else {
      this.emit("notRecovered", position ? { reason: "history", since, position } : { reason: "history", since });
    }
  }

  /** @internal A subscribe was refused; true when it is for good (the subscription has ended). */
  _refused(error: ReplyError | PushmeshError): boolean {
    this.emit("error", { error });
    if (!PERMANENT.has(error.code)) return false;
    this._ended({ reason: "refused", error });
    return true;
  }

  /** @internal A message for this channel. */
  _deliver(frame: MessageFrame): void {
    if (this.#state !== "subscribed") return;
    const message: ChannelMessage<T> = { channel: this.channel, data: frame.data as T };
    if (typeof frame.epoch === "string" && typeof frame.offset === "number") {
      const before = this.#tracker.position;
      const verdict = this.#tracker.accept(frame.epoch, frame.offset);
      if (!verdict.deliver) return;
      message.epoch = frame.epoch;
      message.offset = frame.offset;
      if (verdict.discontinuity) {
        const position = { epoch: frame.epoch, offset: frame.offset };
        this.emit("notRecovered", before ? { reason: verdict.discontinuity, since: before, position } : { reason: verdict.discontinuity, position });
        if (this.#state !== "subscribed") return;
      }
    }
    this.emit("message", message);
  }

  /** @internal A join or leave frame for this channel. */
  _presence(kind: "join" | "leave", event: PresenceEvent): void {
    if (this.#state === "subscribed") this.emit(kind, event);
  }

  /** @internal */
  _ended(event: UnsubscribedEvent): void {
    if (this.#state === "unsubscribed") return;
    this.#state = "unsubscribed";
    this.emit("unsubscribed", event);
  }
}

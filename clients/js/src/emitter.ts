/**
 * Typed events: `on(type, listener)` returns a function that removes the
 * listener. Listeners run synchronously, in the order they were added,
 * over a snapshot (one added or removed during an event takes effect from
 * the next event). A listener that throws does not stop the others or the
 * SDK: its error is reported the way a browser reports an exception in an
 * event handler (`reportError` where the runtime has it; else thrown from a
 * fresh task: the console in a browser, an `uncaughtException` in Node.js).
 */

export type Listener<T> = (event: T) => void;

export class Emitter<Events extends object> {
  #listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Call `listener` on every `type` event; returns a function that removes it. */
  on<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => this.off(type, listener);
  }

  /** Call `listener` on the next `type` event only. */
  once<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(type, (event) => {
      off();
      listener(event);
    });
    return off;
  }

  off<K extends keyof Events>(type: K, listener: Listener<Events[K]>): void {
    this.#listeners.get(type)?.delete(listener as Listener<never>);
  }

  /** @internal */
  emit<K extends keyof Events>(type: K, event: Events[K]): void {
    const set = this.#listeners.get(type);
    if (!set || set.size === 0) return;
    for (const listener of [...set] as Listener<Events[K]>[]) {
      try {
        listener(event);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }

  /** @internal */
  listenerCount<K extends keyof Events>(type: K): number {
    return this.#listeners.get(type)?.size ?? 0;
  }
}

function reportListenerError(err: unknown): void {
  const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
  if (typeof report === "function") {
    report(err);
    return;
  }
  setTimeout(() => {
    throw err;
  }, 0);
}

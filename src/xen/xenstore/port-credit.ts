/**
 * The credit on a domain's XenStore connection (its asynchronous port to the hypervisor).
 * Real xenstored talks to a guest through a 1 KiB request ring and a 1 KiB response ring, so
 * a guest never has more in flight than fits there, and xenstored bounds the watch events it
 * queues for a connection. Here the connection is a MessagePort, which queues without bound
 * on either side, so both directions are counted:
 *
 *   requests      the guest's runtime (trusted code outside the sandbox) posts at most
 *                 XS_REQUESTS_IN_FLIGHT unanswered ones; more wait in order in the guest's own
 *                 heap, which its heap limit bounds.
 *   watch events  the hypervisor posts at most XS_EVENT_WINDOW (and XS_EVENT_WINDOW_BYTES)
 *                 that the guest's runtime has not taken in yet; more wait on the hypervisor's
 *                 side, one per (path, token): a second change at a path still waiting tells
 *                 the watcher nothing new. When XS_EVENT_BACKLOG distinct events (or
 *                 XS_EVENT_BACKLOG_BYTES) wait, a further one is merged into an event at its
 *                 watch's own path ("something changed at or below what you watch"; XenStore
 *                 watchers read the nodes again on any event), so what waits stays below the
 *                 backlog plus the domain's watch quota, and no change goes unsaid. Counted in
 *                 events only, a guest watching paths of 3,000 characters had ~9 MB of the
 *                 host's memory waiting for it (1,280 events of ~7 KB).
 *
 * One word of a SharedArrayBuffer the hypervisor makes per domain, written by the guest's
 * runtime only:
 *   XS_TAKEN  watch events the runtime has taken off its port (mod 2^32)
 */

/** Bytes of a domain's XenStore credit buffer. */
export const XS_CREDIT_BYTES = 4;
/** Int32 word: watch events the guest's runtime has taken in. */
export const XS_TAKEN = 0;
/** Requests a guest's runtime has posted and not yet had answered, at most. */
export const XS_REQUESTS_IN_FLIGHT = 32;
/** Watch events posted to a domain and not yet taken in, at most. */
export const XS_EVENT_WINDOW = 256;
/** Distinct watch events waiting for a domain before new ones are merged per watch. */
export const XS_EVENT_BACKLOG = 1024;
/** Characters of watch events (path and token) posted to a domain and not yet taken in, at most (one event always may go). */
export const XS_EVENT_WINDOW_BYTES = 64 * 1024;
/** Characters of distinct watch events waiting for a domain before new ones are merged per watch. */
export const XS_EVENT_BACKLOG_BYTES = 256 * 1024;

/** What a watch event costs the windows: its path and token. */
function eventSize(path: string, token: string): number {
  return path.length + token.length;
}
/** How often the hypervisor looks again whether a domain with events waiting took some (ms). */
const RECHECK_MS = 10;

/** A watch event on its way to a domain. */
export interface XsWatchEvent {
  kind: "watch";
  path: string;
  token: string;
}

/** The guest's side: count one watch event taken off the port. */
export function takeWatchEvent(credit: Int32Array): void {
  Atomics.add(credit, XS_TAKEN, 1);
}

/**
 * The hypervisor's side for one domain: posts watch events while the domain's window has room,
 * keeps the rest (bounded, see above) and posts them as the domain takes what it has.
 */
export class WatchEventSender {
  readonly #taken: Int32Array;
  readonly #post: (event: XsWatchEvent) => void;
  readonly #onMerged: () => void;
  /** Events posted so far (mod 2^32, as the guest's count). */
  #posted = 0;
  /** Sizes of the events posted and not known taken, oldest first, and their sum. */
  readonly #postedSizes: number[] = [];
  #inFlightBytes = 0;
  #waitingBytes = 0;
  /** Waiting events by token and path, oldest first. */
  readonly #waiting = new Map<string, XsWatchEvent>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(
    credit: SharedArrayBuffer,
    post: (event: XsWatchEvent) => void,
    onMerged: () => void = () => {},
  ) {
    this.#taken = new Int32Array(credit);
    this.#post = post;
    this.#onMerged = onMerged;
  }

  /** Events posted and not yet taken in. */
  get inFlight(): number {
    return (this.#posted - Atomics.load(this.#taken, XS_TAKEN)) | 0;
  }

  /** Events waiting on this side. */
  get waiting(): number {
    return this.#waiting.size;
  }

  /** Characters of the events posted and not yet taken in (as of the last post or look). */
  get inFlightBytes(): number {
    this.#forgetTaken();
    return this.#inFlightBytes;
  }

  /** Characters of the events waiting on this side. */
  get waitingBytes(): number {
    return this.#waitingBytes;
  }

  /** A change at `path` for the domain's watch on `watchPath` with `token`. */
  send(path: string, token: string, watchPath: string): void {
    if (this.#closed) return;
    if (this.#waiting.size === 0 && this.#hasRoom(eventSize(path, token))) {
      this.#postOne({ kind: "watch", path, token });
      return;
    }
    let key = `${token}\0${path}`;
    if (
      !this.#waiting.has(key) &&
      (this.#waiting.size >= XS_EVENT_BACKLOG ||
        this.#waitingBytes + eventSize(path, token) > XS_EVENT_BACKLOG_BYTES)
    ) {
      key = `${token}\0${watchPath}`;
      path = watchPath;
      this.#onMerged();
    }
    if (!this.#waiting.has(key)) {
      this.#waiting.set(key, { kind: "watch", path, token });
      this.#waitingBytes += eventSize(path, token);
    }
    this.#timer ??= setTimeout(() => this.#flush(), RECHECK_MS).unref();
  }

  /** The domain is gone: nothing more is posted, what waits is dropped. */
  close(): void {
    this.#closed = true;
    this.#waiting.clear();
    this.#waitingBytes = 0;
    this.#postedSizes.length = 0;
    this.#inFlightBytes = 0;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #hasRoom(size: number): boolean {
    // A runtime that counted more than it was sent is not trusted with more room.
    const n = this.inFlight;
    if (n < 0 || n >= XS_EVENT_WINDOW) return false;
    this.#forgetTaken();
    return n === 0 || this.#inFlightBytes + size <= XS_EVENT_WINDOW_BYTES;
  }

  /** Drops the sizes of the events the runtime has taken in (the oldest posted). */
  #forgetTaken(): void {
    const n = this.inFlight;
    if (n < 0) return;
    while (this.#postedSizes.length > n) this.#inFlightBytes -= this.#postedSizes.shift()!;
  }

  #postOne(event: XsWatchEvent): void {
    this.#posted = (this.#posted + 1) | 0;
    const size = eventSize(event.path, event.token);
    this.#postedSizes.push(size);
    this.#inFlightBytes += size;
    this.#post(event);
  }

  #flush(): void {
    this.#timer = undefined;
    if (this.#closed) return;
    for (const [key, event] of this.#waiting) {
      if (!this.#hasRoom(eventSize(event.path, event.token))) break;
      this.#waiting.delete(key);
      this.#waitingBytes -= eventSize(event.path, event.token);
      this.#postOne(event);
    }
    if (this.#waiting.size > 0) this.#timer = setTimeout(() => this.#flush(), RECHECK_MS).unref();
  }
}

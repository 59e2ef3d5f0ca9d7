/**
 * Meters what a guest holds outside its JavaScript heap: the ArrayBuffers and typed arrays its
 * isolate allocated (`process.memoryUsage().arrayBuffers` in the guest's thread). V8's heap
 * limit (`maxHeapMb`) does not count them, the sandbox cannot meter them (any typed array's
 * prototype leads to the real constructors), and Node 20 gives one thread no statistics of
 * another's isolate. What it does give is the inspector: a message to a worker's inspector
 * session is run at the worker's next interrupt check, even while the guest spins or sleeps
 * in Atomics.wait. So the hypervisor, which owns the domain, asks each guest's isolate every
 * WATCH_INTERVAL_MS and stops a domain that holds more than its limit (a guest that only
 * allocates without touching costs the host nothing; one that fills memory gains at most what
 * it can write in one interval, about 1–2 GB here).
 *
 * The answer comes from the guest's own thread, but from the host's code in its main realm,
 * which the guest's compartment cannot reach or rewrite (guest/sandbox.ts).
 *
 * A question's id is what V8's inspector takes: an int32. The ids went on growing, one per
 * guest every WATCH_INTERVAL_MS, and once past 2^31 - 1 (weeks for a host with a few dozen
 * guests) every question was refused with an error naming no id: the guest asked stayed
 * "asking" for good, so no guest was metered again and one over its maxBufferMb kept all it
 * held. Now ids wrap below 2^31, skipping ones still waiting; an error answer counts as an
 * answer, and a question not answered within ANSWER_DEADLINE_MS is asked again (an answer to
 * one of a guest's last MAX_OPEN_QUESTIONS still counts when it comes).
 *
 * `arrayBuffers` counts what Node's allocator handed out. V8 allocates buffers that can grow
 * (resizable ArrayBuffers, growable SharedArrayBuffers) itself, where no figure of Node 20's
 * counts them, so a guest's realm cannot make or grow them (guest/fixed-length-buffers.ts).
 */
import type { Session } from "node:inspector";

/** How often each guest's isolate is asked, ms. */
export const WATCH_INTERVAL_MS = 200;
/** A question not answered in this long is asked again, ms. */
export const ANSWER_DEADLINE_MS = 5_000;
/** Questions one guest may have unanswered; past it, its oldest is given up. */
const MAX_OPEN_QUESTIONS = 4;
/** The largest id V8's inspector takes (an int32); ids wrap to 1 after it. */
export const MAX_QUESTION_ID = 0x7fffffff;

interface Watched {
  limitBytes: number;
  over: (heldBytes: number) => void;
  /** The worker's inspector session, once NodeWorker reported it. */
  sessionId?: string;
  asking: boolean;
  /** When the last question went, ms (Date.now()). */
  askedAt: number;
  /** Ids of its questions not answered yet, oldest first (at most MAX_OPEN_QUESTIONS). */
  open: number[];
  /** The last answer, bytes (for inspection and tests). */
  held: number;
  /** The JavaScript heap in use at the last answer, bytes (shown, not metered: V8 keeps its limit). */
  heap: number;
}

/** The expression each guest's main realm evaluates (trusted code of the host's runtime, not the guest's). */
const ASK = "(m => [m.arrayBuffers, m.heapUsed])(process.memoryUsage())";

export class BufferWatch {
  private session: Session | undefined;
  private starting: Promise<void> | undefined;
  private unavailable = false;
  private readonly watched = new Map<string, Watched>();
  /** Sessions NodeWorker announced for workers not (yet) watched: the announcement may come first. */
  private readonly sessions = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  private nextId: number;
  private readonly pending = new Map<number, string>();

  /** `firstId`: the first question's id (1; a test starts it near the wrap). */
  constructor(
    private readonly warn: (msg: string) => void,
    firstId = 1,
  ) {
    this.nextId = Number.isInteger(firstId) && firstId >= 1 && firstId <= MAX_QUESTION_ID ? firstId : 1;
  }

  /** A question id in 1..MAX_QUESTION_ID that no question waiting has. */
  private takeId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = id >= MAX_QUESTION_ID ? 1 : id + 1;
      if (!this.pending.has(id)) return id;
    }
  }

  /** Questions unanswered now, over every guest (at most MAX_OPEN_QUESTIONS each). */
  get waiting(): number {
    return this.pending.size;
  }

  /** Watches the worker with this threadId; `over` is called once if it holds more than `limitBytes`. */
  watch(threadId: number, limitBytes: number, over: (heldBytes: number) => void): void {
    const key = String(threadId);
    this.watched.set(key, {
      limitBytes,
      over,
      asking: false,
      askedAt: 0,
      open: [],
      held: 0,
      heap: 0,
      sessionId: this.sessions.get(key),
    });
    void this.start();
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.poll(), WATCH_INTERVAL_MS);
      this.timer.unref();
    }
  }

  unwatch(threadId: number): void {
    const key = String(threadId);
    this.watched.delete(key);
    this.sessions.delete(key);
    // A question its worker will never answer now: a host runs for weeks, domain after domain.
    for (const [id, k] of this.pending) if (k === key) this.pending.delete(id);
    if (this.watched.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /**
   * What the guest's isolate last reported, bytes (0 before its first answer): its typed
   * arrays, and its JavaScript heap in use (garbage included; shown, not metered).
   */
  held(threadId: number): { buffers: number; heap: number } {
    const w = this.watched.get(String(threadId));
    return { buffers: w?.held ?? 0, heap: w?.heap ?? 0 };
  }

  close(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.watched.clear();
    this.sessions.clear();
    this.session?.disconnect();
    this.session = undefined;
  }

  private start(): Promise<void> {
    this.starting ??= (async () => {
      try {
        const { Session } = await import("node:inspector");
        const s = new Session();
        s.connect();
        s.on("NodeWorker.attachedToWorker", (m) => {
          const p = m.params as { sessionId: string; workerInfo: { workerId: string } };
          this.sessions.set(p.workerInfo.workerId, p.sessionId);
          const w = this.watched.get(p.workerInfo.workerId);
          if (w) w.sessionId = p.sessionId;
        });
        s.on("NodeWorker.detachedFromWorker", (m) => {
          const p = m.params as { sessionId: string };
          for (const [k, v] of this.sessions) if (v === p.sessionId) this.sessions.delete(k);
        });
        s.on("NodeWorker.receivedMessageFromWorker", (m) => this.onAnswer(m.params as { message: string }));
        s.post("NodeWorker.enable", { waitForDebuggerOnStart: false }, (e) => {
          if (e) this.disable(`NodeWorker.enable: ${e.message}`);
        });
        this.session = s;
      } catch (e) {
        this.disable((e as Error).message);
      }
    })();
    return this.starting;
  }

  private disable(why: string): void {
    if (this.unavailable) return;
    this.unavailable = true;
    this.warn(
      `guests' ArrayBuffers are not metered on this host (Node's inspector is not available: ${why}); only their heap limit binds them`,
    );
  }

  private poll(): void {
    const s = this.session;
    if (s === undefined || this.unavailable) return;
    const now = Date.now();
    for (const [key, w] of this.watched) {
      if (w.sessionId === undefined) continue;
      if (w.asking && now - w.askedAt < ANSWER_DEADLINE_MS) continue;
      // (Unanswered past the deadline: asked again; a late answer to its last few still counts.)
      while (w.open.length >= MAX_OPEN_QUESTIONS) this.pending.delete(w.open.shift()!);
      w.asking = true;
      w.askedAt = now;
      const id = this.takeId();
      this.pending.set(id, key);
      w.open.push(id);
      const message = JSON.stringify({
        id,
        method: "Runtime.evaluate",
        params: { expression: ASK, returnByValue: true },
      });
      s.post("NodeWorker.sendMessageToWorker", { sessionId: w.sessionId, message }, (e) => {
        // The worker went away meanwhile: nothing to ask any more.
        if (e) {
          this.answered(w, id);
          w.asking = false;
        }
      });
    }
  }

  /** Question `id` of `w` is answered (or given up). */
  private answered(w: Watched, id: number): void {
    this.pending.delete(id);
    const i = w.open.indexOf(id);
    if (i >= 0) w.open.splice(i, 1);
  }

  private onAnswer(p: { message: string }): void {
    let m: { id?: number; result?: { result?: { value?: unknown } } };
    try {
      m = JSON.parse(p.message);
    } catch {
      return;
    }
    if (typeof m.id !== "number") return;
    const key = this.pending.get(m.id);
    if (key === undefined) return;
    const w = this.watched.get(key);
    if (!w) {
      this.pending.delete(m.id);
      return;
    }
    this.answered(w, m.id);
    // An error answer (no result) is an answer too: the guest is asked again at the next look.
    w.asking = false;
    const a = m.result?.result?.value;
    if (!Array.isArray(a) || !Number.isFinite(a[0]) || !Number.isFinite(a[1])) return;
    const v = a[0] as number;
    w.held = v;
    w.heap = a[1] as number;
    if (v > w.limitBytes) {
      this.unwatch(Number(key));
      w.over(v);
    }
  }
}

/**
 * The xenbus steps of a synchronous frontend (myrifront, netfront): XenStore reads, writes,
 * transactions and waits for the peer's state through Guest.xenstoreSync. Peer states are
 * polled with short, growing naps instead of watched: a watch needs the event loop, which a
 * synchronous mx_init does not give back.
 */
import { type XenbusState, xenbusStateName } from "./abi.js";
import type { Guest } from "./guest/guest.js";
import { parseXenbusState } from "./xenbus.js";
import { XenStoreError, type XenStoreRequest } from "./xenstore.js";

export class SyncXenbus {
  private readonly nap = new Int32Array(new SharedArrayBuffer(4));

  constructor(
    private readonly guest: Guest,
    private readonly timeoutMs: number,
  ) {}

  private call(req: XenStoreRequest): unknown {
    return this.guest.xenstoreSync(req, this.timeoutMs);
  }

  tryRead(path: string, tx?: number): string | undefined {
    try {
      return this.call({ op: "read", path, tx }) as string;
    } catch (e) {
      // A directory that does not exist yet may sit under one we cannot read: EACCES.
      if (XenStoreError.is(e, "ENOENT") || XenStoreError.is(e, "EACCES")) return undefined;
      throw e;
    }
  }

  write(path: string, value: string, tx?: number): void {
    this.call({ op: "write", path, value, tx });
  }

  directory(path: string): string[] {
    return this.call({ op: "directory", path }) as string[];
  }

  transaction(body: (tx: number) => void): void {
    for (let attempt = 0; ; attempt++) {
      const tx = this.call({ op: "txStart" }) as number;
      try {
        body(tx);
      } catch (e) {
        try {
          this.call({ op: "txEnd", tx, commit: false });
        } catch {
          // the transaction is gone either way
        }
        throw e;
      }
      try {
        this.call({ op: "txEnd", tx, commit: true });
        return;
      } catch (e) {
        if (!XenStoreError.is(e, "EAGAIN") || attempt >= 16) throw e;
      }
    }
  }

  /** Writes `<dir>/state` unless the directory is gone (a torn-down device is not resurrected). */
  switchState(dir: string, state: XenbusState): void {
    this.transaction((tx) => {
      const cur = this.tryRead(`${dir}/state`, tx);
      if (cur !== undefined && cur !== String(state)) this.write(`${dir}/state`, String(state), tx);
    });
  }

  /** Polls `<dir>/state` until it is one of `want`; throws if it becomes one of `failOn` or time runs out. */
  waitState(
    dir: string,
    want: readonly XenbusState[],
    failOn: readonly XenbusState[],
    who: string,
  ): XenbusState {
    const deadline = performance.now() + this.timeoutMs;
    let napMs = 0.1;
    for (;;) {
      const raw = this.tryRead(`${dir}/state`);
      const s = parseXenbusState(raw);
      if (want.includes(s)) return s;
      if (failOn.includes(s)) throw new Error(`the ${who} at ${dir} went ${xenbusStateName(s)}`);
      if (performance.now() > deadline)
        throw new Error(
          `timed out after ${this.timeoutMs} ms waiting for the ${who} state ${dir}/state to become ` +
            `${want.map(xenbusStateName).join(" or ")}; last seen: ${raw === undefined ? "nothing" : xenbusStateName(s)}`,
        );
      Atomics.wait(this.nap, 0, 0, napMs);
      napMs = Math.min(napMs * 2, 5);
    }
  }
}

/**
 * The library's side of its exposure table (nic/window.ts): pull rights for its rendezvous
 * sends, one per message. A rendezvous names an entry armed for that one message — the
 * message's range of a registered region and a fresh random key — never the region's own
 * key: the NIC lets the receiver pull it once, and the library revokes it when the send
 * ends. The entry's words are the library's to write while Free; the NIC takes an Armed
 * entry with a compare-and-swap (Busy) while it copies, and lets go of it after.
 */
import { getRandomValues } from "node:crypto";
import {
  EXPOSURE_ENTRIES,
  EXPOSURE_OFFSET,
  EXPOSURE_WORDS,
  ExposureState,
  X_KEY,
  X_LENGTH,
  X_OFFSET,
  X_REGION,
  X_STATE,
} from "../nic/window.js";
import type { MxRequest } from "./types.js";

export class PullRights {
  private readonly table: Int32Array;
  /** Free entries, a stack. */
  private readonly free = new Int32Array(EXPOSURE_ENTRIES);
  private freeCount = EXPOSURE_ENTRIES;
  /** Keys drawn 64 at a time (one getRandomValues per 64 messages). */
  private readonly keys = new Uint32Array(64);
  private keyAt = 64;

  constructor(window: SharedArrayBuffer) {
    this.table = new Int32Array(window, EXPOSURE_OFFSET, EXPOSURE_ENTRIES * EXPOSURE_WORDS);
    for (let i = 0; i < EXPOSURE_ENTRIES; i++) this.free[i] = EXPOSURE_ENTRIES - 1 - i;
  }

  /**
   * Arms a pull right for the rendezvous send's registered data (once; it stays armed while
   * the record waits for room). false: every entry is in use, the send waits.
   */
  /** Rights armed and not yet given back: rendezvous of ours the NIC may be pulling. */
  get armed(): number {
    return EXPOSURE_ENTRIES - this.freeCount;
  }

  expose(req: MxRequest): boolean {
    if (req.xp >= 0) return true;
    if (this.freeCount === 0) return false;
    // Regions.prepareSend registered the data (the cache entry may cover more: the right does not).
    const r = req.reg;
    if (r === undefined) throw new Error("a rendezvous send is exposed only once its data is registered");
    const i = this.free[--this.freeCount];
    const x = this.table;
    const b = i * EXPOSURE_WORDS;
    // In window.ts's order: the range, a fresh key, then the state that makes it takeable.
    Atomics.store(x, b + X_REGION, r.regionId);
    Atomics.store(x, b + X_OFFSET, (req.bounce ?? req.buffer).byteOffset - r.start);
    Atomics.store(x, b + X_LENGTH, req.buffer.length);
    Atomics.store(x, b + X_KEY, this.freshKey());
    Atomics.store(x, b + X_STATE, ExposureState.Armed);
    req.xp = i;
    return true;
  }

  /** The key of the send's armed right (what its rendezvous record carries). */
  keyOf(req: MxRequest): number {
    return this.table[req.xp * EXPOSURE_WORDS + X_KEY];
  }

  /**
   * Revokes the send's right as the send ends: true if it is free now; false if the NIC is
   * copying under it (it is marked Revoking: the NIC lets go when the copy is over, and
   * `released` says so).
   */
  revoke(req: MxRequest): boolean {
    const at = req.xp * EXPOSURE_WORDS + X_STATE;
    let st = Atomics.compareExchange(this.table, at, ExposureState.Armed, ExposureState.Free);
    if (st === ExposureState.Busy)
      st = Atomics.compareExchange(this.table, at, ExposureState.Busy, ExposureState.Revoking);
    if (st === ExposureState.Busy || st === ExposureState.Revoking) return false;
    this.release(req);
    return true;
  }

  /** A revoked right the NIC has let go of is freed (true); false while it still copies. */
  released(req: MxRequest): boolean {
    const st = Atomics.load(this.table, req.xp * EXPOSURE_WORDS + X_STATE);
    if (st === ExposureState.Busy || st === ExposureState.Revoking) return false;
    this.release(req);
    return true;
  }

  private release(req: MxRequest): void {
    const b = req.xp * EXPOSURE_WORDS;
    Atomics.store(this.table, b + X_STATE, ExposureState.Free);
    Atomics.store(this.table, b + X_KEY, 0);
    this.free[this.freeCount++] = req.xp;
    req.xp = -1;
  }

  /** A nonzero random key. */
  private freshKey(): number {
    let k = 0;
    while (k === 0) {
      if (this.keyAt === this.keys.length) {
        getRandomValues(this.keys);
        this.keyAt = 0;
      }
      k = this.keys[this.keyAt++];
    }
    return k;
  }
}

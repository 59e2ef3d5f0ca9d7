/**
 * An endpoint's message memory, as Open-MX's omx_large.c: where a rendezvous send's data and
 * a pulled receive's target are registered (the registration cache, regcache.ts), the bounce
 * buffers that stand in for memory outside the domain, and `alloc`/`free` of message buffers.
 * A request holds its registration and its bounce buffer while in flight; `release` gives
 * them back as it completes.
 */
import type { MxDriver } from "../myrixen/driver-abi.js";
import { copyBytes } from "../xen/copy.js";
import { asMxError, MxError } from "./codes.js";
import { BouncePool, MEMORY_KNOB, RegCache, type RegEntry, type RegLimits, regLimits } from "./regcache.js";
import type { EndpointCounters, MxRequest } from "./types.js";

export class Regions {
  private readonly regs: RegCache;
  private readonly bounces: BouncePool;
  /** The driver registers memory with a NIC (the split driver has nothing to register). */
  private readonly registers: boolean;
  /**
   * The buffers alloc handed out that free has not taken back, each with a view of the same
   * memory made at alloc (what free gives back: not what the caller's object now claims).
   * The endpoint's close frees what is left: a program that opened, allocated and closed in a
   * loop without freeing ran out of its domain's memory (a soak: 157 rounds in 1 MiB).
   */
  private readonly handedOut = new Map<object, Uint8Array>();
  /** Buffers the endpoint's close freed: a free of one afterwards does nothing. */
  private readonly freedAtClose = new WeakSet<object>();

  constructor(
    private readonly driver: MxDriver,
    endpointId: number,
    /** This domain's memory: buffers in it are registered in place; others are bounce-copied. */
    private readonly memory: SharedArrayBuffer | undefined,
    private readonly counters: EndpointCounters,
  ) {
    const limits = regLimits(memory?.byteLength ?? 64 << 20);
    this.regs = new RegCache(driver, endpointId, limits, counters);
    this.bounces = new BouncePool(driver, this.regs, limits.bouncePoolBytes, counters);
    this.registers = driver.path !== "split";
  }

  /** The bounds of the registration cache and bounce pool. */
  get limits(): RegLimits {
    return this.regs.limits;
  }

  /** The domain's memory in bytes (64 MiB when unknown). */
  get ramBytes(): number {
    return this.memory?.byteLength ?? 64 << 20;
  }

  private inMemory(bytes: Uint8Array): boolean {
    return this.memory !== undefined && bytes.buffer === this.memory;
  }

  /**
   * A rendezvous send's data in registered memory of this domain (bounce-copied if it is not
   * there), held until the send completes. false: it cannot be had (`req.reason` says why).
   */
  prepareSend(req: MxRequest): boolean {
    try {
      if (!this.inMemory(req.buffer)) {
        req.bounce = this.bounces.take(req.buffer.length);
        copyBytes(req.bounce, 0, req.buffer, 0, req.buffer.length);
        this.counters.bounces++;
      }
      if (this.registers) req.reg = this.regs.acquire(req.bounce ?? req.buffer);
      return true;
    } catch (e) {
      req.reason = `isend of ${req.buffer.length} bytes: ${(e as Error).message}`;
      return false;
    }
  }

  /**
   * Where a pull of `xfer` bytes lands: the receive buffer, or a bounce buffer standing in
   * for it, registered and held until the receive completes. undefined: it cannot be had
   * (`req.reason` says why).
   */
  pullTarget(req: MxRequest, xfer: number): RegEntry | undefined {
    try {
      if (!this.inMemory(req.buffer)) {
        req.bounce = this.bounces.take(xfer);
        this.counters.bounces++;
      }
      req.reg = this.regs.acquire(req.bounce ?? req.buffer);
      return req.reg;
    } catch (e) {
      req.reason = `receiving ${xfer} bytes: ${(e as Error).message}`;
      return undefined;
    }
  }

  /** The request completes with `xfer` bytes: its registration and bounce buffer go back (a receive's data copied out first). */
  release(req: MxRequest, xfer: number): void {
    if (req.reg !== undefined) {
      this.regs.release(req.reg);
      req.reg = undefined;
    }
    const bounce = req.bounce;
    if (bounce !== undefined) {
      // A receive whose buffer was resized or detached meanwhile gets nothing (completion.ts aborts it).
      if (req.kind === "recv" && xfer > 0 && xfer <= req.buffer.length)
        copyBytes(req.buffer, 0, bounce, 0, xfer);
      this.bounces.give(bounce);
      req.bounce = undefined;
    }
  }

  /** Gives back idle registrations or a pooled bounce buffer (memory is short elsewhere); false if none. */
  shrink(): boolean {
    return this.regs.evictIdle() || this.bounces.shrink();
  }

  /** Memory for message buffers: in this domain's memory, so large messages need no bounce copy. */
  alloc(length: number): Uint8Array {
    if (!Number.isInteger(length) || length < 0)
      throw new MxError(
        "MX_BAD_PARAM_VAL",
        `alloc: length must be a non-negative integer, got ${String(length)}`,
      );
    if (length === 0) return this.handOut(new Uint8Array(0));
    for (;;) {
      try {
        return this.handOut(this.driver.allocBuffer(length));
      } catch (e) {
        // Idle bounce buffers give their memory back before the program is told no.
        if (this.bounces.shrink()) continue;
        const m = asMxError(e, "MX_NO_RESOURCES");
        throw new MxError(
          m.codeName,
          `alloc(${length}): ${m.message.replace(/^MX_[A-Z_]+: /, "").replace(/; give the domain more pages.*$/, "")}; ${MEMORY_KNOB}`,
        );
      }
    }
  }

  private handOut(b: Uint8Array): Uint8Array {
    this.handedOut.set(b, new Uint8Array(b.buffer, b.byteOffset, b.length));
    return b;
  }

  /** Gives back a buffer alloc handed out (once): MX_BAD_SEG_MEM for anything else. */
  free(buffer: Uint8Array): void {
    const obj = typeof buffer === "object" && buffer !== null ? buffer : undefined;
    const own = obj === undefined ? undefined : this.handedOut.get(obj);
    if (own === undefined) {
      // Freed by the endpoint's close: a free afterwards does nothing (once).
      if (obj !== undefined && this.freedAtClose.delete(obj)) return;
      throw new MxError(
        "MX_BAD_SEG_MEM",
        "free: not a buffer that alloc on this endpoint handed out, or one already freed; pass the very Uint8Array alloc returned, once",
      );
    }
    this.handedOut.delete(buffer);
    if (own.length === 0) return;
    // Nothing stays registered in memory that goes back to the allocator.
    this.regs.drop(own.buffer, own.byteOffset, own.byteOffset + own.length);
    try {
      this.driver.freeBuffer(own);
    } catch (e) {
      throw asMxError(e, "MX_BAD_SEG_MEM");
    }
  }

  /**
   * The endpoint closed (which released its registrations): the bounce buffers, and the
   * buffers alloc handed out that free did not take back, go back to memory.
   */
  close(): void {
    this.regs.clear();
    this.bounces.drain(false);
    for (const [given, own] of this.handedOut) {
      this.freedAtClose.add(given);
      if (own.length === 0) continue;
      try {
        this.driver.freeBuffer(own);
      } catch {
        // Not the driver's any more (its memory went with the domain's teardown): nothing to give back.
      }
    }
    this.handedOut.clear();
  }
}

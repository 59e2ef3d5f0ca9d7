/**
 * What a guest program gets: `main(guest)` receives a `Guest`, its whole world. Through it,
 * and only through it, a domain reaches its own memory, its grant table, its event channels,
 * XenStore and the host. It holds no reference to another domain's memory unless a grant
 * was mapped for it (or, for the privileged domain, the hypervisor handed it foreign access).
 *
 * Guest programs run sandboxed (sandbox.ts) and hold these objects, so nothing reachable from
 * them may lead to a Node object or to state the hypervisor relies on: ports, the hypercall
 * client, counter blocks and callbacks into the runtime are JS #private fields (TypeScript's
 * `private` is readable at run time). What a guest may do is public: `hypercall` is the trap
 * into the hypervisor, which checks every request.
 */
import { type MessagePort, receiveMessageOnPort } from "node:worker_threads";
import { DOMID_MAX, type DomId, type EvtchnPort, GNTST, PAGE_SIZE } from "../abi.js";
import { CounterBlock, type CounterSnapshot, CounterWriter, readCounters } from "../counters.js";
import { type EvtchnHypercalls, GuestEventChannels, type PortGrant } from "../event-channel.js";
import {
  acquireGrant,
  executeGrantCopy,
  type FrameLocation,
  GRANT_READ_MAX,
  type GrantCopyOp,
  GrantError,
  type GrantingDomain,
  type GrantResult,
  GuestGrantTable,
  releaseGrant,
  segmentGeneration,
} from "../grant-table.js";
import {
  type AsyncToGuest,
  type AsyncToHypervisor,
  HypercallClient,
  type HypercallRequest,
} from "../hypercall.js";
import type { GuestBootData } from "../hypervisor.js";
import { GuestMemory, type PageRun } from "../memory.js";
import { reclaimSoon } from "../reclaim.js";
import { SyncCallClient, SyncCallFailed } from "../sync-call.js";
import { wireFlat } from "../wire-values.js";
import { takeWatchEvent, XS_REQUESTS_IN_FLIGHT } from "../xenstore/port-credit.js";
import {
  RequestXenStoreClient,
  XenStoreError,
  type XenStoreRequest,
  xenStoreRequestOnWire,
} from "../xenstore.js";

/**
 * Pages of another domain, mapped through grants. A writable mapping is the granter's whole
 * shared segment (`bytes`); a read-only one holds no memory at all: `read`/`readInto` ask
 * the hypervisor for a copy, checked against the grant as it stands at that moment.
 */
export class GrantMapping {
  readonly #bytes: Uint8Array | undefined;
  readonly #read: ((offset: number, length: number) => Uint8Array) | undefined;

  constructor(
    readonly domid: DomId,
    readonly ref: number,
    readonly handle: number,
    readonly readonly: boolean,
    bytes: Uint8Array | undefined,
    read?: (offset: number, length: number) => Uint8Array,
    /** All the grant refs this mapping covers, in order. */
    readonly refs: readonly number[] = [ref],
  ) {
    this.#bytes = bytes;
    this.#read = read;
  }

  /** The mapped pages (writable mappings only; a read-only mapping offers `read`/`readInto`). */
  get bytes(): Uint8Array {
    if (this.readonly || !this.#bytes)
      throw new GrantError(
        `grant ref ${this.ref} of domain ${this.domid} is mapped read-only; use read() or readInto()`,
      );
    return this.#bytes;
  }

  /** A copy of `length` bytes at `offset`. */
  read(offset = 0, length = this.refs.length * PAGE_SIZE - offset): Uint8Array {
    if (this.#read) return this.#read(offset, length);
    return this.#bytes!.slice(offset, offset + length);
  }

  readInto(dst: Uint8Array, offset = 0): void {
    dst.set(this.read(offset, dst.length));
  }
}

export type MapResult = { status: 0; mapping: GrantMapping } | { status: number; error: string };

export interface PinnedFrames {
  status: number;
  error?: string;
  frames: FrameLocation[];
}

interface ForeignInfo {
  domid: DomId;
  ram: SharedArrayBuffer;
  nrPages: number;
  table: SharedArrayBuffer;
  shadow: SharedArrayBuffer;
}

/** Frames [first, end) above a domain's RAM: one of its segments (with `buffer`), or frames no segment holds. */
interface ForeignRun {
  first: number;
  end: number;
  buffer?: SharedArrayBuffer;
}

/**
 * The privileged domain's view of one domain, for in-place grant checks and copies: its RAM
 * and grant table, and what it learned of the frames above RAM, one foreign_frame hypercall a
 * run (a segment, or a run of frames no segment holds), kept only while the domain's segment
 * generation (grant-table.ts segmentGeneration) stays the same. So a grant naming a frame that
 * is not memory costs at most one hypercall answering with one run, whatever the guest does,
 * and none while its segments do not change; a frame already looked up costs one atomic load
 * and a binary search; and a released segment stops resolving as soon as the hypervisor took
 * it out, not when a message about it arrives. (Before, every frame above what dom0 had seen
 * fetched the guest's whole segment list: ~80 ms a check at 16,000 one-page segments, and a
 * guest filling its vif's TX ring with grants of frame 0xfffffff0 cost netback seconds a pass.)
 */
class ForeignView implements GrantingDomain {
  readonly domid: DomId;
  readonly entries: Uint32Array;
  readonly shadow: Int32Array;
  readonly #info: ForeignInfo;
  readonly #guest: Guest;
  /** Runs learned in generation #gen, in frame order, disjoint. */
  #runs: ForeignRun[] = [];
  #gen: number;

  constructor(guest: Guest, info: ForeignInfo) {
    this.#guest = guest;
    this.#info = info;
    this.domid = info.domid;
    this.entries = new Uint32Array(info.table);
    this.shadow = new Int32Array(info.shadow);
    this.#gen = segmentGeneration(this.shadow);
  }

  frame(pfn: number): FrameLocation | undefined {
    const info = this.#info;
    // Frame numbers are 32 bits (a grant entry's word): above that, nothing to ask.
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= 2 ** 32) return undefined;
    if (pfn < info.nrPages) return { buffer: info.ram, offset: pfn * PAGE_SIZE, shareable: false };
    const gen = segmentGeneration(this.shadow);
    if (gen !== this.#gen) this.#forget(gen);
    let at = this.#find(pfn);
    if (at < 0) {
      let r: ForeignRun & { gen: number };
      try {
        r = this.#guest.hypercall<ForeignRun & { gen: number }>({
          op: "foreign_frame",
          domid: this.domid,
          pfn,
        });
      } catch {
        return undefined;
      }
      // The answer is the domain as of r.gen (the hypervisor serves one request at a time).
      if (r.gen !== this.#gen) this.#forget(r.gen);
      at = -1 - this.#find(pfn);
      this.#runs.splice(at, 0, { first: r.first, end: r.end, buffer: r.buffer });
    }
    const run = this.#runs[at];
    return run.buffer && { buffer: run.buffer, offset: (pfn - run.first) * PAGE_SIZE, shareable: true };
  }

  /** Lets go of every run learned (and the buffers they hold). */
  forget(): void {
    this.#runs = [];
  }

  #forget(gen: number): void {
    this.#runs = [];
    this.#gen = gen;
  }

  /** The index of the run holding `pfn`, or `-1 - i` where `i` is where it would go. */
  #find(pfn: number): number {
    const runs = this.#runs;
    let lo = 0;
    let hi = runs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (pfn < runs[mid].first) hi = mid - 1;
      else if (pfn >= runs[mid].end) lo = mid + 1;
      else return mid;
    }
    return -1 - lo;
  }
}

/** The privileged domain's views of foreign memory, for in-place grant copies. */
class ForeignDomains {
  private readonly cache = new Map<DomId, ForeignView>();

  constructor(private readonly guest: Guest) {}

  resolve = (domid: DomId): GrantingDomain | undefined => {
    let d = this.cache.get(domid);
    if (!d) {
      try {
        d = new ForeignView(this.guest, this.guest.hypercall<ForeignInfo>({ op: "foreign_domain", domid }));
      } catch {
        return undefined;
      }
      this.cache.set(domid, d);
    }
    return d;
  };

  /** The domain is gone: forget all of it. */
  drop(domid: DomId): void {
    this.cache.delete(domid);
  }

  /** The domain released a segment: let go of the segment buffers its view holds. */
  forgetSegments(domid: DomId): void {
    this.cache.get(domid)?.forget();
  }
}

/** Grant operations of a domain: its own table, plus map/unmap/copy of others' grants. */
export class GuestGrants {
  readonly table: GuestGrantTable;
  readonly #guest: Guest;
  readonly #foreign: ForeignDomains | undefined;
  readonly #counters: CounterWriter;

  constructor(
    guest: Guest,
    tableBuffer: SharedArrayBuffer,
    foreign: ForeignDomains | undefined,
    counters: CounterWriter,
  ) {
    this.#guest = guest;
    this.#foreign = foreign;
    this.#counters = counters;
    this.table = new GuestGrantTable(tableBuffer, guest.domid, (pfn) => guest.ownsFrame(pfn));
  }

  /** Grants `peer` access to one of this domain's frames. Returns the grant ref. */
  grantAccess(peer: DomId, pfn: number, opts: { readonly?: boolean } = {}): number {
    return this.table.grantAccess(peer, pfn, opts.readonly === true);
  }

  /** Revokes a grant; throws a GrantError if a peer still has it mapped. */
  endAccess(ref: number): void {
    this.table.endAccess(ref);
  }

  isInUse(ref: number): boolean {
    return this.table.isInUse(ref);
  }

  /** Revokes `ref` unless it is mapped (atomically, against a map racing in): true if revoked (or not granted). */
  tryEndAccess(ref: number): boolean {
    return this.table.tryEndAccess(ref);
  }

  /**
   * Maps `domid`'s grant `ref` (or, with an array, refs covering every page of one shared
   * segment, in order) into this domain. A failed map returns the GNTST status and changes
   * nothing. Writable mappings of another guest's memory give its whole shared segment, so
   * they need a grant of every page of it; read-only mappings give copies on request.
   */
  map(domid: DomId, ref: number | readonly number[], opts: { readonly?: boolean } = {}): MapResult {
    const readonly = opts.readonly === true;
    if (!Number.isInteger(domid) || domid < 0 || domid > DOMID_MAX)
      return { status: GNTST.bad_domain, error: `GNTST_bad_domain: ${String(domid)} is not a domain id` };
    const refs = typeof ref === "number" ? [ref] : [...ref];
    const r = this.#guest.hypercall<
      GrantResult & { handle?: number; buffer?: SharedArrayBuffer; offset?: number }
    >({
      op: "grant_map",
      domid,
      refs,
      readonly,
    });
    if (r.status !== GNTST.okay) return { status: r.status, error: r.error ?? "grant map failed" };
    const handle = r.handle!;
    if (readonly) {
      // In parts of GRANT_READ_MAX, one hypercall each (the hypervisor copies no more at once).
      const part = (offset: number, length: number): Uint8Array => {
        const got = this.#guest.hypercall<GrantResult & { bytes?: Uint8Array }>({
          op: "grant_read",
          handle,
          offset,
          length,
        });
        if (got.status !== GNTST.okay) throw new GrantError(got.error ?? "grant read failed", refs[0]);
        return got.bytes!;
      };
      const read = (offset: number, length: number): Uint8Array => {
        if (!(length > GRANT_READ_MAX)) return part(offset, length);
        const out = new Uint8Array(length);
        for (let done = 0; done < length; done += GRANT_READ_MAX)
          out.set(part(offset + done, Math.min(GRANT_READ_MAX, length - done)), done);
        return out;
      };
      return { status: 0, mapping: new GrantMapping(domid, refs[0], handle, true, undefined, read, refs) };
    }
    const bytes = new Uint8Array(r.buffer!, r.offset!, refs.length * PAGE_SIZE);
    return { status: 0, mapping: new GrantMapping(domid, refs[0], handle, false, bytes, undefined, refs) };
  }

  /** map() that throws a GrantError (with Xen's status name) instead of returning a status. */
  mapOrThrow(domid: DomId, ref: number | readonly number[], opts: { readonly?: boolean } = {}): GrantMapping {
    const r = this.map(domid, ref, opts);
    if (r.status !== 0)
      throw new GrantError((r as { error: string }).error, typeof ref === "number" ? ref : ref[0]);
    return (r as { mapping: GrantMapping }).mapping;
  }

  unmap(mapping: GrantMapping | number): GrantResult {
    const handle = typeof mapping === "number" ? mapping : mapping.handle;
    return this.#guest.hypercall<GrantResult>({ op: "grant_unmap", handle });
  }

  /**
   * The privileged domain's map of many grants at once, done in place (as a backend maps a
   * frontend's buffer to DMA it): validates and pins every ref of `domid` for this domain,
   * all or nothing. Returns the frames' locations; `unpinForeign` releases them.
   */
  pinForeign(domid: DomId, refs: readonly number[], write: boolean): PinnedFrames {
    if (!this.#foreign)
      throw new GrantError("pinForeign: only the privileged domain maps foreign frames in place");
    const granter = this.#foreign.resolve(domid);
    if (!granter)
      return {
        status: GNTST.bad_domain,
        error: `GNTST_bad_domain: domain ${domid} does not exist`,
        frames: [],
      };
    const frames: FrameLocation[] = [];
    for (let i = 0; i < refs.length; i++) {
      const r = acquireGrant(granter, refs[i], this.#guest.domid, write);
      if (r.status !== GNTST.okay) {
        for (let j = 0; j < i; j++) releaseGrant(granter, refs[j], write);
        this.#counters.add("grant_errors");
        return { status: r.status, error: r.error, frames: [] };
      }
      frames.push(r.frame!);
    }
    this.#counters.add("grant_map", refs.length);
    return { status: GNTST.okay, frames };
  }

  unpinForeign(domid: DomId, refs: readonly number[], write: boolean): void {
    const granter = this.#foreign?.resolve(domid);
    if (!granter) return;
    for (const ref of refs) releaseGrant(granter, ref, write);
    this.#counters.add("grant_unmap", refs.length);
  }

  /**
   * GNTTABOP_copy: one status per op. The privileged domain copies in place (its thread holds
   * foreign memory and validates against the grant tables itself); others ask the hypervisor.
   */
  copy(ops: GrantCopyOp[]): GrantResult[] {
    if (!Array.isArray(ops)) throw new TypeError("copy: ops must be an array of GrantCopyOp");
    const foreign = this.#foreign;
    if (!foreign) return this.#guest.hypercall<GrantResult[]>({ op: "grant_copy", ops });
    const w = this.#counters;
    return ops.map((op) => {
      const r = executeGrantCopy(op, this.#guest.domid, foreign.resolve);
      if (r.status === GNTST.okay) {
        w.add("grant_copy");
        w.add("grant_copy_bytes", op.len);
      } else w.add("grant_errors");
      return r;
    });
  }
}

/** A synchronous request's outcome, filled in when its reply is handled (Guest.xenstoreSync). */
interface SyncSlot {
  done: boolean;
  ok: boolean;
  value: unknown;
  error: Error | undefined;
}

/** The runtime's hold on a guest's XenStore client: set by the class below, never reachable from guest code. */
let requestSync: (c: RemoteXenStoreClient, req: XenStoreRequest) => SyncSlot;
let handleReply: (c: RemoteXenStoreClient, msg: AsyncToGuest) => void;

/**
 * XenStore for a guest: requests travel to xenstored on the asynchronous port, at most
 * XS_REQUESTS_IN_FLIGHT unanswered at once (xenstore/port-credit.ts); the rest wait here, in
 * order, in the guest's own heap. Synchronous requests (Guest.xenstoreSync) count in the same
 * window and go first; one that timed out keeps its place until its reply comes, so a caller
 * that gives up at once cannot post past the window. Only `send` (through the client's
 * methods) is guest-facing: the rest is the runtime's (requestSync, handleReply).
 */
class RemoteXenStoreClient extends RequestXenStoreClient {
  #nextId = 1;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly #queued: Array<{ id: number; req: XenStoreRequest }> = [];
  /** Synchronous requests waiting for room: they go before #queued, in the order they were made. */
  readonly #syncQueued: Array<{ id: number; req: XenStoreRequest }> = [];
  #inFlight = 0;
  readonly #port: MessagePort;

  static {
    requestSync = (c, req) => c.#requestSync(req);
    handleReply = (c, msg) => c.#handle(msg);
  }

  constructor(domid: DomId, port: MessagePort) {
    super(domid);
    this.#port = port;
  }

  protected send(req: XenStoreRequest): Promise<unknown> {
    let wire: XenStoreRequest;
    try {
      wire = xenStoreRequestOnWire(req);
    } catch (e) {
      return Promise.reject(e);
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      if (this.#inFlight < XS_REQUESTS_IN_FLIGHT) this.#post(id, wire);
      else this.#queued.push({ id, req: wire });
    });
  }

  #post(id: number, req: XenStoreRequest): void {
    this.#inFlight++;
    this.#port.postMessage({ kind: "xenstore", id, req } satisfies AsyncToHypervisor);
  }

  /** A request whose outcome the caller polls while it pumps the port (Guest.xenstoreSync). */
  #requestSync(req: XenStoreRequest): SyncSlot {
    const slot: SyncSlot = { done: false, ok: false, value: undefined, error: undefined };
    try {
      req = xenStoreRequestOnWire(req);
    } catch (e) {
      return Object.assign(slot, { done: true, error: e });
    }
    const id = this.#nextId++;
    this.#pending.set(id, {
      resolve: (v) => Object.assign(slot, { done: true, ok: true, value: v }),
      reject: (e) => Object.assign(slot, { done: true, error: e }),
    });
    if (this.#inFlight < XS_REQUESTS_IN_FLIGHT) this.#post(id, req);
    else this.#syncQueued.push({ id, req });
    return slot;
  }

  #handle(msg: AsyncToGuest): void {
    if (msg.kind === "watch") {
      this.deliverWatch(msg.path, msg.token);
    } else if (msg.kind === "xenstore-reply") {
      const p = this.#pending.get(msg.id);
      if (!p) return;
      this.#pending.delete(msg.id);
      this.#inFlight--;
      const next = this.#syncQueued.shift() ?? this.#queued.shift();
      if (next) this.#post(next.id, next.req);
      if (msg.ok) p.resolve(msg.value);
      else p.reject(XenStoreError.fromWire(msg.error));
    }
  }
}

export type HostMessageHandler = (data: unknown) => void;

/** A running domain, from the inside. */
/**
 * What the runtime hands a Guest besides its boot data: how to post to the host, and (for a
 * native process) the link to the driver domain's native service, taken out of its args.
 */
export interface GuestLinks {
  toHost: (msg: unknown) => void;
  native?: { port: MessagePort; replyWord: SharedArrayBuffer };
}

/** A running domain, from the inside. */
export class Guest {
  readonly domid: DomId;
  readonly name: string;
  readonly privileged: boolean;
  /** A native process of the driver domain rather than a VM (createDomain({ native: true })). */
  readonly native: boolean;
  /** What the host passed in createDomain({ args }). */
  readonly args: unknown;
  /**
   * The program's own arguments: what follows PROGRAM on `myrixen run -n N PROGRAM [ARGS...]`
   * (the `argv` of its job's rank arguments, `args.job.argv`, as strings), as process.argv
   * after its first two; empty for a domain its host started without them.
   */
  readonly argv: readonly string[];
  readonly memory: GuestMemory;
  readonly grants: GuestGrants;
  readonly evtchn: GuestEventChannels;
  readonly xenstore: RequestXenStoreClient;
  readonly #counters: CounterWriter;
  readonly #counterBuffer: SharedArrayBuffer;
  readonly #hc: HypercallClient;
  readonly #foreign?: ForeignDomains;
  readonly #shared: PageRun[] = [];
  readonly #hostHandlers: HostMessageHandler[] = [];
  readonly #hostQueue: unknown[] = [];
  readonly #toHost: (msg: unknown) => void;
  readonly #asyncPort: MessagePort;
  readonly #xs: RemoteXenStoreClient;
  readonly #xsCredit: Int32Array;
  readonly #nap = new Int32Array(new SharedArrayBuffer(4));
  readonly #nativeService: SyncCallClient<unknown> | undefined;

  constructor(boot: GuestBootData, links: GuestLinks) {
    this.domid = boot.domid;
    this.name = boot.name;
    this.privileged = boot.privileged;
    this.native = boot.native;
    this.args = boot.args;
    const argv = (boot.args as { job?: { argv?: unknown } } | undefined)?.job?.argv;
    this.argv = Object.freeze(Array.isArray(argv) ? argv.map(String) : []);
    this.#toHost = links.toHost;
    this.memory = new GuestMemory(boot.ram, boot.nrPages);
    this.#counterBuffer = boot.counters;
    this.#counters = new CounterWriter(boot.counters, CounterBlock.Domain);
    this.#hc = new HypercallClient(boot.hcPort, boot.replyWord);
    // (The privileged domain's thread fetches its collector at its start: domain-thread.ts.)
    if (boot.privileged) this.#foreign = new ForeignDomains(this);
    this.grants = new GuestGrants(this, boot.grantTable, this.#foreign, this.#counters);
    const evtchnCalls: EvtchnHypercalls = {
      allocUnbound: (remoteDom) => this.hypercall<PortGrant>({ op: "evtchn_alloc_unbound", remoteDom }),
      bindInterdomain: (remoteDom, remotePort) =>
        this.hypercall<PortGrant>({ op: "evtchn_bind_interdomain", remoteDom, remotePort }),
      close: (port: EvtchnPort) => void this.hypercall({ op: "evtchn_close", port }),
      status: (port: EvtchnPort) => this.hypercall({ op: "evtchn_status", port }),
    };
    this.evtchn = new GuestEventChannels(evtchnCalls, this.#counters);
    const xs = new RemoteXenStoreClient(boot.domid, boot.asyncPort);
    this.#xsCredit = new Int32Array(boot.xsCredit);
    this.#xs = xs;
    boot.asyncPort.on("message", (m: AsyncToGuest) => this.#dispatchAsync(m));
    // The async port must not keep a finished guest alive; the runtime refs it while main runs.
    boot.asyncPort.unref();
    this.#asyncPort = boot.asyncPort;
    this.xenstore = xs;
    // Requests rebuilt before they are posted (../wire-values.ts), inside the client's call:
    // the service's thread is the driver domain's, which serves every guest's set-up.
    this.#nativeService =
      links.native &&
      new SyncCallClient(links.native.port, links.native.replyWord, undefined, (req: unknown) =>
        wireFlat(req, "native request", (why) => new SyncCallFailed("EINVAL", why)),
      );
  }

  /**
   * A hypercall: the trap into the hypervisor, synchronous as in Xen. Every library call that
   * needs the hypervisor comes through here, and the hypervisor checks every request, so a
   * guest may make any call it likes (and wrap this method to watch its own calls).
   */
  hypercall<T = unknown>(req: HypercallRequest): T {
    return this.#hc.call<T>(req);
  }

  /**
   * A native process's call to the driver domain's native service (its MX driver, as an ioctl
   * is): throws `SyncCallFailed` with the service's errno. Only Host.startNative gives one.
   */
  nativeCall<T = unknown>(req: unknown): T {
    if (!this.#nativeService)
      throw new TypeError(
        "nativeCall: this domain has no native service (a native process started with Host.startNative has one)",
      );
    return this.#nativeService.call<T>(req);
  }

  #dispatchAsync(m: AsyncToGuest): void {
    if (m.kind === "domain-gone") this.dropForeign(m.domid);
    else {
      if (m.kind === "watch") takeWatchEvent(this.#xsCredit);
      handleReply(this.#xs, m);
    }
  }

  /**
   * One XenStore request answered synchronously, for code that cannot await: a driver set up
   * from a synchronous call (mx_init → myrifront's xenbus handshake). The thread blocks (spin,
   * then short sleeps) until xenstored answers; other replies and watch events that arrive
   * meanwhile are dispatched as usual. Returns what the async client's request would resolve
   * to; throws XenStoreError.
   */
  xenstoreSync(req: XenStoreRequest, timeoutMs = 10_000): unknown {
    const slot = requestSync(this.#xs, req);
    const deadline = performance.now() + timeoutMs;
    for (let idle = 0; ; ) {
      if (slot.done) {
        if (slot.ok) return slot.value;
        throw slot.error;
      }
      const got = receiveMessageOnPort(this.#asyncPort);
      if (got) {
        this.#dispatchAsync(got.message as AsyncToGuest);
        idle = 0;
        continue;
      }
      if (performance.now() > deadline)
        throw new XenStoreError("ETIMEDOUT", req.path ?? "", `no XenStore reply in ${timeoutMs} ms`);
      // xenstored answers from the host's event loop in tens of µs: spin a little, then nap.
      if (++idle > 200) Atomics.wait(this.#nap, 0, 0, 0.05);
    }
  }

  /** @internal Keeps the event loop alive while main runs (watch events, XenStore replies). */
  holdEventLoop(hold: boolean): void {
    if (hold) this.#asyncPort.ref();
    else this.#asyncPort.unref();
  }

  /** Whether `pfn` is a frame of this domain (RAM or a registered shared segment). */
  ownsFrame(pfn: number): boolean {
    if (pfn >= 0 && pfn < this.memory.nrPages) return true;
    return this.#shared.some((s) => pfn >= s.pfn && pfn < s.pfn + s.count);
  }

  /**
   * Allocates `pages` fresh pages that other domains may map: a shared segment the hypervisor
   * makes and registers as this domain's frames. Use it for rings and channels shared with
   * guests. `audience` lists who may map it (writable mappings are the whole segment); without
   * one, the first domain to map it is the only one who ever can. A segment once mapped by a
   * domain stays reachable by it: release it (releaseShared) rather than reuse it for someone else.
   */
  allocShared(pages = 1, opts: { audience?: readonly DomId[] } = {}): PageRun {
    if (!Number.isInteger(pages) || pages < 1 || pages > 4096)
      throw new RangeError(`allocShared: pages must be an integer in 1..4096, got ${String(pages)}`);
    const audience = opts.audience === undefined ? undefined : [...opts.audience];
    const { pfn, buffer, reused } = this.hypercall<{
      pfn: number;
      buffer: SharedArrayBuffer;
      reused: boolean;
    }>({
      op: "mem_alloc_shared",
      pages,
      audience,
    });
    // A buffer of ours released before: zeroed here, in our own thread (the hypervisor's serves
    // every domain); what it held was ours alone.
    if (reused) new Uint8Array(buffer).fill(0);
    // The segment's pages: its buffer may be a larger one of ours released before (the rest zeroed).
    const run = { pfn, count: pages, bytes: new Uint8Array(buffer, 0, pages * PAGE_SIZE) };
    this.#shared.push(run);
    return run;
  }

  /** Lets `domid` map the shared segment `run` (from allocShared) too. It cannot be taken back. */
  shareWith(run: Pick<PageRun, "pfn">, domid: DomId): void {
    this.hypercall({ op: "mem_share", pfn: run.pfn, domid });
  }

  /**
   * Gives a shared segment back: its frames stop being this domain's, so no new grant, map or
   * copy reaches them. Domains that mapped it keep what they mapped (the hypervisor cannot
   * take a buffer back), which is why a segment is released, never handed to someone new.
   */
  releaseShared(run: Pick<PageRun, "pfn">): void {
    const i = this.#shared.findIndex((s) => s.pfn === run.pfn);
    this.hypercall({ op: "mem_release_shared", pfn: run.pfn });
    if (i >= 0) this.#shared.splice(i, 1);
  }

  /** The bytes of one of this domain's frames (RAM or shared segment). */
  frameBytes(pfn: number): Uint8Array {
    if (pfn < this.memory.nrPages) return this.memory.page(pfn);
    const s = this.#shared.find((r) => pfn >= r.pfn && pfn < r.pfn + r.count);
    if (!s) throw new RangeError(`frame ${pfn} is not memory of domain ${this.domid}`);
    const off = (pfn - s.pfn) * PAGE_SIZE;
    return s.bytes.subarray(off, off + PAGE_SIZE);
  }

  /**
   * This domain's counters (both the hypervisor's and its own). The hypervisor's part is its
   * mirror of the block it keeps to itself: the host reads that one, so no guest can forge it.
   */
  counters(): CounterSnapshot {
    return readCounters(this.#counterBuffer);
  }

  /** Sends a message to the host (domain.on("message")). */
  send(data: unknown): void {
    this.#toHost({ type: "user", data });
  }

  /** Registers a handler for messages from the host (domain.send). */
  onMessage(handler: HostMessageHandler): void {
    this.#hostHandlers.push(handler);
    for (const m of this.#hostQueue.splice(0)) handler(m);
  }

  /** Resolves with the next message from the host. */
  nextMessage(): Promise<unknown> {
    const queued = this.#hostQueue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve) => {
      const once: HostMessageHandler = (m) => {
        this.#hostHandlers.splice(this.#hostHandlers.indexOf(once), 1);
        resolve(m);
      };
      this.#hostHandlers.push(once);
    });
  }

  /** @internal */
  deliverHostMessage(data: unknown): void {
    if (this.#hostHandlers.length === 0) this.#hostQueue.push(data);
    else for (const h of [...this.#hostHandlers]) h(data);
  }

  /** @internal */
  dropForeign(domid: DomId): void {
    if (!this.#foreign) return;
    this.#foreign.drop(domid);
    // That view was this domain's last hold on the memory: collect it soon (reclaim.ts).
    reclaimSoon();
  }

  /**
   * @internal `domid` released a segment. The view already stops resolving it (the segment
   * generation moved); this lets go of its buffer, the last hold on that memory here.
   */
  forgetForeignSegments(domid: DomId): void {
    if (!this.#foreign) return;
    this.#foreign.forgetSegments(domid);
    reclaimSoon();
  }
}

/**
 * The hypervisor: builds domains (worker threads with their own isolate, memory limits and
 * guest-physical memory), owns their grant tables, event-channel ports and XenStore entries,
 * serves their hypercalls, and tears all of it down when a domain stops.
 *
 * It runs in the host process's main thread. Guests reach it only through their hypercall
 * channel (hypercall.ts); the data path (event-channel sends and waits, rings, the privileged
 * domain's grant copies) never passes through here.
 */
import { EventEmitter } from "node:events";
import { fileURLToPath, pathToFileURL } from "node:url";
import { MessageChannel, type MessagePort, type TransferListItem, Worker } from "node:worker_threads";
import {
  DOMID_MAX,
  type DomId,
  GNTST,
  GTF_permit_access,
  GTF_type_mask,
  gntstName,
  PAGE_SIZE,
} from "./abi.js";
import {
  allocCounterBuffer,
  allocPrivateCounterBlock,
  CounterBlock,
  type CounterName,
  type CounterSnapshot,
  CounterWriter,
  readCounters,
} from "./counters.js";
import { EventChannelTable, HypercallError } from "./event-channel.js";
import {
  acquireGrant,
  allocGrantTable,
  DEFAULT_GRANT_ENTRIES,
  executeGrantCopy,
  type FrameLocation,
  GNTTAB_NR_RESERVED_ENTRIES,
  type GrantCopyOp,
  type GrantingDomain,
  markGrantTableDead,
  releaseGrant,
} from "./grant-table.js";
import { type GuestImage, loadGuestImage } from "./guest/loader.js";
import {
  type AsyncToGuest,
  type AsyncToHypervisor,
  answerHypercall,
  type HypercallRequest,
} from "./hypercall.js";
import { executeXenStoreRequest, LocalXenStoreClient, XenStore, XenStoreError } from "./xenstore.js";

export type DomainState = "booting" | "running" | "shutdown" | "crashed" | "destroyed";

export interface DomainConfig {
  /**
   * The guest program: a path or file URL of a TypeScript or JavaScript module whose default
   * export is `main(guest)`. It runs sandboxed (guest/sandbox.ts), reaching only the guest
   * object and the library, except in the privileged domain (the host's own driver domain).
   */
  module: string | URL;
  name?: string;
  /** Guest-physical memory in 4 KiB pages (default 256 = 1 MiB). */
  pages?: number;
  /** V8 old-generation heap limit of the domain's isolate, in MiB (default 256). */
  maxHeapMb?: number;
  /** The privileged driver domain: gets domid 0 and may map and copy any guest's granted frames in place. */
  privileged?: boolean;
  /** Passed to the guest's main as `guest.args` (structured-cloned). */
  args?: unknown;
  grantEntries?: number;
  /** Extra shared pages the domain may register for mapping by other domains (default: as many as RAM). */
  maxSharedPages?: number;
  /**
   * Objects in `args` to transfer rather than clone (MessagePorts handed to the privileged
   * domain). A sandboxed guest takes none: it is handed data, never a Node object.
   */
  transfer?: TransferListItem[];
  /**
   * A native process rather than a VM: a thread of the driver domain's OS, with its own
   * memory and no Xen devices (the reference point the bypass path is measured against).
   */
  native?: boolean;
  /** "pipe": the guest's stdout/stderr become `domain.stdout`/`domain.stderr` streams (a launcher prefixes them). */
  output?: "inherit" | "pipe";
  /** What the guest program sees as `process.env` (default: nothing; a guest has no host environment). */
  env?: Record<string, string>;
}

export interface DomainExit {
  state: "shutdown" | "crashed" | "destroyed";
  result?: unknown;
  error?: Error;
}

/** What the worker is started with (guest/runtime.ts reads it). */
export interface GuestBootData {
  domid: DomId;
  name: string;
  privileged: boolean;
  native: boolean;
  ram: SharedArrayBuffer;
  nrPages: number;
  grantTable: SharedArrayBuffer;
  counters: SharedArrayBuffer;
  replyWord: SharedArrayBuffer;
  hcPort: MessagePort;
  asyncPort: MessagePort;
  moduleUrl: string;
  /** The program compiled for the sandbox (guest/loader.ts); absent for the privileged domain, which runs unsandboxed. */
  image?: GuestImage;
  /** The sandboxed program's `process.env` (DomainConfig.env). */
  env?: Record<string, string>;
  args: unknown;
}

/** Control messages from the guest runtime to the hypervisor, on the worker's parentPort. */
export type GuestControlMessage =
  | { type: "running" }
  | { type: "exit"; result: unknown }
  | { type: "crash"; error: { name: string; message: string; stack?: string } }
  | { type: "user"; data: unknown }
  /** What the guest wrote to its stdout/stderr (guest/runtime.ts routeStdio). */
  | { type: "output"; stream: "stdout" | "stderr"; text: string };

/**
 * A shared segment: a buffer the hypervisor made for one domain (its owner) to grant to
 * others. A JS isolate cannot be handed part of a SharedArrayBuffer, and a buffer once handed
 * to a thread can never be taken back. So the rules that make sharing safe live here, not
 * in any guest-side wrapper:
 *   1. a segment is always fresh memory (the hypervisor allocates it; no domain can register
 *      a buffer it brought, e.g. one it once mapped from someone else);
 *   2. a writable mapping gives the whole segment, so it needs a grant for every page of it;
 *   3. only domains in the segment's audience may map it writable (the owner declares the
 *      audience; undeclared, the first mapper is the whole audience), identified by
 *      incarnation, so a reused domain id is not a member;
 *   4. a released segment's frames never resolve again (frame numbers are not reused).
 * Whoever was in the audience may keep the buffer; no one else can ever get it. That is
 * what "memory a domain could once reach is never given to another domain" means here; the
 * garbage collector frees the memory once every holder has dropped it.
 */
class Segment {
  /** Incarnations (DomainRecord.serial) that ever mapped it writable. */
  readonly holders = new Set<number>();
  released = false;

  constructor(
    readonly owner: DomainRecord,
    readonly firstPfn: number,
    readonly pages: number,
    readonly buffer: SharedArrayBuffer,
    /** Incarnations allowed to map it writable (the owner and the privileged domain always may). */
    readonly audience: Set<number>,
    /** No audience declared yet: the first domain to map it becomes the audience. */
    public open: boolean,
  ) {}
}

/** A mapping a domain holds: writable ones pin their grants; read-only ones are a right to copy. */
interface Mapping {
  granter: DomainRecord;
  refs: number[];
  write: boolean;
}

/** Stopped domains the hypervisor still answers lookups for (domain(), counters()). */
export const KEEP_STOPPED_DOMAINS = 256;
/** At most this many pages in one segment, and in one mapping (16 MiB). */
export const MAX_SEGMENT_PAGES = 4096;
/** At most this many mappings per domain at once (each costs the hypervisor a record). */
export const MAX_MAPPINGS_PER_DOMAIN = 16384;

/** Everything the hypervisor keeps for one domain. */
class DomainRecord implements GrantingDomain {
  readonly entries: Uint32Array;
  readonly shadow: Int32Array;
  /** Live shared segments, in frame order (frame numbers only grow). */
  readonly segments: Segment[] = [];
  /** Pages of live segments (the quota counts these). */
  sharedPages = 0;
  /** Frame numbers handed out to segments so far, above RAM. */
  sharedFrames = 0;
  readonly mappings = new Map<number, Mapping>();
  nextHandle = 1;
  readonly hyp: CounterWriter;

  constructor(
    readonly domid: DomId,
    /** This incarnation of the domain id: unique for the life of the hypervisor. */
    readonly serial: number,
    readonly privileged: boolean,
    readonly ram: SharedArrayBuffer,
    readonly nrPages: number,
    readonly table: SharedArrayBuffer,
    readonly shadowBuffer: SharedArrayBuffer,
    readonly counters: SharedArrayBuffer,
    /** The hypervisor's own block: never leaves this thread, so no guest can write it. */
    readonly hypCounters: ArrayBuffer,
    readonly maxSharedPages: number,
  ) {
    this.entries = new Uint32Array(table);
    this.shadow = new Int32Array(shadowBuffer);
    this.hyp = new CounterWriter(hypCounters, CounterBlock.Hypervisor, counters);
  }

  segmentAt(pfn: number): Segment | undefined {
    const segs = this.segments;
    let lo = 0;
    let hi = segs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const sg = segs[mid];
      if (pfn < sg.firstPfn) hi = mid - 1;
      else if (pfn >= sg.firstPfn + sg.pages) lo = mid + 1;
      else return sg;
    }
    return undefined;
  }

  frame(pfn: number): FrameLocation | undefined {
    if (!Number.isInteger(pfn) || pfn < 0) return undefined;
    if (pfn < this.nrPages) return { buffer: this.ram, offset: pfn * PAGE_SIZE, shareable: false };
    const sg = this.segmentAt(pfn);
    if (!sg) return undefined;
    return { buffer: sg.buffer, offset: (pfn - sg.firstPfn) * PAGE_SIZE, shareable: true, segment: sg };
  }

  /** Whether this domain's grant table has an entry in force naming `domid`. */
  grantsTo(domid: DomId): boolean {
    const e = this.entries;
    for (let i = 2 * GNTTAB_NR_RESERVED_ENTRIES; i < e.length; i += 2) {
      const w = Atomics.load(e, i);
      if ((w & GTF_type_mask) === GTF_permit_access && w >>> 16 === domid) return true;
    }
    return false;
  }
}

/** A running (or stopped) domain, as the host sees it. */
export class Domain extends EventEmitter {
  state: DomainState = "booting";
  error?: Error;
  result?: unknown;
  readonly exited: Promise<DomainExit>;
  private resolveExit!: (e: DomainExit) => void;

  constructor(
    readonly domid: DomId,
    readonly name: string,
    readonly privileged: boolean,
    readonly pages: number,
    private readonly hv: Hypervisor,
    readonly worker: Worker,
    private readonly counterBuffer: SharedArrayBuffer,
    private readonly hypCounters: ArrayBuffer,
    readonly native = false,
  ) {
    super();
    this.exited = new Promise((r) => {
      this.resolveExit = r;
    });
    this.on("newListener", (event) => {
      if (event === "message" && this.early.length > 0) {
        this.flushing = false;
        queueMicrotask(() => this.scheduleFlush());
      }
    });
  }

  /** Counters of hypervisor work done by or for this domain (the hypervisor's part from its private block). */
  counters(): CounterSnapshot {
    return readCounters(this.counterBuffer, this.hypCounters);
  }

  private readonly early: unknown[] = [];
  private flushing = false;

  /**
   * @internal Emits a guest's message, or keeps it until someone listens: a message sent
   * while the host was still setting the domain up is not lost.
   */
  deliver(data: unknown): void {
    if (this.listenerCount("message") > 0 && this.early.length === 0) this.emit("message", data);
    else {
      this.early.push(data);
      this.scheduleFlush();
    }
  }

  private scheduleFlush(): void {
    if (this.flushing || this.listenerCount("message") === 0) return;
    this.flushing = true;
    queueMicrotask(() => {
      this.flushing = false;
      while (this.early.length > 0 && this.listenerCount("message") > 0)
        this.emit("message", this.early.shift());
    });
  }

  /** Sends a message to the guest (guest.onMessage). */
  send(data: unknown): void {
    if (this.state === "running" || this.state === "booting") this.worker.postMessage({ type: "host", data });
  }

  /** Stops the domain if it still runs and releases its memory, grants, channels and XenStore entries. */
  async destroy(): Promise<void> {
    await this.hv.destroyDomainObject(this);
  }

  /** @internal */
  settle(state: "shutdown" | "crashed" | "destroyed", detail: { result?: unknown; error?: Error }): boolean {
    if (this.state === "shutdown" || this.state === "crashed" || this.state === "destroyed") {
      if (state === "destroyed") this.state = "destroyed";
      return false;
    }
    this.state = state;
    this.error = detail.error;
    this.result = detail.result;
    this.resolveExit({ state, ...detail });
    this.emit("exit", { state, ...detail });
    return true;
  }
}

const runtimeUrl = new URL("./guest/runtime.js", import.meta.url);

function toModuleUrl(module: string | URL): string {
  if (module instanceof URL) return module.href;
  if (typeof module !== "string" || module.length === 0)
    throw new TypeError("createDomain: `module` must be a path or URL of the guest program");
  if (/^(file|data):/.test(module)) return module;
  return pathToFileURL(module).href;
}

/** A guest's environment: string names and values only (anything else is left out). */
function envOf(env: unknown): Record<string, string> | undefined {
  if (env === null || typeof env !== "object") return undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (typeof v === "string") out[k] = v;
  return out;
}

/** Validates a createDomain config; throws a TypeError/RangeError naming the bad field. */
function checkConfig(c: DomainConfig): Required<Omit<DomainConfig, "args" | "name" | "output" | "env">> & {
  name?: string;
  args: unknown;
  pipe: boolean;
} {
  if (c === null || typeof c !== "object") throw new TypeError("createDomain: config must be an object");
  const int = (field: string, v: unknown, def: number, min: number, max: number): number => {
    if (v === undefined) return def;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max)
      throw new RangeError(
        `createDomain: \`${field}\` must be an integer in ${min}..${max}, got ${String(v)}`,
      );
    return v;
  };
  if (c.name !== undefined && (typeof c.name !== "string" || !/^[A-Za-z0-9_.-]{1,64}$/.test(c.name)))
    throw new TypeError(
      `createDomain: \`name\` must be 1-64 characters of [A-Za-z0-9_.-], got ${JSON.stringify(c.name)}`,
    );
  const pages = int("pages", c.pages, 256, 1, 1 << 20);
  return {
    module: c.module,
    name: c.name,
    pages,
    maxHeapMb: int("maxHeapMb", c.maxHeapMb, 256, 16, 16384),
    privileged: c.privileged === true,
    args: c.args,
    // Enough for every page to be granted once (memory registration grants page by page).
    grantEntries: int(
      "grantEntries",
      c.grantEntries,
      Math.max(DEFAULT_GRANT_ENTRIES, pages + 1024),
      16,
      1 << 21,
    ),
    maxSharedPages: int("maxSharedPages", c.maxSharedPages, Math.max(pages, 1024), 0, 1 << 20),
    transfer: Array.isArray(c.transfer) ? c.transfer : [],
    native: c.native === true,
    pipe: c.output === "pipe",
  };
}

export class Hypervisor {
  readonly xenstore = new XenStore();
  readonly evtchn: EventChannelTable;
  /** The host's own XenStore access, as the toolstack in dom0 has. */
  readonly toolstack: LocalXenStoreClient;
  private readonly records = new Map<DomId, DomainRecord>();
  private readonly live = new Map<DomId, Domain>();
  private readonly all = new Map<DomId, Domain>();
  private nextDomid = 1;
  private serials = 0;
  private readonly stopped: Domain[] = [];

  constructor() {
    this.evtchn = new EventChannelTable((d) => this.records.has(d));
    this.toolstack = new LocalXenStoreClient(this.xenstore, 0);
    this.xenstore.onOp = (caller) => {
      const rec = this.records.get(caller);
      if (rec) rec.hyp.add("xenstore_ops");
    };
  }

  /** Starts a domain. Resolves once its worker is up; watch `domain.state` / `domain.exited` for the rest. */
  async createDomain(config: DomainConfig): Promise<Domain> {
    const c = checkConfig(config);
    const moduleUrl = toModuleUrl(c.module);
    // Only the host's own driver domain runs unsandboxed; a guest is handed data, never a port.
    const nativeLink = (c.args as { myrixen?: { port?: unknown } } | undefined)?.myrixen?.port;
    if (!c.privileged && c.transfer.some((t) => t !== nativeLink))
      throw new TypeError(
        "createDomain: `transfer`: a guest runs sandboxed and cannot be handed MessagePorts or other transferables; give it data in `args`",
      );
    // Compiled before anything is allocated: a bad program fails its guest at boot, not the host.
    const image = c.privileged ? undefined : await loadGuestImage(moduleUrl);
    let domid: DomId;
    if (c.privileged) {
      if (this.records.has(0))
        throw new Error("createDomain: a privileged domain (domain 0) already runs on this host");
      domid = 0;
    } else {
      domid = this.allocDomid();
    }
    const name = c.name ?? (c.privileged ? "Domain-0" : c.native ? `native-${domid}` : `domU-${domid}`);
    const ram = new SharedArrayBuffer(c.pages * PAGE_SIZE);
    const { table, shadow } = allocGrantTable(c.grantEntries);
    const counters = allocCounterBuffer();
    const hypCounters = allocPrivateCounterBlock();
    const rec = new DomainRecord(
      domid,
      ++this.serials,
      c.privileged,
      ram,
      c.pages,
      table,
      shadow,
      counters,
      hypCounters,
      c.maxSharedPages,
    );
    this.records.set(domid, rec);
    this.evtchn.addDomain(domid);
    // The host's toolstack speaks as domain 0, so the store knows domain 0 from the start.
    if (!this.xenstore.isIntroduced(domid)) this.xenstore.introduceDomain(domid);
    this.xenstore.write(0, `/local/domain/${domid}/name`, name);
    this.xenstore.write(0, `/local/domain/${domid}/domid`, String(domid));

    const hc = new MessageChannel();
    const async = new MessageChannel();
    const replyWord = new SharedArrayBuffer(8);
    const boot: GuestBootData = {
      domid,
      name,
      privileged: c.privileged,
      native: c.native,
      ram,
      nrPages: c.pages,
      grantTable: table,
      counters,
      replyWord,
      hcPort: hc.port2,
      asyncPort: async.port2,
      moduleUrl,
      image,
      env: envOf(config.env),
      args: c.args,
    };
    let worker: Worker;
    try {
      worker = new Worker(runtimeUrl, {
        workerData: boot,
        transferList: [hc.port2, async.port2, ...c.transfer],
        resourceLimits: { maxOldGenerationSizeMb: c.maxHeapMb },
        stdout: c.pipe,
        stderr: c.pipe,
        name: `dom${domid}:${name}`,
      });
    } catch (e) {
      this.release(domid);
      throw e;
    }
    const dom = new Domain(domid, name, c.privileged, c.pages, this, worker, counters, hypCounters, c.native);
    this.live.set(domid, dom);
    this.all.set(domid, dom);

    const words = new Int32Array(replyWord);
    hc.port1.on("message", (req: HypercallRequest) => {
      answerHypercall(hc.port1, words, this.serveHypercall(rec, req));
    });
    async.port1.on("message", (msg: AsyncToHypervisor) => this.serveAsync(rec, async.port1, msg));

    worker.on("message", (m: GuestControlMessage) => {
      if (m.type === "running") {
        if (dom.state === "booting") dom.state = "running";
        dom.emit("running");
      } else if (m.type === "user") {
        dom.deliver(m.data);
      } else if (m.type === "output") {
        // Into the worker's own stdio stream: piped or inherited as Node does it, in order.
        const s = m.stream === "stderr" ? worker.stderr : worker.stdout;
        if (typeof m.text === "string" && !s.readableEnded && !s.destroyed) s.push(m.text);
      } else if (m.type === "exit") {
        this.stopDomain(dom, "shutdown", { result: m.result });
      } else if (m.type === "crash") {
        const err = new Error(m.error.message);
        err.name = m.error.name;
        if (m.error.stack) err.stack = m.error.stack;
        this.stopDomain(dom, "crashed", { error: err });
      }
    });
    worker.on("error", (err) => this.stopDomain(dom, "crashed", { error: err }));
    worker.on("exit", (code) => {
      if (code === 0) this.stopDomain(dom, "shutdown", {});
      else
        this.stopDomain(dom, "crashed", {
          error: new Error(`domain ${domid} (${name}) exited with code ${code}`),
        });
      hc.port1.close();
      async.port1.close();
    });
    // Resolve once the guest program is loaded and main is about to run (or boot failed).
    await new Promise<void>((resolve) => {
      dom.once("running", resolve);
      void dom.exited.then(() => resolve());
    });
    return dom;
  }

  domain(domid: DomId): Domain | undefined {
    return this.all.get(domid);
  }

  domains(): Domain[] {
    return [...this.all.values()];
  }

  counters(domid: DomId): CounterSnapshot {
    const d = this.all.get(domid);
    if (!d) throw new RangeError(`no domain ${domid}`);
    return d.counters();
  }

  /** Destroys a domain: terminates its worker if running and releases everything it held. */
  async destroyDomain(domid: DomId): Promise<void> {
    const dom = this.all.get(domid);
    if (!dom) throw new RangeError(`destroyDomain: no domain ${domid}`);
    await this.destroyDomainObject(dom);
  }

  /** @internal By identity: a stopped domain's id may since belong to a new domain. */
  async destroyDomainObject(dom: Domain): Promise<void> {
    if (dom.state === "destroyed") return;
    const wasRunning = dom.state === "running" || dom.state === "booting";
    if (wasRunning) this.stopDomain(dom, "destroyed", {});
    else dom.settle("destroyed", {});
    await dom.worker.terminate();
    if (this.all.get(dom.domid) === dom) this.all.delete(dom.domid);
  }

  /** Destroys every domain (the host shuts down). */
  async shutdown(): Promise<void> {
    await Promise.all([...this.all.keys()].map((d) => this.destroyDomain(d)));
  }

  private stopDomain(
    dom: Domain,
    state: "shutdown" | "crashed" | "destroyed",
    detail: { result?: unknown; error?: Error },
  ) {
    if (!dom.settle(state, detail)) return;
    this.release(dom.domid);
    // A host runs for weeks: keep the last stopped domains for lookups, not every one ever.
    this.stopped.push(dom);
    while (this.stopped.length > KEEP_STOPPED_DOMAINS) {
      const old = this.stopped.shift()!;
      if (this.all.get(old.domid) === old) this.all.delete(old.domid);
    }
    // A guest that returned or crashed leaves nothing running behind it.
    // (A moment's grace first: output the guest printed last is still on its way to the host.)
    if (state !== "destroyed") setTimeout(() => void dom.worker.terminate(), 50).unref();
  }

  /** Releases a stopped domain's grants, mappings, ports and XenStore subtree. */
  private release(domid: DomId): void {
    const rec = this.records.get(domid);
    if (!rec) return;
    this.live.delete(domid);
    for (const m of rec.mappings.values())
      if (m.write) for (const r of m.refs) releaseGrant(m.granter, r, true);
    rec.mappings.clear();
    // Its segments go with it: no frame of theirs resolves again (holders keep what they mapped).
    for (const sg of rec.segments) sg.released = true;
    rec.segments.length = 0;
    rec.sharedPages = 0;
    markGrantTableDead(rec.shadowBuffer);
    this.evtchn.closeAll(domid);
    if (domid !== 0) this.xenstore.releaseDomain(domid);
    this.records.delete(domid);
    for (const other of this.live.values()) {
      if (other.privileged) other.worker.postMessage({ type: "domain-gone", domid });
    }
  }

  // ---- hypercalls ---------------------------------------------------------------------------

  private serveHypercall(rec: DomainRecord, req: HypercallRequest) {
    rec.hyp.add("hypercalls");
    try {
      return { ok: true as const, value: this.execute(rec, req) };
    } catch (e) {
      if (e instanceof HypercallError) return { ok: false as const, errno: e.errno, message: e.message };
      // Garbage from a guest must never throw in the hypervisor: answer EINVAL with the reason.
      return {
        ok: false as const,
        errno: "EINVAL",
        message: `EINVAL: ${(e as Error)?.message ?? String(e)}`,
      };
    }
  }

  private count(rec: DomainRecord, name: CounterName, n = 1): void {
    rec.hyp.add(name, n);
  }

  private execute(rec: DomainRecord, req: HypercallRequest): unknown {
    if (req === null || typeof req !== "object")
      throw new HypercallError("EINVAL", "hypercall must be an object");
    switch (req.op) {
      case "grant_map":
        return this.grantMap(rec, req.domid, req.refs ?? req.ref, req.readonly === true);
      case "grant_unmap":
        return this.grantUnmap(rec, req.handle);
      case "grant_read":
        return this.grantRead(rec, req.handle, req.offset, req.length);
      case "grant_copy": {
        if (!Array.isArray(req.ops) || req.ops.length > 4096)
          throw new HypercallError("EINVAL", "grant_copy: ops must be an array of at most 4096 copies");
        const resolve = (d: DomId) => this.records.get(d);
        return req.ops.map((op: GrantCopyOp) => {
          const r = executeGrantCopy(op, rec.domid, resolve);
          if (r.status === GNTST.okay) {
            this.count(rec, "grant_copy");
            this.count(rec, "grant_copy_bytes", op.len);
          } else this.count(rec, "grant_errors");
          return r;
        });
      }
      case "evtchn_alloc_unbound":
        this.count(rec, "evtchn_alloc");
        return this.evtchn.allocUnbound(rec.domid, req.remoteDom);
      case "evtchn_bind_interdomain":
        this.count(rec, "evtchn_bind");
        return this.evtchn.bindInterdomain(rec.domid, req.remoteDom, req.remotePort);
      case "evtchn_close":
        this.count(rec, "evtchn_close");
        this.evtchn.close(rec.domid, req.port);
        return null;
      case "evtchn_status":
        return this.evtchn.status(rec.domid, req.port);
      case "mem_alloc_shared":
        return this.allocShared(rec, req.pages, req.audience);
      case "mem_share":
        return this.shareSegment(rec, req.pfn, req.domid);
      case "mem_release_shared":
        return this.releaseSegment(rec, req.pfn);
      case "foreign_domain":
        return this.foreignDomain(rec, req.domid);
      default:
        throw new HypercallError(
          "ENOSYS",
          `unknown hypercall ${JSON.stringify((req as { op?: unknown }).op)}`,
        );
    }
  }

  // ---- grant mappings ---------------------------------------------------------------------

  private mapFail(rec: DomainRecord, status: number, error: string) {
    this.count(rec, "grant_errors");
    return { status, error: `${gntstName(status)}: ${error}` };
  }

  /**
   * GNTTABOP_map_grant_ref, for a run of refs. Every check is here, on the host side of the
   * hypercall: the guest-side wrapper is a convenience a guest can step around.
   */
  private grantMap(rec: DomainRecord, granterId: DomId, refsArg: unknown, readonly: boolean) {
    const refs = Array.isArray(refsArg) ? refsArg : [refsArg];
    if (refs.length < 1 || refs.length > MAX_SEGMENT_PAGES || !refs.every((r) => Number.isInteger(r)))
      return this.mapFail(
        rec,
        GNTST.general_error,
        `grant_map takes 1..${MAX_SEGMENT_PAGES} integer grant refs, got ${refs.length === 1 ? String(refs[0]) : `${refs.length}`}`,
      );
    if (rec.mappings.size >= MAX_MAPPINGS_PER_DOMAIN)
      return this.mapFail(
        rec,
        GNTST.no_device_space,
        `domain ${rec.domid} already holds ${rec.mappings.size} mappings (the limit); unmap some first`,
      );
    const granter = this.records.get(granterId);
    if (!granter) return this.mapFail(rec, GNTST.bad_domain, `domain ${String(granterId)} does not exist`);
    if (readonly) {
      // A right to copy, not a buffer: checked now, and again (against the grant as it is then) on every read.
      for (const ref of refs) {
        const r = acquireGrant(granter, ref as number, rec.domid, false);
        if (r.status !== GNTST.okay) {
          this.count(rec, "grant_errors");
          return r;
        }
        releaseGrant(granter, ref as number, false);
      }
      const handle = rec.nextHandle++;
      rec.mappings.set(handle, { granter, refs: refs.slice() as number[], write: false });
      this.count(rec, "grant_map");
      return { status: GNTST.okay, handle };
    }
    const frames: FrameLocation[] = [];
    const unpin = (n: number) => {
      for (let j = 0; j < n; j++) releaseGrant(granter, refs[j] as number, true);
    };
    for (let i = 0; i < refs.length; i++) {
      const r = acquireGrant(granter, refs[i] as number, rec.domid, true);
      if (r.status !== GNTST.okay) {
        unpin(i);
        this.count(rec, "grant_errors");
        return r;
      }
      frames.push(r.frame!);
    }
    const shape = this.mappable(rec, granter, refs as number[], frames);
    if (typeof shape === "string") {
      unpin(refs.length);
      const status = shape.startsWith("!") ? GNTST.permission_denied : GNTST.bad_page;
      return this.mapFail(rec, status, shape.replace(/^!/, ""));
    }
    const handle = rec.nextHandle++;
    rec.mappings.set(handle, { granter, refs: refs.slice() as number[], write: true });
    this.count(rec, "grant_map");
    return { status: GNTST.okay, handle, buffer: shape.buffer, offset: shape.offset };
  }

  /**
   * What a writable mapping of `frames` may hand out, or why not ("!" = permission). A guest
   * gets a whole segment (every page granted, in order) if it is in the segment's audience;
   * the privileged domain may also map consecutive RAM frames, as dom0 maps any guest page.
   */
  private mappable(
    rec: DomainRecord,
    granter: DomainRecord,
    refs: number[],
    frames: FrameLocation[],
  ): { buffer: SharedArrayBuffer; offset: number } | string {
    const first = frames[0];
    const sg = first.segment as Segment | undefined;
    if (!sg) {
      if (!rec.privileged)
        return (
          `grant ref ${refs[0]} of domain ${granter.domid} names a RAM frame, which only the privileged ` +
          "domain may map writable; grant a page from guest.allocShared() to share it with another guest " +
          "(or map it read-only, which gives copies)"
        );
      for (let i = 1; i < frames.length; i++)
        if (frames[i].segment || frames[i].offset !== first.offset + i * PAGE_SIZE)
          return `grant refs ${refs.join(",")} of domain ${granter.domid} are not consecutive RAM frames`;
      return { buffer: first.buffer, offset: first.offset };
    }
    if (frames.length !== sg.pages || first.offset !== 0)
      return (
        `grant refs ${refs.join(",")} of domain ${granter.domid} cover ${frames.length} page(s) from page ` +
        `${first.offset / PAGE_SIZE} of a ${sg.pages}-page shared segment; a mapping gives the whole segment, ` +
        "so it takes a grant of every page of it, in order"
      );
    for (let i = 1; i < frames.length; i++)
      if (frames[i].segment !== sg || frames[i].offset !== i * PAGE_SIZE)
        return `grant ref ${refs[i]} of domain ${granter.domid} is not page ${i} of the segment the others name`;
    if (!rec.privileged && rec !== sg.owner) {
      if (sg.open) {
        sg.audience.add(rec.serial);
        sg.open = false;
      } else if (!sg.audience.has(rec.serial))
        return (
          `!the shared segment at frame ${sg.firstPfn} of domain ${granter.domid} is not shared with domain ${rec.domid}; ` +
          "its owner must add it (guest.shareWith) before granting it"
        );
    }
    sg.holders.add(rec.serial);
    return { buffer: sg.buffer, offset: 0 };
  }

  private grantUnmap(rec: DomainRecord, handle: number) {
    const m = rec.mappings.get(handle);
    if (!m)
      return this.mapFail(rec, GNTST.bad_handle, `domain ${rec.domid} has no mapping ${String(handle)}`);
    rec.mappings.delete(handle);
    if (m.write) for (const r of m.refs) releaseGrant(m.granter, r, true);
    this.count(rec, "grant_unmap");
    return { status: GNTST.okay };
  }

  /**
   * A copy out of a read-only mapping. The grant is checked (and pinned for the copy) as it is
   * now: a granter that ended it, or died, is not read, whatever the mapping once allowed.
   */
  private grantRead(rec: DomainRecord, handle: number, offset: number, length: number) {
    const m = rec.mappings.get(handle);
    if (!m || m.write)
      return this.mapFail(
        rec,
        GNTST.bad_handle,
        `domain ${rec.domid} has no read-only mapping ${String(handle)}`,
      );
    const total = m.refs.length * PAGE_SIZE;
    if (
      !Number.isInteger(offset) ||
      !Number.isInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > total
    )
      return this.mapFail(
        rec,
        GNTST.bad_copy_arg,
        `read of ${String(length)} bytes at ${String(offset)} is outside the ${total}-byte mapping`,
      );
    if (this.records.get(m.granter.domid) !== m.granter)
      return this.mapFail(rec, GNTST.bad_domain, `domain ${m.granter.domid} is gone`);
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const page = Math.floor(at / PAGE_SIZE);
      const inPage = at % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - inPage, length - done);
      const r = acquireGrant(m.granter, m.refs[page], rec.domid, false);
      if (r.status !== GNTST.okay) {
        this.count(rec, "grant_errors");
        return r;
      }
      out.set(new Uint8Array(r.frame!.buffer, r.frame!.offset + inPage, n), done);
      releaseGrant(m.granter, m.refs[page], false);
      done += n;
    }
    this.count(rec, "grant_read");
    return { status: GNTST.okay, bytes: out };
  }

  // ---- shared segments ----------------------------------------------------------------------

  private allocShared(rec: DomainRecord, pages: unknown, audience: unknown) {
    if (!Number.isInteger(pages) || (pages as number) < 1 || (pages as number) > MAX_SEGMENT_PAGES)
      throw new HypercallError(
        "EINVAL",
        `mem_alloc_shared: pages must be an integer in 1..${MAX_SEGMENT_PAGES}, got ${String(pages)}`,
      );
    const n = pages as number;
    const members = new Set<number>();
    if (audience !== undefined) {
      if (!Array.isArray(audience) || audience.length > 64)
        throw new HypercallError(
          "EINVAL",
          "mem_alloc_shared: audience must be an array of at most 64 domain ids",
        );
      for (const d of audience) {
        const peer = Number.isInteger(d) ? this.records.get(d as DomId) : undefined;
        if (!peer) throw new HypercallError("ESRCH", `mem_alloc_shared: domain ${String(d)} does not exist`);
        if (peer !== rec) members.add(peer.serial);
      }
    }
    if (rec.sharedPages + n > rec.maxSharedPages)
      throw new HypercallError(
        "ENOMEM",
        `domain ${rec.domid} may have at most ${rec.maxSharedPages} shared pages (has ${rec.sharedPages}, asked ${n}); ` +
          "release segments it no longer needs, or raise maxSharedPages in createDomain",
      );
    const firstPfn = rec.nrPages + rec.sharedFrames;
    if (firstPfn + n > 0xffffffff)
      throw new HypercallError("ENOMEM", `domain ${rec.domid} has used up its shared frame numbers`);
    const sg = new Segment(
      rec,
      firstPfn,
      n,
      new SharedArrayBuffer(n * PAGE_SIZE),
      members,
      audience === undefined,
    );
    rec.segments.push(sg);
    rec.sharedFrames += n;
    rec.sharedPages += n;
    this.count(rec, "mem_shared_alloc", n);
    return { pfn: firstPfn, buffer: sg.buffer };
  }

  private ownSegment(rec: DomainRecord, pfn: unknown, op: string): Segment {
    const sg = Number.isInteger(pfn) ? rec.segmentAt(pfn as number) : undefined;
    if (!sg || sg.firstPfn !== pfn)
      throw new HypercallError(
        "EINVAL",
        `${op}: frame ${String(pfn)} does not start a shared segment of domain ${rec.domid}`,
      );
    return sg;
  }

  private shareSegment(rec: DomainRecord, pfn: unknown, domid: unknown) {
    const sg = this.ownSegment(rec, pfn, "mem_share");
    const peer = Number.isInteger(domid) ? this.records.get(domid as DomId) : undefined;
    if (!peer) throw new HypercallError("ESRCH", `mem_share: domain ${String(domid)} does not exist`);
    if (peer !== rec) sg.audience.add(peer.serial);
    sg.open = false;
    return null;
  }

  private releaseSegment(rec: DomainRecord, pfn: unknown) {
    const sg = this.ownSegment(rec, pfn, "mem_release_shared");
    rec.segments.splice(rec.segments.indexOf(sg), 1);
    rec.sharedPages -= sg.pages;
    sg.released = true;
    this.count(rec, "mem_shared_release", sg.pages);
    // The privileged domain caches foreign segments for in-place copies: it must look again.
    for (const other of this.live.values())
      if (other.privileged && other.domid !== rec.domid)
        other.worker.postMessage({ type: "foreign-stale", domid: rec.domid });
    return null;
  }

  // ---- domain ids ---------------------------------------------------------------------------

  /**
   * The next domain id, round robin as Xen's toolstack does, so an id comes back only after
   * the others were used. An id is skipped while anything still names it — a grant in force
   * in a live domain's table, an event channel waiting for it, a XenStore permission — so a
   * new domain never inherits what was meant for an old one.
   */
  private allocDomid(): DomId {
    for (let tries = 0; tries < DOMID_MAX; tries++) {
      const d = this.nextDomid;
      this.nextDomid = d >= DOMID_MAX ? 1 : d + 1;
      if (this.records.has(d) || this.all.has(d)) continue;
      if (this.isNamed(d)) continue;
      return d;
    }
    throw new RangeError(
      `createDomain: all ${DOMID_MAX} domain ids are in use (or still named by a live domain's grants, event channels or XenStore permissions)`,
    );
  }

  private isNamed(d: DomId): boolean {
    for (const r of this.records.values()) if (r.grantsTo(d)) return true;
    return this.evtchn.waitsFor(d) || this.xenstore.referencesDomain(d);
  }

  /** The privileged domain's foreign access: everything it needs to validate and copy grants in place. */
  private foreignDomain(rec: DomainRecord, domid: DomId) {
    if (!rec.privileged) throw new HypercallError("EPERM", `domain ${rec.domid} is not privileged`);
    const d = this.records.get(domid);
    if (!d) throw new HypercallError("ESRCH", `domain ${String(domid)} does not exist`);
    return {
      domid,
      ram: d.ram,
      nrPages: d.nrPages,
      table: d.table,
      shadow: d.shadowBuffer,
      segments: d.segments.map((s) => ({ firstPfn: s.firstPfn, pages: s.pages, buffer: s.buffer })),
    };
  }

  private serveAsync(rec: DomainRecord, port: MessagePort, msg: AsyncToHypervisor): void {
    if (msg?.kind !== "xenstore") return;
    const send = (m: AsyncToGuest) => port.postMessage(m);
    try {
      const value = executeXenStoreRequest(this.xenstore, rec.domid, msg.req, (path, token) =>
        send({ kind: "watch", path, token }),
      );
      send({ kind: "xenstore-reply", id: msg.id, ok: true, value });
    } catch (e) {
      rec.hyp.add("xenstore_errors");
      const err =
        e instanceof XenStoreError
          ? { errno: e.errno, message: e.message, path: e.path }
          : { errno: "EINVAL", message: `EINVAL: ${(e as Error)?.message ?? String(e)}`, path: "" };
      send({ kind: "xenstore-reply", id: msg.id, ok: false, error: err });
    }
  }
}

export { fileURLToPath };

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
import { DOMID_MAX, type DomId, GNTST, PAGE_SIZE } from "./abi.js";
import {
  allocCounterBuffer,
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
  type GrantCopyOp,
  type GrantingDomain,
  markGrantTableDead,
  releaseGrant,
} from "./grant-table.js";
import {
  type AsyncToGuest,
  type AsyncToHypervisor,
  answerHypercall,
  type HypercallRequest,
} from "./hypercall.js";
import { executeXenStoreRequest, LocalXenStoreClient, XenStore, XenStoreError } from "./xenstore.js";

export type DomainState = "booting" | "running" | "shutdown" | "crashed" | "destroyed";

export interface DomainConfig {
  /** The guest program: a path or file URL of a TypeScript or JavaScript module whose default export is `main(guest)`. */
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
  /** Objects in `args` to transfer rather than clone (MessagePorts handed to the domain). */
  transfer?: TransferListItem[];
  /**
   * A native process rather than a VM: a thread of the driver domain's OS, with its own
   * memory and no Xen devices (the reference point the bypass path is measured against).
   */
  native?: boolean;
  /** "pipe": the guest's stdout/stderr become `domain.stdout`/`domain.stderr` streams (a launcher prefixes them). */
  output?: "inherit" | "pipe";
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
  args: unknown;
}

/** Control messages from the guest runtime to the hypervisor, on the worker's parentPort. */
export type GuestControlMessage =
  | { type: "running" }
  | { type: "exit"; result: unknown }
  | { type: "crash"; error: { name: string; message: string; stack?: string } }
  | { type: "user"; data: unknown };

interface Segment {
  firstPfn: number;
  pages: number;
  buffer: SharedArrayBuffer;
}

interface Mapping {
  granter: DomainRecord;
  ref: number;
  write: boolean;
}

/** Everything the hypervisor keeps for one domain. */
class DomainRecord implements GrantingDomain {
  readonly entries: Uint32Array;
  readonly shadow: Int32Array;
  readonly segments: Segment[] = [];
  sharedPages = 0;
  readonly mappings = new Map<number, Mapping>();
  nextHandle = 1;
  readonly hyp: CounterWriter;

  constructor(
    readonly domid: DomId,
    readonly privileged: boolean,
    readonly ram: SharedArrayBuffer,
    readonly nrPages: number,
    readonly table: SharedArrayBuffer,
    readonly shadowBuffer: SharedArrayBuffer,
    readonly counters: SharedArrayBuffer,
    readonly maxSharedPages: number,
  ) {
    this.entries = new Uint32Array(table);
    this.shadow = new Int32Array(shadowBuffer);
    this.hyp = new CounterWriter(counters, CounterBlock.Hypervisor);
  }

  frame(pfn: number): FrameLocation | undefined {
    if (!Number.isInteger(pfn) || pfn < 0) return undefined;
    if (pfn < this.nrPages) return { buffer: this.ram, offset: pfn * PAGE_SIZE, shareable: false };
    for (const s of this.segments) {
      if (pfn >= s.firstPfn && pfn < s.firstPfn + s.pages)
        return { buffer: s.buffer, offset: (pfn - s.firstPfn) * PAGE_SIZE, shareable: true };
    }
    return undefined;
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

  /** Counters of hypervisor work done by or for this domain. */
  counters(): CounterSnapshot {
    return readCounters(this.counterBuffer);
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
    await this.hv.destroyDomain(this.domid);
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

/** Validates a createDomain config; throws a TypeError/RangeError naming the bad field. */
function checkConfig(c: DomainConfig): Required<Omit<DomainConfig, "args" | "name" | "output">> & {
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
    let domid: DomId;
    if (c.privileged) {
      if (this.records.has(0))
        throw new Error("createDomain: a privileged domain (domain 0) already runs on this host");
      domid = 0;
    } else {
      if (this.nextDomid > DOMID_MAX) throw new RangeError("createDomain: out of domain ids");
      domid = this.nextDomid++;
    }
    const name = c.name ?? (c.privileged ? "Domain-0" : c.native ? `native-${domid}` : `domU-${domid}`);
    const ram = new SharedArrayBuffer(c.pages * PAGE_SIZE);
    const { table, shadow } = allocGrantTable(c.grantEntries);
    const counters = allocCounterBuffer();
    const rec = new DomainRecord(
      domid,
      c.privileged,
      ram,
      c.pages,
      table,
      shadow,
      counters,
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
    const dom = new Domain(domid, name, c.privileged, c.pages, this, worker, counters, c.native);
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
    if (dom.state === "destroyed") return;
    const wasRunning = dom.state === "running" || dom.state === "booting";
    if (wasRunning) this.stopDomain(dom, "destroyed", {});
    else dom.settle("destroyed", {});
    await dom.worker.terminate();
    this.all.delete(domid);
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
    // A guest that returned or crashed leaves nothing running behind it.
    // (A moment's grace first: output the guest printed last is still on its way to the host.)
    if (state !== "destroyed") setTimeout(() => void dom.worker.terminate(), 50).unref();
  }

  /** Releases a stopped domain's grants, mappings, ports and XenStore subtree. */
  private release(domid: DomId): void {
    const rec = this.records.get(domid);
    if (!rec) return;
    this.live.delete(domid);
    for (const m of rec.mappings.values()) releaseGrant(m.granter, m.ref, m.write);
    rec.mappings.clear();
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
        return this.grantMap(rec, req.domid, req.ref, req.readonly === true);
      case "grant_unmap":
        return this.grantUnmap(rec, req.handle);
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
      case "mem_register_shared":
        return this.registerShared(rec, req.buffer, req.pages);
      case "foreign_domain":
        return this.foreignDomain(rec, req.domid);
      default:
        throw new HypercallError(
          "ENOSYS",
          `unknown hypercall ${JSON.stringify((req as { op?: unknown }).op)}`,
        );
    }
  }

  private grantMap(rec: DomainRecord, granterId: DomId, ref: number, readonly: boolean) {
    const granter = this.records.get(granterId);
    if (!granter) {
      this.count(rec, "grant_errors");
      return {
        status: GNTST.bad_domain,
        error: `GNTST_bad_domain: domain ${String(granterId)} does not exist`,
      };
    }
    const r = acquireGrant(granter, ref, rec.domid, !readonly);
    if (r.status !== GNTST.okay) {
      this.count(rec, "grant_errors");
      return r;
    }
    const frame = r.frame!;
    if (!frame.shareable && !rec.privileged) {
      releaseGrant(granter, ref, !readonly);
      this.count(rec, "grant_errors");
      return {
        status: GNTST.bad_page,
        error:
          `GNTST_bad_page: grant ref ${ref} of domain ${granterId} names a RAM frame, which only the privileged ` +
          "domain may map; grant a page from guest.allocShared() to share it with another guest",
      };
    }
    const handle = rec.nextHandle++;
    rec.mappings.set(handle, { granter, ref, write: !readonly });
    this.count(rec, "grant_map");
    return { status: GNTST.okay, handle, buffer: frame.buffer, offset: frame.offset };
  }

  private grantUnmap(rec: DomainRecord, handle: number) {
    const m = rec.mappings.get(handle);
    if (!m) {
      this.count(rec, "grant_errors");
      return {
        status: GNTST.bad_handle,
        error: `GNTST_bad_handle: domain ${rec.domid} has no mapping ${String(handle)}`,
      };
    }
    rec.mappings.delete(handle);
    releaseGrant(m.granter, m.ref, m.write);
    this.count(rec, "grant_unmap");
    return { status: GNTST.okay };
  }

  private registerShared(rec: DomainRecord, buffer: SharedArrayBuffer, pages: number) {
    if (
      !(buffer instanceof SharedArrayBuffer) ||
      !Number.isInteger(pages) ||
      pages < 1 ||
      buffer.byteLength !== pages * PAGE_SIZE
    )
      throw new HypercallError(
        "EINVAL",
        "mem_register_shared: need a SharedArrayBuffer of exactly `pages` × 4096 bytes",
      );
    if (rec.sharedPages + pages > rec.maxSharedPages)
      throw new HypercallError(
        "ENOMEM",
        `domain ${rec.domid} may register at most ${rec.maxSharedPages} shared pages (has ${rec.sharedPages}, asked ${pages}); ` +
          "raise maxSharedPages in createDomain",
      );
    const firstPfn = rec.nrPages + rec.sharedPages;
    rec.segments.push({ firstPfn, pages, buffer });
    rec.sharedPages += pages;
    this.count(rec, "mem_shared_alloc", pages);
    return firstPfn;
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
      segments: d.segments.map((s) => ({ ...s })),
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

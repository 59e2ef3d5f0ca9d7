/**
 * The hypervisor: builds domains (worker threads with their own isolate, memory limits and
 * guest-physical memory), owns their grant tables, event-channel ports and XenStore entries,
 * serves their hypercalls, and tears all of it down when a domain stops.
 *
 * It runs in the host process's main thread. Guests reach it only through their hypercall
 * channel (hypercall.ts); the data path (event-channel sends and waits, rings, the privileged
 * domain's grant copies) never passes through here.
 *
 * This file is the lifecycle (create, stop, release, domain ids) and the hypercall dispatch.
 * Its parts under hypervisor/: domain.ts (Domain and DomainConfig, the host's view),
 * memory-hypercalls.ts (grant map/unmap/read and shared segments: the checks on memory),
 * domain-record.ts (what it keeps per domain, never handed out). Grant copies, event channels
 * and XenStore have their own files one level up (grant-table.ts, event-channel.ts, xenstore/).
 */
import { fileURLToPath } from "node:url";
import { inspect } from "node:util";
import { MessageChannel, type MessagePort, Worker } from "node:worker_threads";
import { DOMID_MAX, type DomId, GNTST, PAGE_SIZE } from "./abi.js";
import { bundledGuestScript } from "./bundles.js";
import {
  allocCounterBuffer,
  allocPrivateCounterBlock,
  type CounterName,
  type CounterSnapshot,
} from "./counters.js";
import { EventChannelTable, HypercallError } from "./event-channel.js";
import {
  allocGrantTable,
  executeGrantCopy,
  type GrantCopyOp,
  markGrantTableDead,
  releaseGrant,
  segmentGeneration,
} from "./grant-table.js";
import { type GuestImage, loadGuestImage } from "./guest/loader.js";
import { sesCodeCache } from "./guest/ses-cache.js";
import { HOST_LINK_BYTES, HostLinkCredit, OutputCredit, validCost } from "./host-link.js";
import {
  type AsyncToGuest,
  type AsyncToHypervisor,
  answerHypercall,
  HYPERCALL_LIST_MAX,
  type HypercallRequest,
} from "./hypercall.js";
import { BufferWatch } from "./hypervisor/buffer-watch.js";
import {
  checkConfig,
  Domain,
  type DomainConfig,
  envOf,
  type GuestBootData,
  type GuestControlMessage,
  toModuleUrl,
} from "./hypervisor/domain.js";
import { DomainRecord } from "./hypervisor/domain-record.js";
import { MemoryHypercalls } from "./hypervisor/memory-hypercalls.js";
import { prepareReclaim, reclaimSoon } from "./reclaim.js";
import type { SyncReply } from "./sync-call.js";
import { WatchEventSender, XS_CREDIT_BYTES } from "./xenstore/port-credit.js";
import { executeXenStoreRequest, LocalXenStoreClient, XenStore, XenStoreError } from "./xenstore.js";

export {
  Domain,
  type DomainConfig,
  type DomainExit,
  type DomainState,
  type GuestBootData,
  type GuestControlMessage,
} from "./hypervisor/domain.js";
export { MAX_MAPPINGS_PER_DOMAIN, MAX_SEGMENT_PAGES } from "./hypervisor/domain-record.js";

/** The error name of a guest stopped for holding more ArrayBuffers than its maxBufferMb. */
export const BUFFER_LIMIT_ERROR = "BufferLimitError";
const MIB = 2 ** 20;
/** Ops of a GNTTABOP_copy served in one turn of the hypervisor's thread (1 MiB of page copies). */
export const GRANT_COPY_SLICE = 256;

/** Stopped domains the hypervisor still answers lookups for (domain(), counters()). */
export const KEEP_STOPPED_DOMAINS = 256;
/**
 * Released domain ids one unprivileged domain's grants and ports may keep from reuse: an honest
 * domain names a few dead peers at a time (namedReleasedIds says why there is a bound).
 */
export const MAX_HELD_RELEASED_IDS = 32;

const runtimeUrl = new URL("./guest/runtime.js", import.meta.url);

export class Hypervisor {
  readonly xenstore = new XenStore();
  readonly evtchn: EventChannelTable;
  /** The host's own XenStore access, as the toolstack in dom0 has. */
  readonly toolstack: LocalXenStoreClient;
  private readonly records = new Map<DomId, DomainRecord>();
  private readonly live = new Map<DomId, Domain>();
  private readonly all = new Map<DomId, Domain>();
  private nextDomid = 1;
  /** Ids taken by createDomain calls whose program is still compiling (no record yet). */
  private readonly reserved = new Set<DomId>();
  /** Ids of released domains not handed out since (allocDomid skips those still named). */
  private readonly releasedIds = new Set<DomId>();
  private serials = 0;
  private readonly stopped: Domain[] = [];
  /** Grant mappings and shared segments: the memory hypercalls and their checks. */
  private readonly memory: MemoryHypercalls;
  /** Meters each guest's ArrayBuffers against its maxBufferMb. */
  private readonly buffers: BufferWatch;
  /** Each watched domain's worker threadId, taken at start (a Worker's threadId reads -1 once it exited). */
  private readonly threadIds = new WeakMap<Domain, number>();
  /** Told when a domain leaves the lists (forget()). */
  private readonly forgetListeners = new Set<(dom: Domain) => void>();

  /**
   * `opts.meterFirstId`, for tests only: the buffer meter's first question id (buffer-watch.ts;
   * a test starts it near its wrap at 2^31). The host's own code makes the hypervisor; no
   * guest reaches this.
   */
  constructor(opts: { meterFirstId?: number } = {}) {
    this.buffers = new BufferWatch((m) => process.emitWarning(m), opts.meterFirstId);
    // Before any domain exists: a dead domain's RAM is collected soon after its worker exits.
    prepareReclaim();
    this.memory = new MemoryHypercalls(this.records, (domid) => {
      // The privileged domain's view of the domain may hold the released segment's buffer
      // (it already no longer resolves: the segment generation moved): let go of it now.
      for (const other of this.live.values())
        if (other.privileged && other.domid !== domid)
          other.worker.postMessage({ type: "foreign-stale", domid });
    });
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
    // The id is taken before the program compiles: ids go out in the order the calls came (a
    // job starts its ranks at once, in rank order), and no call waits for another's compile
    // (another job's program, however slow to compile, holds up no one).
    let domid: DomId;
    if (c.privileged) {
      if (this.records.has(0) || this.reserved.has(0))
        throw new Error("createDomain: a privileged domain (domain 0) already runs on this host");
      domid = 0;
    } else {
      domid = this.allocDomid();
    }
    this.reserved.add(domid);
    let image: GuestImage | undefined;
    try {
      // Compiled before anything else is allocated: a bad program fails its guest at boot, not the host.
      image = c.privileged ? undefined : await loadGuestImage(moduleUrl);
    } catch (e) {
      // Free again, checked as a released id is before its next use (allocDomid).
      if (domid !== 0) this.releasedIds.add(domid);
      throw e;
    } finally {
      // From here the record (made below, before any await) holds the id.
      this.reserved.delete(domid);
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
    const hostLink = new SharedArrayBuffer(HOST_LINK_BYTES);
    const credit = new HostLinkCredit(hostLink);
    const xsCredit = new SharedArrayBuffer(XS_CREDIT_BYTES);
    const xsEvents = new WatchEventSender(
      xsCredit,
      (e) => async.port1.postMessage(e satisfies AsyncToGuest),
      () => rec.hyp.add("xenstore_events_merged"),
    );
    rec.xsEvents = xsEvents;
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
      hostLink,
      xsCredit,
      hcPort: hc.port2,
      asyncPort: async.port2,
      moduleUrl,
      image,
      sesCache: image ? sesCodeCache() : undefined,
      env: envOf(config.env),
      args: c.args,
      paused: c.paused,
    };
    let worker: Worker;
    try {
      worker = new Worker(c.script ?? (image && bundledGuestScript(image)) ?? runtimeUrl, {
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
    const dom = new Domain(
      domid,
      name,
      c.privileged,
      c.pages,
      this,
      worker,
      counters,
      hypCounters,
      credit,
      c.native,
    );
    const output = new OutputCredit(credit);
    this.live.set(domid, dom);
    const former = this.all.get(domid);
    this.all.set(domid, dom);
    // A stopped domain kept for lookups whose id came round again is looked up no more.
    if (former) this.forgot(former);
    if (!c.privileged) {
      const limitMb = c.maxBufferMb;
      this.threadIds.set(dom, worker.threadId);
      this.buffers.watch(worker.threadId, limitMb * MIB, (held) => {
        const err = new Error(
          `domain ${domid} (${name}) held ${Math.ceil(held / MIB)} MiB of ArrayBuffers and typed arrays, over its limit of ${limitMb} MiB (maxBufferMb)`,
        );
        err.name = BUFFER_LIMIT_ERROR;
        this.stopDomain(dom, "crashed", { error: err });
        // At once, not after the usual grace for its last output: it may be writing fast.
        void worker.terminate();
      });
    }

    const words = new Int32Array(replyWord);
    hc.port1.on("message", (req: HypercallRequest) => {
      const answer = (reply: SyncReply) => answerHypercall(hc.port1, words, reply);
      if (req?.op === "grant_copy" && Array.isArray(req.ops) && req.ops.length > GRANT_COPY_SLICE)
        this.serveCopyInSlices(rec, req.ops, answer);
      else answer(this.serveHypercall(rec, req));
    });
    async.port1.on("message", (msg: AsyncToHypervisor) => this.serveAsync(rec, async.port1, xsEvents, msg));

    worker.on("message", (m: GuestControlMessage) => {
      if (m.type === "running") {
        if (dom.state === "booting") dom.state = "running";
        dom.emit("running");
      } else if (m.type === "user") {
        dom.deliver(m.data, validCost(m.cost));
      } else if (m.type === "output") {
        // Into the worker's own stdio stream: piped or inherited as Node does it, in order.
        const s = m.stream === "stderr" ? worker.stderr : worker.stdout;
        if (typeof m.text === "string" && !s.readableEnded && !s.destroyed) s.push(m.text);
        output.pushed(s, validCost(m.cost));
      } else if (m.type === "exit") {
        this.stopDomain(dom, "shutdown", { result: m.result });
      } else if (m.type === "crash") {
        const err = new Error(m.error.message);
        err.name = m.error.name;
        if (m.error.stack) err.stack = m.error.stack;
        this.stopDomain(dom, "crashed", { error: err });
      }
    });
    worker.on("error", (thrown: unknown) => this.stopDomain(dom, "crashed", { error: thrownError(thrown) }));
    worker.on("exit", (code) => {
      output.close();
      if (code === 0) this.stopDomain(dom, "shutdown", {});
      else
        this.stopDomain(dom, "crashed", {
          error: new Error(`domain ${domid} (${name}) exited with code ${code}`),
        });
      hc.port1.close();
      async.port1.close();
      dom.threadEnded();
      // Its RAM goes back to the OS once no thread holds it: collect here (dom0 and the NIC do too).
      reclaimSoon();
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

  /**
   * Calls `cb` with each domain as it leaves domains(): destroyed, the oldest stopped one no
   * longer kept, or a stopped one whose id a new domain took. So an observer need not hold a
   * Domain (and what it returned) to learn that it went. Returns the way to stop listening.
   */
  onForget(cb: (dom: Domain) => void): () => void {
    this.forgetListeners.add(cb);
    return () => this.forgetListeners.delete(cb);
  }

  private forgot(dom: Domain): void {
    for (const cb of this.forgetListeners) cb(dom);
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
    // Its owner is done with it: not kept for lookups either, with what it returned (a rank's
    // result of 32 MiB was held for the next 255 domains, in a daemon that never shows it).
    const kept = this.stopped.indexOf(dom);
    if (kept >= 0) this.stopped.splice(kept, 1);
    if (this.all.get(dom.domid) === dom) {
      this.all.delete(dom.domid);
      this.forgot(dom);
    }
  }

  /**
   * Destroys every domain (the host shuts down). By object, from a list taken first: a running
   * domain destroyed goes on the kept list, which past KEEP_STOPPED_DOMAINS forgets its oldest
   * (stopDomain), so a loop by id met ids forgotten meanwhile — after 256 guests, Host.stop
   * rejected "destroyDomain: no domain 2" and the NIC thread it never stopped kept the process
   * alive (a reviewer's PoC). Every domain is tried; the first failure is thrown after.
   */
  async shutdown(): Promise<void> {
    const results = await Promise.allSettled([...this.all.values()].map((d) => this.destroyDomainObject(d)));
    this.buffers.close();
    for (const r of results) if (r.status === "rejected") throw r.reason;
  }

  /**
   * What a running guest's isolate last reported (read every WATCH_INTERVAL_MS; zeros before,
   * and for the privileged domain): its ArrayBuffers and typed arrays, metered against its
   * maxBufferMb, and its JavaScript heap in use, garbage included.
   */
  guestMemory(domid: DomId): { buffers: number; heap: number } {
    const d = this.live.get(domid);
    const tid = d && this.threadIds.get(d);
    return tid === undefined ? { buffers: 0, heap: 0 } : this.buffers.held(tid);
  }

  /**
   * The shared-segment memory a live domain is charged for, in pages, against `max` (its
   * maxSharedPages): its live segments, the released ones it may still hold (`released`),
   * and other guests' segments it mapped writable (`mapped`). What the host keeps for it is
   * at most this (memory-hypercalls.ts, allocShared). Undefined for a domain that is gone.
   */
  sharedMemory(
    domid: DomId,
  ): { live: number; released: number; mapped: number; charged: number; max: number } | undefined {
    const rec = this.live.has(domid) ? this.records.get(domid) : undefined;
    if (!rec) return undefined;
    return {
      live: rec.sharedPages,
      released: rec.pooledPages,
      mapped: rec.foreignPages,
      charged: rec.chargedPages,
      max: rec.maxSharedPages,
    };
  }

  private stopDomain(
    dom: Domain,
    state: "shutdown" | "crashed" | "destroyed",
    detail: { result?: unknown; error?: Error },
  ) {
    if (!dom.settle(state, detail)) return;
    const tid = this.threadIds.get(dom);
    if (tid !== undefined) this.buffers.unwatch(tid);
    this.release(dom.domid);
    // A host runs for weeks: keep the last stopped domains for lookups, not every one ever.
    this.stopped.push(dom);
    while (this.stopped.length > KEEP_STOPPED_DOMAINS) {
      const old = this.stopped.shift()!;
      if (this.all.get(old.domid) === old) {
        this.all.delete(old.domid);
        this.forgot(old);
      }
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
    rec.mappedPages = 0;
    // Its segments go with it: no frame of theirs resolves again (holders keep what they mapped).
    for (const sg of rec.segments) sg.released = true;
    rec.segments.length = 0;
    rec.sharedPages = 0;
    // Its charge ends with it: its released segments, and the others' it mapped, are its no more.
    rec.pool.clear();
    rec.pooledPages = 0;
    rec.foreignPages = 0;
    markGrantTableDead(rec.shadowBuffer);
    rec.xsEvents?.close();
    this.evtchn.closeAll(domid);
    if (domid !== 0) this.xenstore.releaseDomain(domid);
    this.records.delete(domid);
    this.memory.forgetSerial(rec.serial);
    this.releasedIds.add(domid);
    for (const other of this.live.values()) {
      if (other.privileged) other.worker.postMessage({ type: "domain-gone", domid });
    }
  }

  // ---- hypercalls ---------------------------------------------------------------------------

  private serveHypercall(rec: DomainRecord, req: HypercallRequest) {
    rec.hyp.add("hypercalls");
    // A stopped domain's thread runs on for a moment (its last output's grace, stopDomain)
    // and may still ask: nothing it asks for now would ever be released (its record is gone),
    // so a map would pin its granters' pages for good. Refused, as Xen refuses a dying domain.
    if (!this.serves(rec)) return { ok: false as const, errno: "ESRCH", message: gone(rec) };
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

  /** True while `rec` is its domain's live record: not released, its id not yet reused. */
  private serves(rec: DomainRecord): boolean {
    return this.records.get(rec.domid) === rec;
  }

  private count(rec: DomainRecord, name: CounterName, n = 1): void {
    rec.hyp.add(name, n);
  }

  /**
   * A long GNTTABOP_copy, GRANT_COPY_SLICE ops a turn of this thread's event loop (Xen preempts
   * one with a hypercall continuation): the guest waits for its answer as for any hypercall,
   * and every other domain's requests are served between. Whole, 4,096 page copies held the
   * thread 23 ms a call, and a guest calling it in a loop delayed every domain's hypercalls
   * and XenStore requests that long. Each op is checked against the grants as they stand when
   * its slice runs, as across Xen's continuations.
   */
  private serveCopyInSlices(rec: DomainRecord, ops: unknown[], answer: (reply: SyncReply) => void): void {
    if (ops.length > HYPERCALL_LIST_MAX) {
      // Refused whole by serveHypercall, as a short one.
      answer(this.serveHypercall(rec, { op: "grant_copy", ops: ops as GrantCopyOp[] }));
      return;
    }
    rec.hyp.add("hypercalls");
    const results: unknown[] = [];
    const slice = (): void => {
      if (!this.serves(rec)) {
        answer({ ok: false, errno: "ESRCH", message: gone(rec) });
        return;
      }
      const end = Math.min(ops.length, results.length + GRANT_COPY_SLICE);
      try {
        for (let i = results.length; i < end; i++) results.push(this.copyOne(rec, ops[i] as GrantCopyOp));
      } catch (e) {
        answer({ ok: false, errno: "EINVAL", message: `EINVAL: ${(e as Error)?.message ?? String(e)}` });
        return;
      }
      if (results.length < ops.length) setImmediate(slice);
      else answer({ ok: true, value: results });
    };
    slice();
  }

  /** One op of a GNTTABOP_copy, counted. */
  private copyOne(rec: DomainRecord, op: GrantCopyOp) {
    const r = executeGrantCopy(op, rec.domid, (d: DomId) => this.records.get(d));
    if (r.status === GNTST.okay) {
      this.count(rec, "grant_copy");
      this.count(rec, "grant_copy_bytes", op.len);
    } else this.count(rec, "grant_errors");
    return r;
  }

  private execute(rec: DomainRecord, req: HypercallRequest): unknown {
    if (req === null || typeof req !== "object")
      throw new HypercallError("EINVAL", "hypercall must be an object");
    switch (req.op) {
      case "grant_map":
        return this.memory.grantMap(rec, req.domid, req.refs ?? req.ref, req.readonly === true);
      case "grant_unmap":
        return this.memory.grantUnmap(rec, req.handle);
      case "grant_read":
        return this.memory.grantRead(rec, req.handle, req.offset, req.length);
      case "grant_copy":
        if (!Array.isArray(req.ops) || req.ops.length > HYPERCALL_LIST_MAX)
          throw new HypercallError(
            "EINVAL",
            `grant_copy: ops must be an array of at most ${HYPERCALL_LIST_MAX} copies`,
          );
        return req.ops.map((op: GrantCopyOp) => this.copyOne(rec, op));
      case "evtchn_alloc_unbound": {
        this.count(rec, "evtchn_alloc");
        const reused = this.evtchn.stats.reused;
        const grant = this.evtchn.allocUnbound(rec.domid, req.remoteDom);
        if (this.evtchn.stats.reused !== reused) this.count(rec, "evtchn_reuse");
        return grant;
      }
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
        return this.memory.allocShared(rec, req.pages, req.audience);
      case "mem_share":
        return this.memory.shareSegment(rec, req.pfn, req.domid);
      case "mem_release_shared":
        return this.memory.releaseSegment(rec, req.pfn);
      case "foreign_domain":
        return this.foreignDomain(rec, req.domid);
      case "foreign_frame":
        return this.foreignFrame(rec, req.domid, req.pfn);
      default:
        throw new HypercallError(
          "ENOSYS",
          `unknown hypercall ${JSON.stringify((req as { op?: unknown }).op)}`,
        );
    }
  }

  // ---- domain ids ---------------------------------------------------------------------------

  /**
   * The next domain id, round robin as Xen's toolstack does, so an id comes back only after
   * the others were used. The id of a released domain is skipped while a live domain's grant
   * in force or event channel still names it, so a new domain never inherits what was meant
   * for an old one. (XenStore need not be asked: a release revokes the id from every node's
   * perms.) An id never handed out is never held back: what a guest grants to a domain that
   * does not exist yet is its own offer to whoever gets that id, as in Xen; and one domain
   * holds back at most MAX_HELD_RELEASED_IDS released ids, so naming ids cannot use them up.
   */
  private allocDomid(): DomId {
    let named: Set<DomId> | undefined;
    for (let tries = 0; tries < DOMID_MAX; tries++) {
      const d = this.nextDomid;
      this.nextDomid = d >= DOMID_MAX ? 1 : d + 1;
      if (this.records.has(d) || this.all.has(d) || this.reserved.has(d)) continue;
      if (this.releasedIds.has(d)) {
        // One pass over every table and port, the first time a candidate needs it.
        named ??= this.namedReleasedIds();
        if (named.has(d)) continue;
        this.releasedIds.delete(d);
      }
      return d;
    }
    throw new RangeError(
      `createDomain: all ${DOMID_MAX} domain ids are in use, or belonged to domains that a live domain's grants or event channels still name`,
    );
  }

  /**
   * The released ids that some live domain's grant in force or event channel names: at most
   * MAX_HELD_RELEASED_IDS per unprivileged domain (the first its table and ports name). A stale
   * grant protects an honest granter's memory from a newcomer given the dead peer's id; a guest
   * that names every id (its grant table can be larger than the id space) would otherwise keep
   * every domain that dies in its lifetime from giving its id back, until the host can create
   * no domain at all.
   */
  private namedReleasedIds(): Set<DomId> {
    const named = new Set<DomId>();
    for (const r of this.records.values()) {
      const max = r.privileged ? Number.POSITIVE_INFINITY : MAX_HELD_RELEASED_IDS;
      const own = new Set<DomId>();
      r.collectNamed(this.releasedIds, own, max);
      this.evtchn.collectNamed(r.domid, this.releasedIds, own, max);
      for (const d of own) named.add(d);
    }
    return named;
  }

  /**
   * The privileged domain's foreign access: what it needs to validate and copy grants in place
   * (RAM, grant table, shadow). Never the domain's segments: those it asks for one frame at a
   * time (foreignFrame), so what a lookup costs does not grow with what the guest allocated.
   */
  private foreignDomain(rec: DomainRecord, domid: DomId) {
    if (!rec.privileged) throw new HypercallError("EPERM", `domain ${rec.domid} is not privileged`);
    const d = this.records.get(domid);
    if (!d) throw new HypercallError("ESRCH", `domain ${String(domid)} does not exist`);
    return { domid, ram: d.ram, nrPages: d.nrPages, table: d.table, shadow: d.shadowBuffer };
  }

  /**
   * Frame `pfn` of `domid`, above its RAM, for the privileged domain: the segment holding it
   * (its frames and buffer), or the run of frame numbers around it that no segment holds, as
   * of segment generation `gen` (grant-table.ts segmentGeneration). O(log segments) and one
   * segment at most, whatever frame a guest names: before, every frame above what dom0 knew
   * fetched the guest's whole segment list, ~80 ms a grant check at 16,000 segments, and a
   * guest that granted dom0 a bogus frame in every TX slot stalled netback for seconds a pass.
   */
  private foreignFrame(rec: DomainRecord, domid: DomId, pfn: unknown) {
    if (!rec.privileged) throw new HypercallError("EPERM", `domain ${rec.domid} is not privileged`);
    const d = this.records.get(domid);
    if (!d) throw new HypercallError("ESRCH", `domain ${String(domid)} does not exist`);
    if (!Number.isInteger(pfn) || (pfn as number) < d.nrPages || (pfn as number) >= 2 ** 32)
      throw new HypercallError(
        "EINVAL",
        `foreign_frame: frame ${String(pfn)} is not above domain ${domid}'s RAM (${d.nrPages} pages) and below 2^32`,
      );
    const gen = segmentGeneration(d.shadow);
    const run = d.segmentRun(pfn as number);
    if (!run.segment) return { gen, first: run.first, end: run.end };
    this.count(rec, "foreign_segments");
    return { gen, first: run.first, end: run.end, buffer: run.segment.buffer };
  }

  private serveAsync(
    rec: DomainRecord,
    port: MessagePort,
    events: WatchEventSender,
    msg: AsyncToHypervisor,
  ): void {
    if (msg?.kind !== "xenstore") return;
    const send = (m: AsyncToGuest) => port.postMessage(m);
    if (!this.serves(rec)) {
      // Its subtree and watches went with it (release): nothing of its may come back.
      send({
        kind: "xenstore-reply",
        id: msg.id,
        ok: false,
        error: { errno: "ESRCH", message: gone(rec), path: "" },
      });
      return;
    }
    try {
      // Replies go at once (the runtime's request window bounds them); watch events through
      // the domain's event window (xenstore/port-credit.ts).
      const value = executeXenStoreRequest(this.xenstore, rec.domid, msg.req, (path, token, watchPath) =>
        events.send(path, token, watchPath),
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

/**
 * What a guest's thread threw and nothing caught, as an Error of strings. Node hands the main
 * thread the thrown value as the guest made it (a clone): any shape, any types — `throw {
 * message: 42, stack: 7 }` reached the daemon's exit handler as is, whose `stack?.slice` threw,
 * and the host process ended with every tenant's jobs.
 */
export function thrownError(thrown: unknown): Error {
  const field = (k: string): string | undefined => {
    try {
      const v = (thrown as Record<string, unknown> | null)?.[k];
      return typeof v === "string" ? v : undefined;
    } catch {
      return undefined;
    }
  };
  const errorLike = typeof thrown === "object" && thrown !== null && typeof field("message") === "string";
  let shown: string;
  try {
    shown = inspect(thrown, { depth: 2, customInspect: false, maxStringLength: 1000, breakLength: Infinity });
  } catch {
    shown = "a value that cannot be shown";
  }
  const err = new Error(errorLike ? (field("message") as string) : `the guest threw ${shown.slice(0, 2000)}`);
  const name = field("name");
  if (errorLike && name !== undefined) err.name = name.slice(0, 256);
  const stack = field("stack");
  err.stack = errorLike && stack !== undefined ? stack : `${err.name}: ${err.message}`;
  return err;
}

/** What a stopped domain's thread is told when it still asks for something. */
function gone(rec: DomainRecord): string {
  return `ESRCH: domain ${rec.domid} has stopped; it can make no more requests`;
}

export { fileURLToPath };

/**
 * myrback's xenbus device (MyriBack): per frontend, the backend half of the xenbus handshake,
 * the control ring (copy, validate, answer) and the ops it carries, as Xen2MX's
 * omx_xenback.c. Its own file because it is the only part that reads guest-written bytes:
 * every request is copied out of the ring before it is checked, and every refusal becomes an
 * error status on the ring, never an exception. What a request may do is the registry's
 * decision (registry.ts), which memory it gets is SharedMemory's (shared-memory.ts).
 */

import type { MemoryRun, RegisterRegionReply } from "../../nic/control.js";
import { Access } from "../../nic/window.js";
import { type DomId, PAGE_SIZE, XenbusState } from "../../xen/abi.js";
import type { EventChannelPort } from "../../xen/event-channel.js";
import type { GrantMapping, Guest } from "../../xen/guest/guest.js";
import type { PageRun } from "../../xen/memory.js";
import { BackRing } from "../../xen/ring.js";
import { BackendDeviceWatcher, XenbusBackend } from "../../xen/xenbus.js";
import {
  CONNECT_FLAG_CHANNEL,
  CONNECT_FLAG_CLOSED,
  CONNECT_FLAG_LANE_POLICY,
  MAX_INDIRECT_PAGES,
  MAX_REGION_PAGES,
  MEMORY_TARGET_KEY,
  MYRI_DEVICE_TYPE,
  MYRI_PROTOCOL,
  MyriError,
  MyriStatus,
  type MyriStatusName,
  OP_COUNT,
  Op,
  REFS_PER_PAGE,
  REQ_ARG,
  REQ_BYTES,
  REQ_ENDPOINT,
  REQ_ID,
  REQ_INDIRECT,
  REQ_NR_INDIRECT,
  REQ_OP,
  RSP_BYTES,
  RSP_ID,
  RSP_MSG_LEN,
  RSP_NR_REFS,
  RSP_OP,
  RSP_PAGE_REF,
  RSP_STATUS,
  RSP_VAL,
  stripCode,
  XsKey,
} from "../protocol.js";
import type { ChannelRec, Client, EndpointRec } from "./records.js";
import type { MyriCore } from "./registry.js";
import { Stat } from "./stats.js";

type FrontState = "advertised" | "connecting" | "connected" | "closed";

interface Frontend {
  key: string;
  domid: DomId;
  devid: number;
  xb: XenbusBackend;
  state: FrontState;
  client?: Client;
  /** Stops following the device's `qos` node (qos-policy.ts). */
  unwatchQos?: () => Promise<void>;
  mapping?: GrantMapping;
  ring?: BackRing;
  port?: EventChannelPort;
  portNo?: number;
  rspRun?: PageRun;
  rspRef?: number;
  rspView?: DataView;
  unwatch?: () => Promise<void>;
  /** The frontend closed cleanly: it may re-initialise the device (Closed → Initialising). */
  reopenable?: boolean;
  /** The teardown in progress or done. */
  closing?: Promise<void>;
}

const encoder = new TextEncoder();
/**
 * How long one frontend's ring is served before the others get a turn, ms (at least one
 * request is). The thread serves every guest's set-up, and a request's cost is the guest's to
 * choose: a REGISTER of 32,768 pages that fails at its last page pins and unpins them all
 * (15–19 ms here) and costs the guest nothing, so 16 of them a turn held every other guest's
 * requests 230–300 ms at a time, for as long as one guest liked.
 */
export const RING_SLICE_MS = 2;

/** Serves every guest's myri device: the xenbus backend handshake, then its control ring. */
export class MyriBack {
  private readonly fronts = new Map<string, Frontend>();
  private stopped = false;
  private readonly watcher: BackendDeviceWatcher<Frontend>;

  constructor(
    private readonly guest: Guest,
    private readonly core: MyriCore,
  ) {
    this.watcher = new BackendDeviceWatcher<Frontend>(guest.xenstore, MYRI_DEVICE_TYPE, {
      devices: () => this.fronts.values(),
      add: (domid, devid, key) => this.startDevice(domid, devid, key),
      removed: async (f, why) => {
        await this.teardown(f, why);
        await this.forget(f);
        this.core.forgetDomain(f.domid);
      },
      domainGone: async (f, why) => {
        await this.teardown(f, why);
        this.core.forgetDomain(f.domid);
      },
      log: (m) => this.log(m),
    });
  }

  private get stats(): Int32Array {
    return this.core.cfg.stats;
  }

  private log(msg: string): void {
    this.core.cfg.log(msg);
  }

  /** Starts watching for frontends (the toolstack's device directories). */
  async start(): Promise<void> {
    await this.watcher.start();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.watcher.stop();
    for (const f of [...this.fronts.values()]) {
      await this.teardown(f, "the driver domain is stopping");
      await this.forget(f);
    }
  }

  /** Frontends currently connected (for diagnostics). */
  connected(): { domid: DomId; devid: number; state: string }[] {
    return [...this.fronts.values()].map((f) => ({ domid: f.domid, devid: f.devid, state: f.state }));
  }

  private async startDevice(domid: DomId, devid: number, key: string): Promise<void> {
    // One backend object per device: a walk of the device directories and a reopen may both
    // come here for the same key (the reopen's forget leaves it free for a moment), and a
    // second object would hold a watch on the guest's state that nothing ever removes.
    if (this.fronts.has(key) || this.stopped) return;
    const xb = new XenbusBackend(this.guest.xenstore, MYRI_DEVICE_TYPE, domid, devid);
    const f: Frontend = { key, domid, devid, xb, state: "advertised" };
    this.fronts.set(key, f);
    this.core.deviceAdded(domid);
    try {
      const target = await this.guest.xenstore.tryRead(`/local/domain/${domid}/${MEMORY_TARGET_KEY}`);
      const quota =
        target !== undefined && /^\d+$/.test(target)
          ? Math.min(Number(target) * 1024, this.core.cfg.registeredBytesPerDomain)
          : this.core.cfg.registeredBytesPerDomain;
      await xb.advertise({
        [XsKey.protocol]: MYRI_PROTOCOL,
        [XsKey.nicId]: this.core.nicId,
        [XsKey.maxEndpoints]: this.core.cfg.endpointsPerDomain,
        [XsKey.maxRegisteredBytes]: quota,
        [XsKey.maxRegions]: this.core.cfg.regionsPerDomain,
        [XsKey.maxIndirectPages]: MAX_INDIRECT_PAGES,
        [XsKey.maxRegionPages]: MAX_REGION_PAGES,
      });
      let seen = false;
      f.unwatch = await xb.onFrontendState((s) => {
        if (f.state === "closed") {
          // Like Xen's backends: a frontend that closed cleanly may start over.
          if (s === XenbusState.Initialising && f.reopenable) void this.reopen(f);
          return;
        }
        if (s === XenbusState.Initialised || s === XenbusState.Connected) {
          seen = true;
          if (f.state === "advertised") void this.connectFrontend(f, quota);
        } else if (s === XenbusState.Closing || s === XenbusState.Closed) {
          f.reopenable = true;
          void this.teardown(f, `the frontend went ${s === XenbusState.Closing ? "Closing" : "Closed"}`);
        } else if (s === XenbusState.Unknown && (seen || f.state !== "advertised")) {
          void this.teardown(f, "the frontend directory vanished (its domain is gone)");
        } else if (s !== XenbusState.Unknown) seen = true;
      });
      // Forgotten while the watch was being set (the device removed, the driver domain
      // stopping): forget found no watch to remove, so remove it here.
      if (this.fronts.get(key) !== f) await this.forget(f);
    } catch (e) {
      await this.teardown(f, `handshake failed: ${(e as Error).message}`);
    }
  }

  /** The frontend re-initialised its device after a clean close: serve it as a new one. */
  private async reopen(f: Frontend): Promise<void> {
    if (this.stopped || this.fronts.get(f.key) !== f || !f.reopenable) return;
    f.reopenable = false;
    await f.closing;
    await this.forget(f);
    this.log(`domain ${f.domid} myri/${f.devid} re-initialises its device`);
    await this.startDevice(f.domid, f.devid, f.key);
  }

  /** Stops following a frontend whose session is over. */
  private async forget(f: Frontend): Promise<void> {
    if (this.fronts.get(f.key) === f) this.fronts.delete(f.key);
    if (![...this.fronts.values()].some((o) => o.domid === f.domid)) this.core.deviceRemoved(f.domid);
    const unwatch = f.unwatch;
    f.unwatch = undefined;
    await f.unwatchQos?.().catch(() => undefined);
    f.unwatchQos = undefined;
    if (unwatch) await unwatch().catch(() => undefined);
  }

  private async connectFrontend(f: Frontend, quota: number): Promise<void> {
    f.state = "connecting";
    try {
      const keys = await f.xb.gather([XsKey.ringRef, XsKey.eventChannel]);
      const ref = keys[XsKey.ringRef];
      const evt = keys[XsKey.eventChannel];
      if (!/^\d+$/.test(ref) || !/^\d+$/.test(evt))
        throw new Error(
          `ring-ref ${JSON.stringify(ref)} and event-channel ${JSON.stringify(evt)} must be numbers`,
        );
      const proto = await this.guest.xenstore.tryRead(
        `${(await f.xb.readFrontend()).path}/${XsKey.protocol}`,
      );
      if (proto !== undefined && proto !== MYRI_PROTOCOL)
        throw new Error(`the frontend speaks ${JSON.stringify(proto)}, this backend ${MYRI_PROTOCOL}`);
      if (f.state !== "connecting") return;
      const m = this.guest.grants.map(f.domid, Number(ref));
      if (m.status !== 0) throw new Error(`cannot map ring-ref ${ref}: ${(m as { error: string }).error}`);
      f.mapping = (m as { mapping: GrantMapping }).mapping;
      f.ring = new BackRing(f.mapping.bytes, REQ_BYTES, RSP_BYTES);
      f.portNo = this.guest.evtchn.bindInterdomain(f.domid, Number(evt));
      f.port = this.guest.evtchn.port(f.portNo);
      f.port.mask();
      const rsp = this.core.memory.takeResponsePage();
      f.rspRun = rsp;
      // Read-only: the guest gets copies through the hypervisor, never this page itself.
      f.rspRef = this.guest.grants.grantAccess(f.domid, rsp.pfn, { readonly: true });
      f.rspView = new DataView(rsp.bytes.buffer, rsp.bytes.byteOffset, PAGE_SIZE);
      f.client = this.core.client(f.domid, "guest", `domain ${f.domid}`, quota);
      f.unwatchQos ??= await this.core.qos.watch(this.guest.xenstore, f.domid, f.xb.path);
      if (this.fronts.get(f.key) !== f) await this.forget(f);
      if (f.state !== "connecting") return;
      await f.xb.switchState(XenbusState.Connected);
      f.state = "connected";
      Atomics.add(this.stats, Stat.frontendsConnected, 1);
      this.log(`domain ${f.domid} myri/${f.devid} connected (ring-ref ${ref}, event channel ${evt})`);
      void this.serve(f);
    } catch (e) {
      await this.teardown(f, `connecting failed: ${(e as Error).message}`);
    }
  }

  /** The control ring's loop: copy, validate, answer; sleep on the event channel in the event loop. */
  private async serve(f: Frontend): Promise<void> {
    const ring = f.ring!;
    const port = f.port!;
    const req = new Uint8Array(REQ_BYTES);
    const r = new DataView(req.buffer);
    while (f.state === "connected") {
      let n = 0;
      let sliced = false;
      const sliceEnd = performance.now() + RING_SLICE_MS;
      while (f.state === "connected" && n < ring.size && ring.copyRequest(req)) {
        this.answer(f, r);
        n++;
        if (performance.now() >= sliceEnd) {
          sliced = true;
          break;
        }
      }
      if (f.state !== "connected") return;
      if (ring.pushResponses()) port.notify();
      if (ring.broken) {
        Atomics.add(this.stats, Stat.brokenRings, 1);
        await this.teardown(f, `the control ring is broken: ${ring.broken}`);
        return;
      }
      // A frontend that keeps the ring full, or asks for costly work, must not starve the
      // others: yield after a ring's worth of requests or a slice of time.
      if (n === ring.size || sliced) {
        if (sliced) Atomics.add(this.stats, Stat.ringSlicesCut, 1);
        await new Promise((res) => setImmediate(res));
        continue;
      }
      if (ring.finalCheckForRequests()) continue;
      if (ring.broken) continue;
      const w = await port.waitAsync();
      if (w === "unbound" && f.state === "connected") {
        await this.teardown(f, "the frontend closed its event channel (domain gone)");
        return;
      }
    }
  }

  /** Serves one copied request and writes its response. */
  private answer(f: Frontend, r: DataView): void {
    const ring = f.ring!;
    const id = r.getUint32(REQ_ID, true);
    const op = r.getUint16(REQ_OP, true);
    const off = ring.nextResponse();
    const v = ring.view;
    ring.bytes.fill(0, off, off + RSP_BYTES);
    v.setUint32(off + RSP_ID, id, true);
    v.setUint16(off + RSP_OP, op, true);
    v.setUint32(off + RSP_PAGE_REF, f.rspRef!, true);
    const vals = new Uint32Array(8);
    let ok = true;
    try {
      const nrRefs = this.execute(f, op, r, vals);
      v.setUint32(off + RSP_NR_REFS, nrRefs, true);
      for (let i = 0; i < 8; i++) v.setUint32(off + RSP_VAL + 4 * i, vals[i], true);
    } catch (e) {
      ok = false;
      const code: MyriStatusName = e instanceof MyriError ? e.code : "MX_FAILURE";
      if (!(e instanceof MyriError))
        this.log(`request ${op} of domain ${f.domid} hit a backend bug: ${(e as Error).stack}`);
      const msg = stripCode(String((e as Error)?.message ?? e));
      const bytes = encoder.encode(msg).subarray(0, PAGE_SIZE);
      f.rspRun!.bytes.set(bytes, 0);
      v.setUint16(off + RSP_STATUS, MyriStatus[code], true);
      v.setUint32(off + RSP_MSG_LEN, bytes.length, true);
      v.setUint32(off + RSP_NR_REFS, 0, true);
    }
    this.core.count(op, ok, "ring");
  }

  /** Writes refs onto the response page; returns how many. */
  private putRefs(f: Frontend, lists: readonly (readonly number[])[]): number {
    let n = 0;
    for (const list of lists) for (const ref of list) f.rspView!.setUint32(4 * n++, ref, true);
    return n;
  }

  private execute(f: Frontend, op: number, r: DataView, vals: Uint32Array): number {
    const core = this.core;
    const client = f.client!;
    const endpoint = r.getUint32(REQ_ENDPOINT, true);
    const arg = (i: number) => r.getUint32(REQ_ARG + 4 * i, true);
    switch (op) {
      case Op.OPEN_ENDPOINT: {
        // Quota and id checks first, so a refused open costs no memory.
        core.checkOpen(client, endpoint, arg(0));
        const slot = core.memory.takeSlot(f.domid);
        let ep: EndpointRec;
        try {
          ep = core.openEndpointWith(client, endpoint, arg(0), slot);
        } catch (e) {
          core.memory.putSlot(f.domid, slot);
          throw e;
        }
        vals[0] = ep.id;
        vals[1] = ep.session;
        vals[2] = slot.window.count;
        vals[3] = slot.intr.count;
        vals[4] = slot.id;
        vals[5] = slot.replaced;
        return this.putRefs(f, [slot.refs]);
      }
      case Op.CLOSE_ENDPOINT:
        core.closeEndpoint(client, endpoint);
        return 0;
      case Op.REGISTER:
        return this.register(f, r, vals);
      case Op.DEREGISTER:
        core.deregisterRegion(client, endpoint, arg(0));
        return 0;
      case Op.CONNECT: {
        const c = core.connect(client, endpoint, arg(0), arg(1), arg(2));
        vals[0] = c.peerNic;
        vals[1] = c.peerEndpoint;
        vals[2] = c.peerSession;
        if (!c.channel) return 0;
        return this.channelReply(f, c.channel, vals);
      }
      case Op.ACCEPT_CHANNEL: {
        const a = core.acceptChannel(client, endpoint, arg(0));
        vals[0] = core.nicId;
        vals[1] = a.peer.id;
        vals[2] = a.peer.session;
        const n = this.channelReply(f, a, vals);
        if (a.rec.orphan) vals[3] |= CONNECT_FLAG_CLOSED;
        return n;
      }
      case Op.INFO: {
        const i = core.info(client);
        vals.set([
          i.nicId,
          i.maxEndpoints,
          0, // was the NIC's open endpoints, all owners': other tenants' comings and goings
          i.endpoints,
          i.endpointQuota,
          Math.ceil(i.registeredBytes / PAGE_SIZE),
          Math.floor(i.registeredBytesQuota / PAGE_SIZE),
          i.regions,
        ]);
        return 0;
      }
      default:
        throw new MyriError(
          "MX_BAD_REQUEST",
          `unknown operation ${op} (this backend speaks ${MYRI_PROTOCOL}, ops 1..${OP_COUNT})`,
        );
    }
  }

  /** The channel's pages and the peer's interrupt page, granted to this member once. */
  private channelReply(
    f: Frontend,
    c: { rec: ChannelRec; side: 0 | 1; peer: EndpointRec; intrOf?: EndpointRec },
    vals: Uint32Array,
  ): number {
    const { rec, side } = c;
    // The page the member kicks its peer with: the peer's, or (an orphan) its own.
    const peer = c.intrOf ?? c.peer;
    if (!rec.mem || !peer.shared)
      throw new MyriError("MX_CONNECTION_FAILED", "the peer's endpoint cannot be shared");
    const memory = this.core.memory;
    // Granted once per domain and kept: a later channel of the same pair reuses the grants.
    const ch = memory.channelRefs(rec.mem, f.domid);
    const pi =
      peer.owner.domid === f.domid
        ? peer.shared.refs.slice(-peer.shared.intr.count)
        : memory.intrFor(peer.shared, f.domid);
    // This member's lane policy page: granted to it alone (its peer cannot lift its caps).
    const pol = memory.policyRefsFor(rec.mem, f.domid);
    // Its memory serves no next channel before this member said it mapped it (shared-memory.ts).
    const me = rec.members[side];
    memory.handTo(rec.mem, f.domid, side, rec.id, () => me.closed);
    vals[3] = CONNECT_FLAG_CHANNEL | (pol ? CONNECT_FLAG_LANE_POLICY : 0);
    vals[4] = rec.id;
    vals[5] = side;
    vals[6] = rec.mem.run.count;
    vals[7] = peer.shared.intr.count;
    return this.putRefs(f, pol ? [ch, pi, pol] : [ch, pi]);
  }

  /** REGISTER: read the refs through the indirect pages, pin the pages in place, hand the NIC their runs. */
  private register(f: Frontend, r: DataView, vals: Uint32Array): number {
    const core = this.core;
    const client = f.client!;
    const endpoint = r.getUint32(REQ_ENDPOINT, true);
    const access = r.getUint32(REQ_ARG, true);
    const first = r.getUint32(REQ_ARG + 4, true);
    const length = r.getUint32(REQ_ARG + 8, true);
    const pages = r.getUint32(REQ_ARG + 12, true);
    const nInd = r.getUint16(REQ_NR_INDIRECT, true);
    if (pages < 1 || pages > MAX_REGION_PAGES)
      throw new MyriError(
        "MX_BAD_SEG_CNT",
        `a region covers 1..${MAX_REGION_PAGES} pages, not ${pages}; split it`,
      );
    if (nInd !== Math.ceil(pages / REFS_PER_PAGE))
      throw new MyriError(
        "MX_BAD_SEG_LIST",
        `${pages} pages need ${Math.ceil(pages / REFS_PER_PAGE)} indirect pages of ${REFS_PER_PAGE} refs, the request has ${nInd}`,
      );
    if (
      first >= PAGE_SIZE ||
      length < 1 ||
      first + length > pages * PAGE_SIZE ||
      first + length <= (pages - 1) * PAGE_SIZE
    )
      throw new MyriError(
        "MX_BAD_SEG_LIST",
        `offset ${first} and length ${length} do not fill ${pages} pages (offset < ${PAGE_SIZE}, last page used)`,
      );
    const known = Access.LocalRead | Access.LocalWrite | Access.RemoteRead | Access.RemoteWrite;
    if (access === 0 || (access & ~known) !== 0)
      throw new MyriError(
        "MX_BAD_REQUEST",
        `access ${access} must be a non-empty set of the Access bits (1|2|4|8)`,
      );
    core.checkRegister(client, endpoint, length);
    const indRefs: number[] = [];
    for (let i = 0; i < nInd; i++) indRefs.push(r.getUint32(REQ_INDIRECT + 4 * i, true));
    const grants = this.guest.grants;
    const ind = grants.pinForeign(f.domid, indRefs, false);
    if (ind.status !== 0)
      throw new MyriError(
        "MX_BAD_SEG_LIST",
        `cannot map the indirect pages: ${ind.error ?? `status ${ind.status}`}`,
      );
    // Copied out before use: the frontend may rewrite its pages at any time.
    const refs: number[] = new Array(pages);
    for (let p = 0; p < nInd; p++) {
      const fr = ind.frames[p];
      const page = new DataView(fr.buffer, fr.offset, PAGE_SIZE);
      const end = Math.min(pages, (p + 1) * REFS_PER_PAGE);
      for (let i = p * REFS_PER_PAGE; i < end; i++) refs[i] = page.getUint32(4 * (i % REFS_PER_PAGE), true);
    }
    grants.unpinForeign(f.domid, indRefs, false);
    const write = (access & (Access.LocalWrite | Access.RemoteWrite)) !== 0;
    const pin = grants.pinForeign(f.domid, refs, write);
    if (pin.status !== 0)
      throw new MyriError(
        "MX_BAD_SEG_MEM",
        `cannot pin the region's pages${write ? " for writing" : ""}: ${pin.error ?? `status ${pin.status}`}`,
      );
    const release = () => grants.unpinForeign(f.domid, refs, write);
    const memory = pin.frames[0].buffer;
    const runs: MemoryRun[] = [];
    let left = length;
    for (let i = 0; i < pages; i++) {
      const fr = pin.frames[i];
      if (fr.buffer !== memory || fr.shareable) {
        release();
        throw new MyriError(
          "MX_BAD_SEG_MEM",
          `page ${i} of the region is not guest RAM; register memory from guest.memory (allocBuffer)`,
        );
      }
      const start = i === 0 ? first : 0;
      const len = Math.min(PAGE_SIZE - start, left);
      left -= len;
      const last = runs[runs.length - 1];
      if (last && last.offset + last.length === fr.offset + start) last.length += len;
      else runs.push({ offset: fr.offset + start, length: len });
    }
    let reply: RegisterRegionReply;
    try {
      reply = core.registerRegion(client, endpoint, memory, runs, access, length, release);
    } catch (e) {
      release();
      throw e;
    }
    vals[0] = reply.regionId;
    vals[1] = reply.key;
    vals[2] = reply.length;
    return 0;
  }

  /**
   * Disconnects a frontend and releases everything its domain held. Idempotent. The watch on
   * the frontend stays while it may re-initialise (it closed cleanly); otherwise it goes.
   */
  teardown(f: Frontend, reason: string): Promise<void> {
    if (f.state === "closed") return f.closing ?? Promise.resolve();
    const wasConnected = f.state === "connected";
    f.state = "closed";
    this.log(`domain ${f.domid} myri/${f.devid} disconnected: ${reason}`);
    if (wasConnected) Atomics.add(this.stats, Stat.frontendsDisconnected, 1);
    if (f.client) this.core.releaseClient(f.client);
    if (f.rspRef !== undefined) {
      const run = f.rspRun!;
      this.core.keeper.end([f.rspRef], () => this.core.memory.putResponsePage(run));
    }
    if (f.mapping) this.guest.grants.unmap(f.mapping);
    if (f.portNo !== undefined) {
      try {
        this.guest.evtchn.close(f.portNo);
      } catch {
        // already closed by the hypervisor when the domain died
      }
    }
    f.closing = (async () => {
      if (!f.reopenable) {
        const unwatch = f.unwatch;
        f.unwatch = undefined;
        if (unwatch) await unwatch().catch(() => undefined);
      }
      try {
        await f.xb.switchState(XenbusState.Closing);
        await f.xb.switchState(XenbusState.Closed);
      } catch {
        // the directory may be gone already
      }
    })();
    return f.closing;
  }
}

/**
 * myrifront: a guest's half of the myri split driver, the MxDriver of the bypass path.
 *
 * Set-up (once, synchronous like the rest, since mx_init calls it): wait for the toolstack's
 * device/myri/<devid>, put the control ring in a RAM page granted to the driver domain,
 * allocate an event channel, walk the xenbus handshake (synchronous XenStore requests,
 * polling the backend's state; written once for both synchronous frontends in
 * xen/xenbus-sync.ts). After that every MxDriver method is one round trip on the
 * ring — push, notify, wait for the response on the event channel (spin, then sleep). What a
 * response grants (the NIC window, the interrupt page, a channel) is mapped page by page and
 * handed to the library; the data path then never comes back here.
 */

import { Access } from "../nic/window.js";
import { PAGE_SIZE } from "../xen/abi.js";
import type { EventChannelPort } from "../xen/event-channel.js";
import type { GrantMapping, Guest } from "../xen/guest/guest.js";
import type { PageRun } from "../xen/memory.js";
import { FrontRing, initSharedRing } from "../xen/ring.js";
import { DEFAULT_XENBUS_TIMEOUT_MS } from "../xen/xenbus.js";
import { FrontendHandshakeError, SyncXenbusFrontend } from "../xen/xenbus-sync.js";
import { LANE_POLICY_BYTES, markAttached } from "./channel-abi.js";
import {
  allocGuestBuffer,
  type DriverChannel,
  type DriverConnection,
  type DriverEndpoint,
  type DriverRegion,
  freeGuestBuffer,
  type MxDriver,
  MxDriverError,
} from "./driver-abi.js";
import {
  CONNECT_FLAG_CHANNEL,
  CONNECT_FLAG_CLOSED,
  CONNECT_FLAG_LANE_POLICY,
  MAX_INDIRECT_PAGES,
  MAX_REGION_PAGES,
  MYRI_DEVICE_TYPE,
  MYRI_PROTOCOL,
  type MyriInfo,
  NO_REF,
  Op,
  opName,
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
  statusName,
  XsKey,
} from "./protocol.js";

export interface MyriFrontOptions {
  /** Device index under device/myri (default 0). */
  devid?: number;
  /** How long to wait for the device directory and for each handshake step (ms). */
  timeoutMs?: number;
  /** How long one control request may take before MX_TIMEOUT (ms). */
  requestTimeoutMs?: number;
  /** Spin budget of the response wait (µs) before sleeping on the event channel. */
  spinUs?: number;
}

interface Response {
  vals: Uint32Array;
  /** The refs on the response page, read (a copy through the hypervisor) when asked for. */
  refs: () => number[];
}

interface LocalChannel {
  conn: DriverChannel & { peerNic: number; peerEndpoint: number; peerSession: number };
  mappings: GrantMapping[];
}

interface LocalEndpoint {
  id: number;
  slot: WindowSlot;
  /** The slot stays mapped after close (the backend keeps slots). */
  kept: boolean;
  channels: Map<number, LocalChannel>;
}

/** An endpoint window and interrupt page the backend keeps for this domain, mapped once. */
interface WindowSlot {
  window: SharedArrayBuffer;
  intr: SharedArrayBuffer;
  mappings: GrantMapping[];
}

const decoder = new TextDecoder();

function fail(code: string, message: string): MxDriverError {
  return new MxDriverError(code, `${code}: ${message}`);
}

/**
 * A u32 word of a control request as given: a number that is an integer in 0..2^32−1, or
 * MX_BAD_PARAM_VAL naming `what`. No conversion runs (no valueOf), so a caller's code cannot
 * run while a request is half written, and what was checked is what the backend reads.
 */
function word(v: unknown, what: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 0xffffffff)
    throw fail(
      "MX_BAD_PARAM_VAL",
      `${what} must be an integer in 0..2^32−1 (a number, not converted), got ${typeof v === "number" ? String(v) : `a ${typeof v}`}`,
    );
  return v >>> 0;
}

export class MyriFront implements MxDriver {
  readonly path = "bypass";
  readonly nicId: number;
  /** What the backend advertised (max-endpoints, max-registered-bytes, ...). */
  readonly features: Readonly<Record<string, string>>;

  private readonly ring: FrontRing;
  private readonly port: EventChannelPort;
  private readonly req = new Uint8Array(REQ_BYTES);
  private readonly reqView = new DataView(this.req.buffer);
  private readonly rsp = new Uint8Array(RSP_BYTES);
  private readonly rspView = new DataView(this.rsp.buffer);
  private nextId = 1;
  /** Why the backend is unusable (a failed round trip found it gone). */
  private dead: string | undefined;
  private finalized = false;
  private readonly endpoints = new Map<number, LocalEndpoint>();
  private readonly regions = new Map<number, { endpointId: number; refs: number[] }>();
  private readonly rspPages = new Map<number, GrantMapping>();
  /** Window slots by the backend's slot id: the same slot comes back with the same grants. */
  private readonly slots = new Map<number, WindowSlot>();

  private constructor(
    private readonly guest: Guest,
    private readonly device: SyncXenbusFrontend,
    /** device/myri/<devid> and the backend's directory. */
    readonly frontPath: string,
    readonly backPath: string,
    private readonly backId: number,
    private readonly ringPage: PageRun,
    private readonly ringRef: number,
    private readonly portNo: number,
    features: Record<string, string>,
    private readonly requestTimeoutMs: number,
    private readonly spinUs: number | undefined,
  ) {
    this.features = features;
    this.nicId = Number(features[XsKey.nicId]);
    this.ring = new FrontRing(ringPage.bytes.subarray(0, PAGE_SIZE), REQ_BYTES, RSP_BYTES);
    this.port = guest.evtchn.port(portNo);
    // Masked between waits: the backend's notifications kick only while we really sleep.
    this.port.mask();
  }

  /**
   * Connects to the myri device the toolstack gave this guest (Host.startGuest creates it).
   * Synchronous, like everything the MX library calls: the xenbus steps use synchronous
   * XenStore requests and poll the peer's state (a handshake, not a hot path).
   */
  static connect(guest: Guest, opts: MyriFrontOptions = {}): MyriFront {
    if (guest.native)
      throw fail(
        "MX_NO_DRIVER",
        "a native process has no myri device; use NativeDriver (openDriver picks it)",
      );
    const devid = opts.devid ?? 0;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_XENBUS_TIMEOUT_MS;
    let device: SyncXenbusFrontend;
    try {
      device = SyncXenbusFrontend.open(guest, MYRI_DEVICE_TYPE, devid, timeoutMs);
    } catch (e) {
      if (!(e instanceof FrontendHandshakeError)) throw e;
      if (e.step !== "device") throw fail("MX_NO_DEV", e.message);
      throw fail(
        "MX_NO_DEV",
        `domain ${guest.domid} has no usable myri device (${e.message}); ` +
          "start the guest with Host.startGuest, whose toolstack creates it",
      );
    }
    const backId = device.backId;
    const ringPage = guest.memory.allocPages(1);
    initSharedRing(ringPage.bytes);
    let ringRef: number | undefined;
    let portNo: number;
    let features: Record<string, string>;
    try {
      ({ features, port: portNo } = device.connect((offered) => {
        if (offered[XsKey.protocol] !== undefined && offered[XsKey.protocol] !== MYRI_PROTOCOL)
          throw new Error(`the backend speaks ${offered[XsKey.protocol]}, this frontend ${MYRI_PROTOCOL}`);
        if (!/^\d+$/.test(offered[XsKey.nicId] ?? ""))
          throw new Error("the backend did not advertise nic-id");
        ringRef = guest.grants.grantAccess(backId, ringPage.pfn);
        return { [XsKey.protocol]: MYRI_PROTOCOL, [XsKey.ringRef]: String(ringRef) };
      }));
    } catch (e) {
      if (ringRef !== undefined && !guest.grants.isInUse(ringRef)) guest.grants.endAccess(ringRef);
      throw fail("MX_NO_DRIVER", `the myri handshake with domain ${backId} failed: ${(e as Error).message}`);
    }
    return new MyriFront(
      guest,
      device,
      device.path,
      device.backPath,
      backId,
      ringPage,
      ringRef as number,
      portNo,
      features,
      opts.requestTimeoutMs ?? 30_000,
      opts.spinUs,
    );
  }

  // ---- the ring round trip ---------------------------------------------------------------

  /** One request, one response: args are the op's u32 arguments, indirect its indirect-page refs. */
  private call(
    op: number,
    endpoint: number,
    args: readonly number[],
    indirect?: readonly number[],
  ): Response {
    // Every word checked, as plain numbers, before anything shared is touched.
    const name = opName(op);
    const ep = word(endpoint, `${name}: endpoint`);
    const words = args.map((a, i) => word(a, `${name}: argument ${i}`));
    const ind = indirect?.map((r, i) => word(r, `${name}: indirect ref ${i}`));
    if (this.finalized) throw fail("MX_NOT_INITIALIZED", "this driver was finalized");
    if (this.dead) throw fail("MX_NIC_DEAD", `the myri backend is gone (${this.dead})`);
    const ring = this.ring;
    if (ring.isFull()) throw fail("MX_BUSY", "the control ring is full");
    const id = this.nextId;
    this.nextId = (this.nextId + 1) >>> 0 || 1;
    const q = this.reqView;
    this.req.fill(0);
    q.setUint32(REQ_ID, id, true);
    q.setUint16(REQ_OP, op, true);
    q.setUint32(REQ_ENDPOINT, ep, true);
    for (let i = 0; i < words.length; i++) q.setUint32(REQ_ARG + 4 * i, words[i], true);
    if (ind) {
      q.setUint16(REQ_NR_INDIRECT, ind.length, true);
      for (let i = 0; i < ind.length; i++) q.setUint32(REQ_INDIRECT + 4 * i, ind[i], true);
    }
    const off = ring.nextRequest();
    ring.bytes.set(this.req, off);
    if (ring.pushRequests()) this.port.notify();
    this.awaitResponse(id, op);
    const r = this.rspView;
    const status = r.getUint16(RSP_STATUS, true);
    const pageRef = r.getUint32(RSP_PAGE_REF, true);
    if (status !== 0) {
      const len = Math.min(r.getUint32(RSP_MSG_LEN, true), PAGE_SIZE);
      const msg = len > 0 && pageRef !== NO_REF ? decoder.decode(this.rspPage(pageRef).read(0, len)) : "";
      throw fail(statusName(status), msg || `${opName(op)} failed with status ${status}`);
    }
    const vals = new Uint32Array(8);
    for (let i = 0; i < 8; i++) vals[i] = r.getUint32(RSP_VAL + 4 * i, true);
    const n = Math.min(r.getUint32(RSP_NR_REFS, true), REFS_PER_PAGE);
    const refs = (): number[] => {
      const out: number[] = [];
      if (n > 0 && pageRef !== NO_REF) {
        const page = new DataView(this.rspPage(pageRef).read(0, 4 * n).buffer);
        for (let i = 0; i < n; i++) out.push(page.getUint32(4 * i, true));
      }
      return out;
    };
    return { vals, refs };
  }

  /** Waits (spin, then sleep on the event channel) for the response to `id`; stale ones are skipped. */
  private awaitResponse(id: number, op: number): void {
    const ring = this.ring;
    const deadline = performance.now() + this.requestTimeoutMs;
    for (;;) {
      while (ring.unconsumedResponses() > 0) {
        const off = ring.nextResponse();
        this.rsp.set(ring.bytes.subarray(off, off + RSP_BYTES));
        if (this.rspView.getUint32(RSP_ID, true) === id && this.rspView.getUint16(RSP_OP, true) === op)
          return;
      }
      if (ring.broken) {
        this.dead = `the backend broke the ring: ${ring.broken}`;
        throw fail("MX_NIC_DEAD", this.dead);
      }
      if (ring.finalCheckForResponses()) continue;
      const left = deadline - performance.now();
      if (left <= 0)
        throw fail(
          "MX_TIMEOUT",
          `no answer to ${opName(op)} from the myri backend in ${this.requestTimeoutMs} ms`,
        );
      const w = this.port.wait(left, this.spinUs);
      if (w === "unbound") {
        if (ring.unconsumedResponses() > 0) continue;
        this.dead = "the backend closed the event channel";
        throw fail("MX_NIC_DEAD", `the myri backend disconnected (${this.dead})`);
      }
    }
  }

  private rspPage(ref: number): GrantMapping {
    let m = this.rspPages.get(ref);
    if (!m) {
      const r = this.guest.grants.map(this.backId, ref, { readonly: true });
      if (r.status !== 0)
        throw fail("MX_FAILURE", `cannot map the backend's response page: ${(r as { error: string }).error}`);
      m = (r as { mapping: GrantMapping }).mapping;
      this.rspPages.set(ref, m);
    }
    return m;
  }

  /**
   * Maps `refs` (every page of one backend buffer, in order) and returns that buffer. The
   * hypervisor hands out a shared segment only whole, and only to a domain the backend
   * shared it with.
   */
  private mapBuffer(refs: readonly number[], what: string, into: GrantMapping[]): SharedArrayBuffer {
    let m: GrantMapping;
    try {
      m = this.guest.grants.mapOrThrow(this.backId, refs);
    } catch (e) {
      throw fail("MX_FAILURE", `cannot map the ${what} the backend granted: ${(e as Error).message}`);
    }
    const bytes = m.bytes;
    if (bytes.byteOffset !== 0 || bytes.buffer.byteLength !== refs.length * PAGE_SIZE) {
      this.guest.grants.unmap(m);
      throw fail("MX_FAILURE", `the ${what} the backend granted is not one ${refs.length}-page buffer`);
    }
    into.push(m);
    return bytes.buffer as SharedArrayBuffer;
  }

  private unmapAll(maps: GrantMapping[]): void {
    for (const m of maps.splice(0)) this.guest.grants.unmap(m);
  }

  private local(endpointId: number): LocalEndpoint {
    const ep = this.endpoints.get(endpointId);
    if (!ep) throw fail("MX_BAD_ENDPOINT", `endpoint ${endpointId} is not open in this driver`);
    return ep;
  }

  // ---- MxDriver ---------------------------------------------------------------------------

  openEndpoint(endpointId: number, key: number): DriverEndpoint {
    const reply = this.call(Op.OPEN_ENDPOINT, word(endpointId, "openEndpoint: endpointId"), [
      word(key, "openEndpoint: key"),
    ]);
    const [id, session, windowPages, intrPages, slotId, replaced] = reply.vals;
    try {
      // The backend gave that slot a fresh interrupt page under a new id (a former peer still
      // mapped the old one): the old id's mappings go, unless an open endpoint uses them.
      const stale = replaced !== 0 ? this.slots.get(replaced) : undefined;
      if (stale && ![...this.endpoints.values()].some((e) => e.slot === stale)) {
        this.unmapAll(stale.mappings);
        this.slots.delete(replaced);
      }
      let slot = this.slots.get(slotId);
      if (!slot) {
        const refs = reply.refs();
        if (refs.length !== windowPages + intrPages || windowPages === 0 || intrPages === 0)
          throw fail(
            "MX_FAILURE",
            `the backend granted ${refs.length} pages for a ${windowPages}+${intrPages}-page endpoint`,
          );
        const mappings: GrantMapping[] = [];
        try {
          const window = this.mapBuffer(refs.slice(0, windowPages), "endpoint window", mappings);
          const intr = this.mapBuffer(refs.slice(windowPages), "interrupt page", mappings);
          slot = { window, intr, mappings };
        } catch (e) {
          this.unmapAll(mappings);
          throw e;
        }
        // Slot 0 is a backend that does not keep slots: map anew each time.
        if (slotId !== 0) this.slots.set(slotId, slot);
      }
      this.endpoints.set(id, { id, slot, kept: slotId !== 0, channels: new Map() });
      return { endpointId: id, session, window: slot.window, intr: slot.intr };
    } catch (e) {
      try {
        this.call(Op.CLOSE_ENDPOINT, id, []);
      } catch {
        // the backend is gone: nothing left to close
      }
      throw e;
    }
  }

  closeEndpoint(endpointId: number): void {
    const ep = this.local(endpointId);
    // Channels unmapped first, so the backend can reuse them for the pair once it closes the
    // endpoint; the window slot stays mapped: it is this domain's, and comes back to it.
    for (const ch of ep.channels.values()) this.unmapAll(ch.mappings);
    if (!ep.kept) this.unmapAll(ep.slot.mappings);
    this.endpoints.delete(endpointId);
    try {
      this.call(Op.CLOSE_ENDPOINT, endpointId, []);
    } finally {
      // The backend released the endpoint's regions (and unpinned their pages) with it.
      for (const [rid, reg] of this.regions) {
        if (reg.endpointId !== endpointId) continue;
        this.regions.delete(rid);
        this.endGrants(reg.refs);
      }
    }
  }

  registerRegion(endpointId: number, bytes: Uint8Array, access: number): DriverRegion {
    this.local(endpointId);
    access = word(access, "registerRegion: access");
    const loc = bytes instanceof Uint8Array ? this.guest.memory.locate(bytes) : undefined;
    if (!loc)
      throw fail(
        "MX_BAD_SEG_MEM",
        "registerRegion: the buffer must be a view of this guest's RAM (allocBuffer, guest.memory)",
      );
    if (bytes.byteLength < 1) throw fail("MX_BAD_SEG_MEM", "registerRegion: the buffer is empty");
    const pages = Math.ceil((loc.offset + bytes.byteLength) / PAGE_SIZE);
    if (pages > MAX_REGION_PAGES)
      throw fail(
        "MX_BAD_SEG_CNT",
        `registerRegion: ${bytes.byteLength} bytes span ${pages} pages; one region covers at most ${MAX_REGION_PAGES} (${(MAX_REGION_PAGES * PAGE_SIZE) >> 20} MiB)`,
      );
    const readonly = (access & (Access.LocalWrite | Access.RemoteWrite)) === 0;
    const grants = this.guest.grants;
    const refs: number[] = [];
    const nInd = Math.ceil(pages / REFS_PER_PAGE);
    let ind: PageRun | undefined;
    const indRefs: number[] = [];
    try {
      for (let i = 0; i < pages; i++) refs.push(grants.grantAccess(this.backId, loc.pfn + i, { readonly }));
      ind = this.guest.memory.allocPages(nInd);
      const dv = new DataView(ind.bytes.buffer, ind.bytes.byteOffset, nInd * PAGE_SIZE);
      for (let i = 0; i < pages; i++) dv.setUint32(4 * i, refs[i], true);
      for (let i = 0; i < nInd; i++)
        indRefs.push(grants.grantAccess(this.backId, ind.pfn + i, { readonly: true }));
      if (nInd > MAX_INDIRECT_PAGES) throw new RangeError("too many indirect pages");
      const { vals } = this.call(
        Op.REGISTER,
        endpointId,
        [access, loc.offset, bytes.byteLength, pages],
        indRefs,
      );
      this.regions.set(vals[0], { endpointId, refs });
      return { regionId: vals[0], key: vals[1] };
    } catch (e) {
      this.endGrants(refs);
      throw e instanceof MxDriverError
        ? e
        : fail("MX_NO_RESOURCES", `registerRegion: ${(e as Error).message}`);
    } finally {
      // The backend copied the refs out and unpinned the indirect pages before answering.
      this.endGrants(indRefs);
      if (ind) this.guest.memory.freePages(ind);
    }
  }

  deregisterRegion(endpointId: number, regionId: number): void {
    this.call(Op.DEREGISTER, endpointId, [word(regionId, "deregisterRegion: regionId")]);
    const reg = this.regions.get(regionId);
    if (reg) {
      this.regions.delete(regionId);
      this.endGrants(reg.refs);
    }
  }

  connect(endpointId: number, peerNic: number, peerEndpoint: number, key: number): DriverConnection {
    const ep = this.local(endpointId);
    const words = [
      word(peerNic, "connect: peerNic"),
      word(peerEndpoint, "connect: peerEndpoint"),
      word(key, "connect: key"),
    ];
    const { vals, refs } = this.call(Op.CONNECT, endpointId, words);
    const conn: DriverConnection = { peerNic: vals[0], peerEndpoint: vals[1], peerSession: vals[2] };
    if (vals[3] & CONNECT_FLAG_CHANNEL) conn.channel = this.mapChannel(ep, vals, refs()).conn;
    return conn;
  }

  acceptChannel(
    endpointId: number,
    channelId: number,
  ): DriverChannel & { peerNic: number; peerEndpoint: number; peerSession: number } {
    const ep = this.local(endpointId);
    const { vals, refs } = this.call(Op.ACCEPT_CHANNEL, endpointId, [
      word(channelId, "acceptChannel: channelId"),
    ]);
    return this.mapChannel(ep, vals, refs()).conn;
  }

  private mapChannel(ep: LocalEndpoint, vals: Uint32Array, refs: number[]): LocalChannel {
    const channelId = vals[4];
    const known = ep.channels.get(channelId);
    if (known) return known;
    const chPages = vals[6];
    const intrPages = vals[7];
    const polPages = vals[3] & CONNECT_FLAG_LANE_POLICY ? LANE_POLICY_BYTES / PAGE_SIZE : 0;
    if (refs.length !== chPages + intrPages + polPages || chPages === 0 || intrPages === 0)
      throw fail(
        "MX_FAILURE",
        `the backend granted ${refs.length} pages for a ${chPages}+${intrPages}+${polPages}-page channel`,
      );
    const mappings: GrantMapping[] = [];
    try {
      const channel = this.mapBuffer(refs.slice(0, chPages), "channel", mappings);
      const peerIntr = this.mapBuffer(
        refs.slice(chPages, chPages + intrPages),
        "peer's interrupt page",
        mappings,
      );
      const policy =
        polPages > 0
          ? this.mapBuffer(refs.slice(chPages + intrPages), "lane policy page", mappings)
          : undefined;
      const side = (vals[5] & 1) as 0 | 1;
      // Said once every page is mapped: until then myrback keeps the memory from the pair's
      // next channel (a connect's answer and our mapping are two steps, with a peer between).
      if (policy) markAttached(policy, side, channelId);
      const lc: LocalChannel = {
        conn: {
          channelId,
          channel,
          side,
          peerIntr,
          policy,
          closed: (vals[3] & CONNECT_FLAG_CLOSED) !== 0,
          peerNic: vals[0],
          peerEndpoint: vals[1],
          peerSession: vals[2],
        },
        mappings,
      };
      ep.channels.set(channelId, lc);
      return lc;
    } catch (e) {
      this.unmapAll(mappings);
      throw e;
    }
  }

  /**
   * The peer went away: unmap its channel and interrupt page now, so the backend can reuse
   * them for this pair or give them back (a survivor holds nothing of a dead peer's).
   */
  releaseChannel(endpointId: number, channelId: number): void {
    const ep = this.endpoints.get(endpointId);
    const ch = ep?.channels.get(channelId);
    if (!ep || !ch) return;
    ep.channels.delete(channelId);
    this.unmapAll(ch.mappings);
  }

  allocBuffer(length: number): Uint8Array {
    return allocGuestBuffer(this.guest.memory, length);
  }

  freeBuffer(buffer: Uint8Array): void {
    freeGuestBuffer(this.guest.memory, buffer);
  }

  /** The backend's view of this guest: NIC, endpoints and registration quotas. */
  info(): MyriInfo {
    const { vals } = this.call(Op.INFO, 0, []);
    return {
      nicId: vals[0],
      maxEndpoints: vals[1],
      endpoints: vals[3],
      endpointQuota: vals[4],
      registeredBytes: vals[5] * PAGE_SIZE,
      registeredBytesQuota: vals[6] * PAGE_SIZE,
      regions: vals[7],
    };
  }

  /** Closes every endpoint, then walks the device to Closed (the backend releases the rest). */
  finalize(): void {
    if (this.finalized) return;
    for (const id of [...this.endpoints.keys()]) {
      try {
        this.closeEndpoint(id);
      } catch {
        // a dead backend already released it
      }
    }
    this.finalized = true;
    for (const slot of this.slots.values()) this.unmapAll(slot.mappings);
    this.slots.clear();
    this.unmapAll([...this.rspPages.values()]);
    this.rspPages.clear();
    this.device.close();
    try {
      this.guest.evtchn.close(this.portNo);
    } catch {
      // closed by the backend's teardown already
    }
    this.endGrants([this.ringRef]);
    if (!this.guest.grants.isInUse(this.ringRef)) this.guest.memory.freePages(this.ringPage);
  }

  private endGrants(refs: readonly number[]): void {
    for (const r of refs) {
      try {
        this.guest.grants.endAccess(r);
      } catch {
        // Still pinned by the backend (it releases on its side first) or already ended.
      }
    }
  }
}

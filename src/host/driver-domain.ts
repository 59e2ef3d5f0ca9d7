/**
 * The driver domain's program (domain 0, privileged): it owns the NIC's driver endpoint and
 * runs, on its event loop, the two services that hand out NIC resources on this host:
 *
 *   - myrback (myrixen/back.ts): guests' myri devices, over xenbus control rings;
 *   - the native service: processes of the driver domain's OS (Host.startNative), over
 *     synchronous calls. They get SharedArrayBuffers directly: no grants inside one OS.
 *
 * and the split path's netback with its bridge (src/netback/): guests' vifs, bridged to each
 * other and, through the NIC's Ethernet port, to the wire.
 *
 * Both share one registry (MyriCore), so quotas, keys and channel rules are the same. The
 * host talks to this domain over `hostLink` (attach a native process, NIC info, log lines);
 * the request counters live in a stats page the host passed in and reads at any time.
 *
 * Nothing here blocks: waits are event-loop waits (Atomics.waitAsync, watches, messages).
 * The only synchronous calls go to the NIC thread, which answers in microseconds.
 *
 * It lives in src/host/ because it composes myrixen's backend and netback, the layer below
 * the host: the driver domain is part of the machine, not of either driver.
 */
import type { MessagePort } from "node:worker_threads";
import { type Client, MyriBack, MyriCore, STATS_BYTES, Stat } from "../myrixen/back.js";
import {
  DEFAULT_ENDPOINTS_PER_DOMAIN,
  DEFAULT_REGIONS_PER_DOMAIN,
  DEFAULT_REGISTERED_BYTES_PER_DOMAIN,
  MyriError,
  type MyriInfo,
  type NativeAttachReply,
  type NativeChannelReply,
  type NativeConnectReply,
  Op,
} from "../myrixen/protocol.js";
import { Netback } from "../netback/netback.js";
import { NET_STATS_BYTES } from "../netback/stats.js";
import { openUplink } from "../netback/uplink.js";
import type { NicControlRequest, NicDriverEndpoint, NicInfo } from "../nic/control.js";
import type { DomId } from "../xen/abi.js";
import type { Guest } from "../xen/guest/guest.js";
import { SyncCallClient, type SyncEndpoint, serveSyncCalls } from "../xen/sync-call.js";

export interface DriverDomainArgs {
  /** The NIC's driver endpoint (its port transferred in). */
  nic: NicDriverEndpoint;
  /** The host's control link (transferred in). */
  hostLink: MessagePort;
  /** STATS_BYTES, written here, read by the host (myrixen/back/stats.ts, Stat). */
  stats: SharedArrayBuffer;
  /** NET_STATS_BYTES for netback and the bridge (netback/stats.ts); without it netback does not run. */
  netStats?: SharedArrayBuffer;
  /** The bridge's MAC ageing time (ms). */
  bridgeAgeingMs?: number;
  endpointsPerDomain?: number;
  registeredBytesPerDomain?: number;
  regionsPerDomain?: number;
}

/** host → driver domain */
export type HostToDriver =
  | { type: "attach-native"; domid: DomId; endpoint: SyncEndpoint }
  | { type: "request"; id: number; what: "nic-info" | "frontends" | "endpoints" }
  | { type: "stop" };

/** driver domain → host */
export type DriverToHost =
  | { type: "ready"; nicId: number; maxEndpoints: number }
  | { type: "log"; message: string; time: number }
  | { type: "reply"; id: number; ok: true; value: unknown }
  | { type: "reply"; id: number; ok: false; error: string };

const U32 = (v: unknown): v is number =>
  typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;

/** The same operations as myrback's ring, for native processes: synchronous calls, plain buffers. */
export class NativeService {
  private readonly memories = new Map<DomId, SharedArrayBuffer>();
  private readonly ports = new Map<DomId, MessagePort>();

  constructor(
    private readonly core: MyriCore,
    private readonly log: (m: string) => void,
  ) {}

  attach(domid: DomId, endpoint: SyncEndpoint): void {
    if (this.ports.has(domid)) {
      this.log(`native process ${domid} attached twice; the second link is refused`);
      endpoint.port.close();
      return;
    }
    this.ports.set(domid, endpoint.port);
    serveSyncCalls(endpoint.port, endpoint.replyWord, (req) => this.handle(domid, req));
    this.publish();
  }

  attached(): DomId[] {
    return [...this.ports.keys()];
  }

  /** The process is gone: release its endpoints, regions and channels. */
  gone(domid: DomId): void {
    const port = this.ports.get(domid);
    if (!port) return;
    this.ports.delete(domid);
    this.memories.delete(domid);
    port.close();
    const c = this.core.liveClients().find((x) => x.domid === domid && x.kind === "native");
    if (c) this.core.releaseClient(c);
    this.log(`native process ${domid} is gone; its endpoints were closed`);
    this.publish();
  }

  private publish(): void {
    Atomics.store(this.core.cfg.stats, Stat.nativeClients, this.ports.size);
  }

  private client(domid: DomId): Client {
    const memory = this.memories.get(domid);
    if (!memory)
      throw new MyriError(
        "MX_NOT_INITIALIZED",
        "attach first: the native driver's first call hands over its memory",
      );
    return this.core.client(domid, "native", `native process ${domid}`, memory.byteLength);
  }

  handle(domid: DomId, req: unknown): unknown {
    const r = (typeof req === "object" && req !== null ? req : {}) as Record<string, unknown>;
    const op = opCode(r.op);
    let ok = true;
    try {
      return this.execute(domid, r);
    } catch (e) {
      ok = false;
      throw e instanceof MyriError ? e : new MyriError("MX_FAILURE", (e as Error)?.message ?? String(e));
    } finally {
      if (r.op !== "attach") this.core.count(op, ok, "native");
    }
  }

  private execute(domid: DomId, r: Record<string, unknown>): unknown {
    const core = this.core;
    switch (r.op) {
      case "attach": {
        if (!(r.memory instanceof SharedArrayBuffer))
          throw new MyriError("MX_BAD_REQUEST", "attach: memory must be the process's SharedArrayBuffer");
        this.memories.set(domid, r.memory);
        const c = core.client(domid, "native", `native process ${domid}`, r.memory.byteLength);
        c.quotaBytes = Math.min(r.memory.byteLength, core.cfg.registeredBytesPerDomain);
        return { nicId: core.nicId, maxEndpoints: core.maxEndpoints } satisfies NativeAttachReply;
      }
      case "open_endpoint": {
        const ep = core.openEndpoint(this.client(domid), r.endpointId, r.key);
        return { endpointId: ep.id, session: ep.session, window: ep.window, intr: ep.intr };
      }
      case "close_endpoint":
        core.closeEndpoint(this.client(domid), r.endpointId);
        return null;
      case "register_region": {
        const client = this.client(domid);
        const memory = this.memories.get(domid)!;
        const { offset, length, access } = r;
        if (!U32(offset) || !U32(length) || length < 1 || offset + length > memory.byteLength)
          throw new MyriError(
            "MX_BAD_SEG_MEM",
            `register_region: offset ${String(offset)} + length ${String(length)} must lie in the process's ${memory.byteLength} bytes`,
          );
        if (!U32(access) || access === 0 || access > 15)
          throw new MyriError(
            "MX_BAD_REQUEST",
            `access ${String(access)} must be a non-empty set of the Access bits`,
          );
        const reg = core.registerRegion(
          client,
          r.endpointId as number,
          memory,
          [{ offset, length }],
          access,
          length,
          () => undefined,
        );
        return { regionId: reg.regionId, key: reg.key };
      }
      case "deregister_region":
        core.deregisterRegion(this.client(domid), r.endpointId, r.regionId);
        return null;
      case "connect": {
        const c = core.connect(this.client(domid), r.endpointId, r.peerNic, r.peerEndpoint, r.key);
        const reply: NativeConnectReply = {
          peerNic: c.peerNic,
          peerEndpoint: c.peerEndpoint,
          peerSession: c.peerSession,
        };
        if (c.channel)
          reply.channel = {
            channelId: c.channel.rec.id,
            channel: c.channel.rec.buffer,
            side: c.channel.side,
            peerIntr: c.channel.peer.intr,
          };
        return reply;
      }
      case "accept_channel": {
        const a = core.acceptChannel(this.client(domid), r.endpointId, r.channelId);
        const reply: NativeChannelReply & { peerNic: number; peerEndpoint: number; peerSession: number } = {
          channelId: a.rec.id,
          channel: a.rec.buffer,
          side: a.side,
          peerIntr: (a.intrOf ?? a.peer).intr,
          closed: a.rec.orphan === true,
          peerNic: core.nicId,
          peerEndpoint: a.peer.id,
          peerSession: a.peer.session,
        };
        return reply;
      }
      case "info":
        return core.info(this.client(domid)) satisfies MyriInfo;
      default:
        throw new MyriError(
          "MX_BAD_REQUEST",
          `unknown native request ${JSON.stringify(r.op)}; use attach, open_endpoint, close_endpoint, register_region, deregister_region, connect, accept_channel or info`,
        );
    }
  }
}

function opCode(op: unknown): number {
  switch (op) {
    case "open_endpoint":
      return Op.OPEN_ENDPOINT;
    case "close_endpoint":
      return Op.CLOSE_ENDPOINT;
    case "register_region":
      return Op.REGISTER;
    case "deregister_region":
      return Op.DEREGISTER;
    case "connect":
      return Op.CONNECT;
    case "accept_channel":
      return Op.ACCEPT_CHANNEL;
    case "info":
      return Op.INFO;
    default:
      return 0;
  }
}

function checkArgs(a: unknown): DriverDomainArgs {
  const args = a as Partial<DriverDomainArgs> | undefined;
  if (!args || typeof args !== "object") throw new TypeError("driver domain: args must be DriverDomainArgs");
  if (!args.nic || !(args.nic.replyWord instanceof SharedArrayBuffer) || !args.nic.port)
    throw new TypeError("driver domain: args.nic must be the NIC's driver endpoint { port, replyWord }");
  if (!args.hostLink) throw new TypeError("driver domain: args.hostLink must be a MessagePort (transferred)");
  if (!(args.stats instanceof SharedArrayBuffer) || args.stats.byteLength < STATS_BYTES)
    throw new TypeError(`driver domain: args.stats must be a SharedArrayBuffer of ${STATS_BYTES} bytes`);
  if (
    args.netStats !== undefined &&
    (!(args.netStats instanceof SharedArrayBuffer) || args.netStats.byteLength < NET_STATS_BYTES)
  )
    throw new TypeError(
      `driver domain: args.netStats must be a SharedArrayBuffer of ${NET_STATS_BYTES} bytes`,
    );
  return args as DriverDomainArgs;
}

export default async function main(guest: Guest): Promise<{ stopped: true }> {
  if (!guest.privileged)
    throw new Error("the driver domain must run privileged (createDomain({ privileged: true }))");
  const args = checkArgs(guest.args);
  const link = args.hostLink;
  const post = (m: DriverToHost) => link.postMessage(m);
  const log = (message: string) => post({ type: "log", message, time: Date.now() });
  const nic = new SyncCallClient<NicControlRequest>(args.nic.port, args.nic.replyWord);
  const core = new MyriCore({
    guest,
    nic,
    stats: new Int32Array(args.stats),
    endpointsPerDomain: args.endpointsPerDomain ?? DEFAULT_ENDPOINTS_PER_DOMAIN,
    registeredBytesPerDomain: args.registeredBytesPerDomain ?? DEFAULT_REGISTERED_BYTES_PER_DOMAIN,
    regionsPerDomain: args.regionsPerDomain ?? DEFAULT_REGIONS_PER_DOMAIN,
    log,
  });
  const back = new MyriBack(guest, core);
  const native = new NativeService(core, log);
  await back.start();
  let netback: Netback | undefined;
  if (args.netStats) {
    const uplink = openUplink(nic);
    if (uplink.error !== undefined)
      log(`netback: no Ethernet uplink (${uplink.error}); the bridge connects this host's guests only`);
    netback = new Netback({
      guest,
      stats: args.netStats,
      nicId: core.nicId,
      log,
      uplink: uplink.port,
      ageingMs: args.bridgeAgeingMs,
      // MX frames go to the owner of the endpoint they name, and to no one else (mx-steer.ts).
      nicContext: (endpoint) => core.endpointContext(endpoint),
    });
    await netback.start();
  }
  // Native processes have no xenbus device: their XenStore home vanishing is how we learn they died.
  const goneIfHomeless = async (d: DomId) => {
    if (!(await guest.xenstore.exists(`/local/domain/${d}`))) native.gone(d);
  };
  const unwatchRelease = await guest.xenstore.watch("@releaseDomain", () => {
    void (async () => {
      for (const d of native.attached()) await goneIfHomeless(d);
    })();
  });

  let stop!: () => void;
  const stopped = new Promise<void>((r) => {
    stop = r;
  });
  link.on("message", (m: HostToDriver) => {
    if (m?.type === "attach-native") {
      native.attach(m.domid, m.endpoint);
      // It may have died (failed at load, or returned at once) before its link came: the
      // release's sweep ran without it, and the next one might be days away. (A look that
      // fails leaves it to that one.)
      void goneIfHomeless(m.domid).catch(() => undefined);
    } else if (m?.type === "stop") stop();
    else if (m?.type === "request") {
      try {
        const value =
          m.what === "nic-info"
            ? nic.call<NicInfo>({ op: "info" })
            : m.what === "endpoints"
              ? core.inspect()
              : { frontends: back.connected(), native: native.attached() };
        post({ type: "reply", id: m.id, ok: true, value });
      } catch (e) {
        post({ type: "reply", id: m.id, ok: false, error: (e as Error).message });
      }
    }
  });
  post({ type: "ready", nicId: core.nicId, maxEndpoints: core.maxEndpoints });
  await stopped;
  await unwatchRelease().catch(() => undefined);
  await back.stop();
  await netback?.stop();
  for (const d of native.attached()) native.gone(d);
  core.keeper.stop();
  core.memory.stop();
  link.close();
  return { stopped: true };
}

/**
 * The MX library's parts in one thread, for unit tests (mx-matching, mx-completion,
 * mx-partners): the real objects, wired as MxEndpoint wires them, over a NIC window that is
 * plain memory — a fake stands only where the NIC or a driver would be.
 */
import { ChannelPath } from "../../src/mx/channel-path.js";
import { Completion } from "../../src/mx/completion.js";
import { Matching } from "../../src/mx/matching.js";
import { NicQueues } from "../../src/mx/nic-queues.js";
import { PartnerTable } from "../../src/mx/partner.js";
import { PendingSends } from "../../src/mx/pending-sends.js";
import { PullRights } from "../../src/mx/pull-rights.js";
import { Regions } from "../../src/mx/regions.js";
import {
  EndpointContext,
  InboundRecord,
  MxRequest,
  type Partner,
  type PeerPath,
  type Puller,
} from "../../src/mx/types.js";
import type { DriverRegion, MxDriver } from "../../src/myrixen/driver-abi.js";
import { WINDOW_BYTES } from "../../src/nic/window.js";

/** A driver with no NIC behind it: buffers from plain shared memory, registrations counted. */
export class FakeDriver implements MxDriver {
  readonly path = "bypass";
  readonly nicId = 0;
  registered = 0;
  deregistered = 0;
  released: number[] = [];
  private nextRegion = 1;
  openEndpoint(endpointId: number) {
    return {
      endpointId,
      session: 1,
      window: new SharedArrayBuffer(WINDOW_BYTES),
      intr: new SharedArrayBuffer(4096),
    };
  }
  closeEndpoint(): void {}
  registerRegion(): DriverRegion {
    this.registered++;
    return { regionId: this.nextRegion++, key: 0x1234 };
  }
  deregisterRegion(): void {
    this.deregistered++;
  }
  connect(): never {
    throw new Error("not in a unit test");
  }
  acceptChannel(): never {
    throw new Error("not in a unit test");
  }
  releaseChannel(_endpointId: number, channelId: number): void {
    this.released.push(channelId);
  }
  allocBuffer(length: number): Uint8Array {
    return new Uint8Array(new SharedArrayBuffer(Math.ceil(length / 4096) * 4096));
  }
  freeBuffer(): void {}
  finalize(): void {}
}

/** A path that takes what it is given (or refuses, while `full`) and writes down every NOTIFY. */
export class RecordingPath implements PeerPath {
  readonly sent: MxRequest[] = [];
  readonly notified: [number, number, number][] = [];
  full = false;
  trySend(req: MxRequest): boolean {
    if (this.full) return false;
    this.sent.push(req);
    return true;
  }
  notify(syncId: number, xfer: number, status: number): void {
    this.notified.push([syncId, xfer, status]);
  }
}

/** A puller that writes down what it was asked to fetch. */
export class RecordingPuller implements Puller {
  readonly pulls: { req: MxRequest; source: Partner; syncId: number; region: number; xfer: number }[] = [];
  startPull(req: MxRequest, source: Partner, rec: InboundRecord, xfer: number): void {
    this.pulls.push({ req, source, syncId: rec.syncId, region: rec.region, xfer });
  }
}

/** An endpoint's lower parts, as MxEndpoint's constructor wires them. */
export function parts(memory?: SharedArrayBuffer, maxUnexpectedBytes?: number) {
  const driver = new FakeDriver();
  const window = new SharedArrayBuffer(WINDOW_BYTES);
  const ctx = new EndpointContext(0, 1, 1, 0x5eed);
  const regions = new Regions(driver, 1, memory, ctx.counters);
  const rights = new PullRights(window);
  const completion = new Completion(ctx, regions, rights);
  const partners = new PartnerTable(completion);
  const sends = new PendingSends(ctx, completion);
  const matching = new Matching(ctx, completion, partners, maxUnexpectedBytes);
  const nic = new NicQueues(window, ctx, completion, regions);
  partners.onPeerLost(sends);
  partners.onPeerLost(nic);
  partners.onPeerLost(matching);
  return { driver, window, ctx, regions, rights, completion, partners, sends, matching, nic };
}

/** A partner reached over a RecordingPath. */
export function peer(p: ReturnType<typeof parts>, endpoint = 7): { partner: Partner; path: RecordingPath } {
  const partner = p.partners.add(0, endpoint, 100 + endpoint);
  const path = new RecordingPath();
  p.partners.setFast(partner, path);
  return { partner, path };
}

/** An EAGER record carrying `payload` (the next of its pair's sequence unless `seq` says). */
export function eager(
  puller: Puller,
  matchLo: number,
  payload: Uint8Array,
  seq: number,
  syncId = 0,
): InboundRecord {
  const r = new InboundRecord(puller);
  r.matchLo = matchLo;
  r.length = payload.length;
  r.seq = seq;
  r.syncId = syncId;
  r.bytes = payload;
  r.payload = 0;
  return r;
}

/** A RNDV record announcing `length` bytes under pull right (region, key). */
export function rndv(
  puller: Puller,
  matchLo: number,
  length: number,
  seq: number,
  syncId: number,
): InboundRecord {
  const r = new InboundRecord(puller);
  r.rndv = true;
  r.matchLo = matchLo;
  r.length = length;
  r.seq = seq;
  r.syncId = syncId;
  r.region = 3;
  r.key = 0xabc;
  return r;
}

/**
 * One endpoint's side of a channel: its parts, its partner (the other side) and its path;
 * on the test's clock and with a lane policy page when given.
 */
export function channelEnd(
  channel: SharedArrayBuffer,
  side: 0 | 1,
  clock?: { t: number },
  policy?: SharedArrayBuffer,
) {
  const p = { ...parts(), now: clock === undefined ? undefined : () => clock.t };
  const partner = p.partners.add(0, 2 - side, 100 + side);
  const path = new ChannelPath(
    partner,
    { channelId: 1, channel, side, peerIntr: new SharedArrayBuffer(4096), policy },
    p,
  );
  partner.channel = path;
  partner.fast = path;
  p.partners.route(partner);
  return { p, partner, path };
}

/** mx_irecv on a channel end: a receive of `buffer` for match value (0, `matchLo`), exact. */
export function postRecv(e: ReturnType<typeof channelEnd>, buffer: Uint8Array, matchLo: number): MxRequest {
  const req = new MxRequest("recv", buffer, undefined);
  req.matchLo = matchLo;
  req.matchMaskHi = 0xffffffff;
  req.matchMaskLo = 0xffffffff;
  e.p.matching.post(req);
  return req;
}

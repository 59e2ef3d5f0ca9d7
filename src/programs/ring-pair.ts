/**
 * ring-pair: two guest domains exchanging requests over a granted ring — the substrate demo
 * (`npm start` until the MX paths land), the ring-throughput benchmark and the 1,000,000-
 * request test all run this program.
 *
 * Device "vring" (a made-up split device, set up like any Xen PV device):
 *   - the toolstack creates /local/domain/<front>/device/vring/0 and the backend directory;
 *   - the backend advertises `max-requests` and goes InitWait;
 *   - the frontend allocates one shareable page, initialises the ring on it, grants it to
 *     the backend, allocates an unbound event channel for it, writes `ring-ref` and
 *     `event-channel` and goes Initialised;
 *   - the backend maps the ring, binds the channel and goes Connected; so does the frontend.
 *
 * Wire format (little-endian, like a Xen io/ header):
 *   request  { uint32 id; uint16 op; uint16 pad; uint32 a; uint32 b }       16 bytes
 *   response { uint32 id; int16 status; uint16 pad; uint32 result; uint32 pad2 } 16 bytes
 *   op 1 = ADD (result = a + b mod 2^32), op 2 = STOP (last request; backend answers, then closes).
 *   status 0 = OK, −1 = EINVAL (unknown op).
 */
import { XenbusState, xenbusStateName } from "../xen/abi.js";
import type { CounterSnapshot } from "../xen/counters.js";
import type { EventChannelPort } from "../xen/event-channel.js";
import type { Guest } from "../xen/guest/guest.js";
import { BackRing, FrontRing, initSharedRing } from "../xen/ring.js";
import { XenbusBackend, XenbusFrontend } from "../xen/xenbus.js";

export const VRING_TYPE = "vring";
export const REQ_SIZE = 16;
export const RSP_SIZE = 16;
export const OP_ADD = 1;
export const OP_STOP = 2;
export const STATUS_OK = 0;
export const STATUS_EINVAL = -1;

export interface RingPairArgs {
  role: "front" | "back";
  /** The other domain. */
  peer: number;
  /** Requests the frontend sends (besides the final STOP). */
  requests: number;
  /** Spin budget of waits, µs. */
  spinUs?: number;
}

export interface RingPairResult {
  role: "front" | "back";
  requests: number;
  /** Data-phase time (handshake excluded), ms. */
  elapsedMs: number;
  requestsPerSecond: number;
  /** Notifications this side sent during the data phase. */
  notifications: number;
  /** Frontend: responses checked and found right. */
  verified: number;
  /** States the peer was seen in during the handshake, in order. */
  peerStates: string[];
  counters: CounterSnapshot;
  /** Backend: why it disconnected the frontend, if it did. */
  broken?: string;
}

const WAIT_TIMEOUT_MS = 30_000;

export default async function main(guest: Guest): Promise<RingPairResult> {
  // The host says when the toolstack has created the device; a domain started before its
  // peer existed gets its arguments in that message instead of at boot.
  const go = await guest.nextMessage();
  const args = (guest.args ?? go) as RingPairArgs;
  if (args?.role !== "front" && args?.role !== "back")
    throw new TypeError('ring-pair: args.role must be "front" or "back"');
  return args.role === "front" ? frontend(guest, args) : backend(guest, args);
}

async function frontend(guest: Guest, args: RingPairArgs): Promise<RingPairResult> {
  const xb = new XenbusFrontend(guest.xenstore, VRING_TYPE, 0);
  const peerStates: string[] = [];
  const unwatch = await xb.onBackendState((s) => peerStates.push(xenbusStateName(s)));
  const page = guest.allocShared(1);
  initSharedRing(page.bytes);
  const ring = new FrontRing(page.bytes, REQ_SIZE, RSP_SIZE);
  let portNo = 0;
  await xb.connect(async (features) => {
    const max = Number(features["max-requests"]);
    if (!(max >= args.requests))
      throw new Error(`backend accepts at most ${features["max-requests"]} requests`);
    const ref = guest.grants.grantAccess(args.peer, page.pfn);
    portNo = guest.evtchn.allocUnbound(args.peer);
    return { "ring-ref": ref, "event-channel": portNo };
  });
  await unwatch();
  const port = guest.evtchn.port(portNo);
  // Masked between waits: the backend's sends then kick only while this side really sleeps.
  port.mask();
  const before = guest.counters();
  const t0 = performance.now();
  const verified = pump(ring, port, args.requests, args.spinUs);
  const elapsedMs = performance.now() - t0;
  const after = guest.counters();
  await xb.close();
  return {
    role: "front",
    requests: args.requests,
    elapsedMs,
    requestsPerSecond: (args.requests / elapsedMs) * 1000,
    notifications: after.evtchn_send - before.evtchn_send,
    verified,
    peerStates,
    counters: after,
  };
}

/** The frontend's data phase: keep the ring full, check every answer, sleep only when nothing can move. */
function pump(ring: FrontRing, port: EventChannelPort, total: number, spinUs?: number): number {
  const v = ring.view;
  let sent = 0;
  let received = 0;
  let verified = 0;
  let stopSent = false;
  for (;;) {
    while (!ring.isFull() && !stopSent) {
      const off = ring.nextRequest();
      if (sent < total) {
        v.setUint32(off, sent, true);
        v.setUint16(off + 4, OP_ADD, true);
        v.setUint32(off + 8, sent, true);
        v.setUint32(off + 12, 7, true);
        sent++;
      } else {
        v.setUint32(off, total, true);
        v.setUint16(off + 4, OP_STOP, true);
        stopSent = true;
      }
    }
    if (ring.pushRequests()) port.notify();
    while (ring.unconsumedResponses() > 0) {
      const off = ring.nextResponse();
      const id = v.getUint32(off, true);
      if (id === total) return verified; // the STOP's answer: everything before it was answered
      if (id !== received) throw new Error(`response ${id} arrived where ${received} was due`);
      if (v.getInt16(off + 4, true) === STATUS_OK && v.getUint32(off + 8, true) === (id + 7) >>> 0)
        verified++;
      received++;
    }
    if (ring.broken) throw new Error(`backend broke the ring protocol: ${ring.broken}`);
    if (ring.isFull() || stopSent) {
      if (!ring.finalCheckForResponses() && port.wait(WAIT_TIMEOUT_MS, spinUs) === "timeout")
        throw new Error(`no response for ${WAIT_TIMEOUT_MS} ms (${received} of ${total} answered)`);
    }
  }
}

async function backend(guest: Guest, args: RingPairArgs): Promise<RingPairResult> {
  const xb = new XenbusBackend(guest.xenstore, VRING_TYPE, args.peer, 0);
  const peerStates: string[] = [];
  const unwatch = await xb.onFrontendState((s) => peerStates.push(xenbusStateName(s)));
  const keys = await xb.connect({ "max-requests": 0xffffffff }, ["ring-ref", "event-channel"]);
  const mapping = guest.grants.mapOrThrow(args.peer, Number(keys["ring-ref"]));
  const port = guest.evtchn.port(guest.evtchn.bindInterdomain(args.peer, Number(keys["event-channel"])));
  port.mask();
  const ring = new BackRing(mapping.bytes, REQ_SIZE, RSP_SIZE);
  const before = guest.counters();
  const t0 = performance.now();
  const served = serve(ring, port, args.spinUs);
  const elapsedMs = performance.now() - t0;
  const after = guest.counters();
  await xb.waitForFrontendState([XenbusState.Closing, XenbusState.Closed]);
  await unwatch();
  guest.grants.unmap(mapping);
  await xb.switchState(XenbusState.Closed);
  return {
    role: "back",
    requests: served,
    elapsedMs,
    requestsPerSecond: (served / elapsedMs) * 1000,
    notifications: after.evtchn_send - before.evtchn_send,
    verified: served,
    peerStates,
    counters: after,
    broken: ring.broken,
  };
}

/** The backend's data phase: copy each request before looking at it, answer, batch notifications. */
function serve(ring: BackRing, port: EventChannelPort, spinUs?: number): number {
  const req = new Uint8Array(REQ_SIZE);
  const r = new DataView(req.buffer);
  const v = ring.view;
  let served = 0;
  for (;;) {
    let stop = false;
    while (ring.unconsumedRequests() > 0) {
      ring.copyRequest(req);
      const id = r.getUint32(0, true);
      const op = r.getUint16(4, true);
      const off = ring.nextResponse();
      v.setUint32(off, id, true);
      v.setUint32(off + 12, 0, true);
      if (op === OP_ADD) {
        v.setInt16(off + 4, STATUS_OK, true);
        v.setUint32(off + 8, (r.getUint32(8, true) + r.getUint32(12, true)) >>> 0, true);
        served++;
      } else {
        // Anything else from the guest is answered, never trusted: STOP ends the session.
        v.setInt16(off + 4, op === OP_STOP ? STATUS_OK : STATUS_EINVAL, true);
        v.setUint32(off + 8, 0, true);
        if (op === OP_STOP) stop = true;
      }
    }
    if (ring.pushResponses()) port.notify();
    if (stop || ring.broken) return served;
    if (!ring.finalCheckForRequests()) {
      const w = port.wait(WAIT_TIMEOUT_MS, spinUs);
      if (w === "unbound") return served;
      if (w === "timeout")
        throw new Error(`frontend idle for ${WAIT_TIMEOUT_MS} ms after ${served} requests`);
    }
  }
}

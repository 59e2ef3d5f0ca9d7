/**
 * netfront's set-up and release (Linux's xen-netfront talk_to_netback and
 * xennet_disconnect_backend): the options and their limits, the pages the vif needs (two
 * rings, TX and RX buffers), the grants that give them to netback once (persistent: no grant
 * operation per frame), the RX buffers posted before netback attaches, the xenbus handshake
 * (xen/xenbus-sync.ts) and the checks on what the backend advertised; at close, the grants
 * ended and the pages freed. The data path is netfront.ts.
 */

import { PAGE_SIZE } from "../xen/abi.js";
import type { Guest } from "../xen/guest/guest.js";
import {
  ETH_HLEN,
  NETIF_MTU,
  NetifKey,
  parseMac,
  RX_REQ_BYTES,
  RX_RING_SIZE,
  RX_RSP_BYTES,
  TX_RING_SIZE,
  VIF_DEVICE_TYPE,
  writeRxRequest,
} from "../xen/io/netif.js";
import type { PageRun } from "../xen/memory.js";
import { FrontRing, initSharedRing } from "../xen/ring.js";
import { DEFAULT_XENBUS_TIMEOUT_MS } from "../xen/xenbus.js";
import { FrontendHandshakeError, SyncXenbusFrontend } from "../xen/xenbus-sync.js";

export interface NetfrontOptions {
  /** Device index under device/vif (default 0). */
  devid?: number;
  /** How long to wait for the device directory and for each handshake step (ms). */
  timeoutMs?: number;
  /** TX buffer pages (one per in-flight slot; default guest pages / 8, 16..256). */
  txBuffers?: number;
  /** RX buffer pages posted to netback (default guest pages / 4, 16..256). */
  rxBuffers?: number;
  /** Repost RX buffers once this many are free (default rxBuffers / 4). */
  rxRefillBatch?: number;
  /** Spin budget of `wait` (µs) before sleeping on the event channel. */
  spinUs?: number;
}

export class NetfrontError extends Error {
  override readonly name = "NetfrontError";
}

/** The vif's pages: the two rings, then the TX and RX buffers; `grants` lists every grant to netback. */
export interface VifPages {
  rings: PageRun;
  tx: PageRun;
  rx: PageRun;
  grants: number[];
}

/** A connected vif, as the set-up hands it to Netfront. */
export interface VifSetup {
  device: SyncXenbusFrontend;
  /** The backend's domain. */
  backendId: number;
  pages: VifPages;
  /** Grant of TX buffer i (page i of pages.tx) and of RX buffer i; the index is the request id. */
  txGref: Uint32Array;
  rxGref: Uint32Array;
  /** The event channel the handshake bound. */
  portNo: number;
  /** What the backend advertised. */
  features: Record<string, string>;
  mac: Uint8Array;
  mtu: number;
  nicId: number;
  rxBatch: number;
  spinUs: number | undefined;
}

function clampInt(name: string, v: number | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return Math.min(max, Math.max(min, def));
  if (!Number.isInteger(v) || v < min || v > max)
    throw new NetfrontError(
      `Netfront.connect: ${name} must be an integer in ${min}..${max}, got ${String(v)}`,
    );
  return v;
}

/**
 * Connects to the vif the toolstack gave this guest (Host.startGuest creates device/vif/0).
 * Synchronous: the xenbus steps use synchronous XenStore requests and poll the peer's state.
 */
export function setUpVif(guest: Guest, opts: NetfrontOptions): VifSetup {
  if (guest.native)
    throw new NetfrontError(
      "a native process has no vif device: it is not a VM (start a guest with Host.startGuest)",
    );
  const devid = opts.devid ?? 0;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_XENBUS_TIMEOUT_MS;
  const guestPages = guest.memory.nrPages;
  const nTx = clampInt("txBuffers", opts.txBuffers, guestPages >> 3, 16, TX_RING_SIZE);
  const nRx = clampInt("rxBuffers", opts.rxBuffers, guestPages >> 2, 16, RX_RING_SIZE);
  const rxBatch = clampInt("rxRefillBatch", opts.rxRefillBatch, nRx >> 2, 1, nRx);
  // The xenbus walk is xen/xenbus-sync.ts's (one per device; a device this guest closed
  // before is re-initialised, and netback starts over from InitWait).
  let device: SyncXenbusFrontend;
  try {
    device = SyncXenbusFrontend.open(guest, VIF_DEVICE_TYPE, devid, timeoutMs, { exclusive: true });
  } catch (e) {
    if (!(e instanceof FrontendHandshakeError)) throw e;
    if (e.step === "in-use")
      throw new NetfrontError(`${e.message}: one Netfront per device; close() the other first`);
    if (e.step !== "device") throw new NetfrontError(e.message);
    throw new NetfrontError(
      `domain ${guest.domid} has no usable vif device ${devid} (${e.message}); ` +
        "start the guest with Host.startGuest, whose toolstack creates device/vif/0",
    );
  }
  const backId = device.backId;

  const need = 2 + nTx + nRx;
  if (guest.memory.allocator.freePages < need)
    throw new NetfrontError(
      `the vif needs ${need} pages (2 rings, ${nTx} tx and ${nRx} rx buffers) but domain ${guest.domid} has ` +
        `${guest.memory.allocator.freePages} free; give the guest more pages or pass smaller txBuffers/rxBuffers`,
    );
  const rings = guest.memory.allocPages(2);
  const txRun = guest.memory.allocPages(nTx);
  const rxRun = guest.memory.allocPages(nRx);
  initSharedRing(rings.bytes.subarray(0, PAGE_SIZE));
  initSharedRing(rings.bytes.subarray(PAGE_SIZE, 2 * PAGE_SIZE));
  const grants: number[] = [];
  // The handshake closes the event channel it allocated; the grants and pages are ours.
  const free = () => {
    const left = endGrants(guest, grants);
    if (left === 0) for (const run of [rings, txRun, rxRun]) guest.memory.freePages(run);
  };
  let info: { mac: Uint8Array; mtu: number; nicId: number } | undefined;
  const txGref = new Uint32Array(nTx);
  const rxGref = new Uint32Array(nRx);
  let features: Record<string, string>;
  let portNo: number;
  try {
    ({ features, port: portNo } = device.connect((offered) => {
      if (offered[NetifKey.featureRxCopy] !== "1")
        throw new Error("the backend does not offer feature-rx-copy=1 (this frontend never flips pages)");
      const mac = parseMac(offered[NetifKey.mac]);
      if (!mac) throw new Error(`the backend's mac ${JSON.stringify(offered[NetifKey.mac])} is not a MAC`);
      const nicIdText = offered[NetifKey.mxNicId] ?? "";
      if (!/^\d+$/.test(nicIdText)) throw new Error("the backend did not advertise mx-nic-id");
      const mtuText = offered[NetifKey.mtu];
      let mtu = mtuText !== undefined && /^\d+$/.test(mtuText) ? Number(mtuText) : 1500;
      mtu = Math.min(mtu, NETIF_MTU);
      // Without scatter-gather a frame must fit one page.
      if (offered[NetifKey.featureSg] !== "1") mtu = Math.min(mtu, PAGE_SIZE - ETH_HLEN);
      if (mtu < 68) throw new Error(`the backend's mtu ${mtuText} is below the minimum of 68`);
      info = { mac, mtu, nicId: Number(nicIdText) };

      const g = guest.grants;
      const txRingRef = g.grantAccess(backId, rings.pfn);
      grants.push(txRingRef);
      const rxRingRef = g.grantAccess(backId, rings.pfn + 1);
      grants.push(rxRingRef);
      // TX buffers only need reading by the backend; RX buffers are written by its copies.
      for (let i = 0; i < nTx; i++)
        grants.push((txGref[i] = g.grantAccess(backId, txRun.pfn + i, { readonly: true })));
      for (let i = 0; i < nRx; i++) grants.push((rxGref[i] = g.grantAccess(backId, rxRun.pfn + i)));
      // Post every RX buffer before the backend attaches; it finds them when it maps the ring.
      const rxRing = new FrontRing(
        rings.bytes.subarray(PAGE_SIZE, 2 * PAGE_SIZE),
        RX_REQ_BYTES,
        RX_RSP_BYTES,
      );
      for (let i = 0; i < nRx; i++) writeRxRequest(rxRing.view, rxRing.nextRequest(), i, rxGref[i]);
      rxRing.pushRequests();
      return {
        [NetifKey.txRingRef]: String(txRingRef),
        [NetifKey.rxRingRef]: String(rxRingRef),
        [NetifKey.requestRxCopy]: "1",
        [NetifKey.featureRxNotify]: "1",
        [NetifKey.featureSg]: "1",
      };
    }));
  } catch (e) {
    free();
    throw new NetfrontError(`the vif handshake with domain ${backId} failed: ${(e as Error).message}`);
  }
  const { mac, mtu, nicId } = info as { mac: Uint8Array; mtu: number; nicId: number };
  return {
    device,
    backendId: backId,
    pages: { rings, tx: txRun, rx: rxRun, grants },
    txGref,
    rxGref,
    portNo,
    features,
    mac,
    mtu,
    nicId,
    rxBatch,
    spinUs: opts.spinUs,
  };
}

const napWord = new Int32Array(new SharedArrayBuffer(4));

/**
 * Ends the vif's grants and frees its pages (after the device went Closed and its channel
 * closed). netback unmaps the rings before it goes Closing; a copy in flight ends within
 * microseconds, so a grant still in use is retried briefly. Pages whose grants could not all
 * be ended are never freed (another domain might still reach them).
 */
export function releaseVif(guest: Guest, pages: VifPages): void {
  let left = endGrants(guest, pages.grants);
  for (let i = 0; left > 0 && i < 100; i++) {
    Atomics.wait(napWord, 0, 0, 1);
    left = endGrants(guest, pages.grants);
  }
  if (left === 0) {
    const m = guest.memory;
    m.freePages(pages.rings);
    m.freePages(pages.tx);
    m.freePages(pages.rx);
  }
}

/** Ends the grants in `refs` it can (removing them); returns how many are still in use. */
function endGrants(guest: Guest, refs: number[]): number {
  let w = 0;
  for (const r of refs) {
    try {
      guest.grants.endAccess(r);
    } catch {
      if (guest.grants.isInUse(r)) refs[w++] = r;
    }
  }
  refs.length = w;
  return w;
}

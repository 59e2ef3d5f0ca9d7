/**
 * The NIC's per-link bookkeeping for the wire between NICs (nic.ts drives it): header-only
 * frames waiting for a link that pushes back, SENDs awaiting their SEND_ACK, the PULL jobs
 * this NIC serves for the peer, and the MAC table of the Ethernet port. Everything lives in
 * preallocated typed arrays, so the per-frame paths allocate nothing.
 */
import { FRAME_HEADER_BYTES, type Link } from "./link.js";

/** Header-only frames (SEND_ACK, CONNECT_*, PULL_REQUEST, error PULL_REPLY) held per link while it pushes back. */
export const CTRL_QUEUE = 1024;
/** SENDs per link awaiting their SEND_ACK; a full window holds the next SEND in its queue. */
export const SEND_WINDOW = 256;
/** PULL jobs this NIC serves concurrently per link; the requesting side keeps at most as many outstanding. */
export const PULL_JOBS_PER_LINK = 64;
/** Bytes one job may send per visit (jobs of a link take turns; a visit ends early on back-pressure). */
export const JOB_ROUND = 256 * 1024;

export class LinkState {
  /** Set false when the link is removed: callbacks that still hold it do nothing. */
  attached = true;
  /** Index in the NIC's compact list of links. */
  index = -1;

  readonly ctrl = new Uint8Array(CTRL_QUEUE * FRAME_HEADER_BYTES);
  ctrlHead = 0;
  ctrlCount = 0;

  // SENDs awaiting their ACK, a ring in send order. ACKs mostly come in order (TCP, and the
  // receiver places in order per endpoint) but not always (a delivery that waits for receive
  // space is acknowledged after later ones), so an ACK is matched from the head on.
  readonly sCookie = new Int32Array(SEND_WINDOW);
  readonly sEp = new Int32Array(SEND_WINDOW);
  readonly sSession = new Uint32Array(SEND_WINDOW);
  readonly sLen = new Uint32Array(SEND_WINDOW);
  readonly sDeadline = new Float64Array(SEND_WINDOW);
  readonly sDone = new Uint8Array(SEND_WINDOW);
  sHead = 0;
  sCount = 0;

  // PULL jobs served for the peer (responder side).
  readonly jUsed = new Uint8Array(PULL_JOBS_PER_LINK);
  readonly jId = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jReqEp = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jReqSession = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jSrcEp = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jSrcSession = new Uint32Array(PULL_JOBS_PER_LINK);
  /** The pull right (exposure index in the source endpoint's window) the job copies under. */
  readonly jXp = new Int32Array(PULL_JOBS_PER_LINK);
  readonly jRegion = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jOff = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jLen = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jSent = new Uint32Array(PULL_JOBS_PER_LINK);
  jobCount = 0;
  jNext = 0;

  /** Remote PULLs this NIC has outstanding on this link (requester side). */
  pullsOut = 0;

  constructor(
    readonly link: Link,
    readonly peerNic: number,
  ) {}

  /** Index (ring position) of the first pending SEND matching the ACK, or -1. */
  findSend(ep: number, session: number, cookie: number): number {
    for (let k = 0; k < this.sCount; k++) {
      const i = (this.sHead + k) % SEND_WINDOW;
      if (
        this.sDone[i] === 0 &&
        this.sEp[i] === ep &&
        this.sSession[i] === session &&
        this.sCookie[i] === cookie
      )
        return i;
    }
    return -1;
  }

  pushSend(ep: number, session: number, cookie: number, len: number, deadline: number): void {
    const i = (this.sHead + this.sCount) % SEND_WINDOW;
    this.sEp[i] = ep;
    this.sSession[i] = session;
    this.sCookie[i] = cookie;
    this.sLen[i] = len;
    this.sDeadline[i] = deadline;
    this.sDone[i] = 0;
    this.sCount++;
  }

  /** Marks the entry at ring position i completed and drops completed entries from the head. */
  completeSend(i: number): void {
    this.sDone[i] = 1;
    this.trimSends();
  }

  /** Drops completed entries from the head. */
  trimSends(): void {
    while (this.sCount > 0 && this.sDone[this.sHead] === 1) {
      this.sHead = (this.sHead + 1) % SEND_WINDOW;
      this.sCount--;
    }
  }

  freeJob(j: number): void {
    if (this.jUsed[j] === 0) return;
    this.jUsed[j] = 0;
    this.jobCount--;
  }
}

// ---- MAC learning -----------------------------------------------------------------------------

export const MAC_SETS = 1024;
export const MAC_WAYS = 4;
/** Learned entries expire after this many seconds without a frame from that address. */
export const MAC_AGE_S = 300;

/**
 * Which link a unicast MAC address was last seen on (its source MAC in an ETHERNET frame from
 * that link). Set-associative: 4 ways per set, a stale or the oldest way is replaced, so the
 * table never grows and a lookup is a few compares.
 */
export class MacTable {
  private readonly hi = new Uint32Array(MAC_SETS * MAC_WAYS);
  private readonly lo = new Uint32Array(MAC_SETS * MAC_WAYS);
  private readonly peer = new Uint32Array(MAC_SETS * MAC_WAYS);
  /** Seconds (the NIC's clock) + 1 of the last sighting; 0 = empty. */
  private readonly seen = new Int32Array(MAC_SETS * MAC_WAYS);

  private static set(hi: number, lo: number): number {
    return ((Math.imul(lo ^ (hi * 0x9e37), 0x9e3779b1) >>> 22) % MAC_SETS) * MAC_WAYS;
  }

  learn(hi: number, lo: number, peer: number, nowS: number): void {
    const base = MacTable.set(hi, lo);
    const stamp = nowS + 1;
    let victim = base;
    for (let w = base; w < base + MAC_WAYS; w++) {
      if (this.seen[w] !== 0 && this.hi[w] === hi && this.lo[w] === lo) {
        this.peer[w] = peer;
        this.seen[w] = stamp;
        return;
      }
      if (this.seen[w] < this.seen[victim]) victim = w;
    }
    this.hi[victim] = hi;
    this.lo[victim] = lo;
    this.peer[victim] = peer;
    this.seen[victim] = stamp;
  }

  /** The peer NIC a unicast address was learned on, or -1 (unknown or aged out). */
  lookup(hi: number, lo: number, nowS: number): number {
    const base = MacTable.set(hi, lo);
    for (let w = base; w < base + MAC_WAYS; w++) {
      if (this.seen[w] !== 0 && this.hi[w] === hi && this.lo[w] === lo) {
        if (nowS + 1 - this.seen[w] > MAC_AGE_S) {
          this.seen[w] = 0;
          return -1;
        }
        return this.peer[w];
      }
    }
    return -1;
  }

  /** Live entries (info and tests). */
  size(nowS: number): number {
    let n = 0;
    for (let w = 0; w < this.seen.length; w++)
      if (this.seen[w] !== 0 && nowS + 1 - this.seen[w] <= MAC_AGE_S) n++;
    return n;
  }
}

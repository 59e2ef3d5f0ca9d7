/**
 * Xen's shared I/O ring (xen/include/public/io/ring.h) over one page of shared memory.
 *
 * The page layout is ring.h's `struct *_sring` byte for byte: `req_prod, req_event, rsp_prod,
 * rsp_event` (uint32, free-running), a 4-byte `pvt`, 44 pad bytes, then `ring[]` of slots that
 * each hold a request or its response. `FrontRing` and `BackRing` are the private halves
 * (`*_front_ring`, `*_back_ring`) and their methods are the RING_* macros: push-and-check-
 * notify with event indexes, final checks that close the lost-wake-up race, and
 * RING_COPY_REQUEST for the backend.
 *
 * Index words are read and written only with `Atomics` (sequentially consistent), which gives
 * the barriers ring.h spells out: slot bytes written with plain stores before an
 * `Atomics.store` of a producer index are visible to a peer that `Atomics.load`s that index.
 *
 * Both ends treat everything in the page as hostile input: no index value and no slot content
 * written by the peer can make a method throw or loop; an impossible producer index marks the
 * ring `broken` (with the numbers) so its owner can disconnect the peer. Nothing on the
 * per-request path allocates.
 */

import { PAGE_SIZE } from "./abi.js";

/** Byte offsets of the shared header fields, as in ring.h's `struct *_sring`. */
export const RingOffsets = {
  reqProd: 0,
  reqEvent: 4,
  rspProd: 8,
  rspEvent: 12,
  pvt: 16,
  /** First slot of `ring[]`: after 16 index bytes, 4 `pvt` bytes and 44 pad bytes. */
  ring: 64,
} as const;

/** Size of the shared header in bytes (`offsetof(struct *_sring, ring)`). */
export const RING_HEADER_BYTES = RingOffsets.ring;

// Int32 word indexes of the header fields.
const REQ_PROD = 0;
const REQ_EVENT = 1;
const RSP_PROD = 2;
const RSP_EVENT = 3;
const HEADER_WORDS = RING_HEADER_BYTES / 4;

/** Slot size for a request/response pair: the union's size, rounded up to 4 bytes. */
export function ringSlotSize(requestSize: number, responseSize: number): number {
  checkPositiveInt("requestSize", requestSize);
  checkPositiveInt("responseSize", responseSize);
  return (Math.max(requestSize, responseSize) + 3) & ~3;
}

/**
 * Number of slots in a one-page ring (`__CONST_RING_SIZE`): the largest power of two
 * ≤ (PAGE_SIZE − 64) / slotSize. Throws a RangeError if not even one slot fits.
 */
export function ringEntries(slotSize: number): number {
  checkPositiveInt("slotSize", slotSize);
  const fit = Math.floor((PAGE_SIZE - RING_HEADER_BYTES) / slotSize);
  if (fit < 1) {
    throw new RangeError(
      `ring slot of ${slotSize} bytes does not fit in a page (at most ${PAGE_SIZE - RING_HEADER_BYTES})`,
    );
  }
  return 1 << (31 - Math.clz32(fit));
}

/**
 * SHARED_RING_INIT: producers = `startIndex`, event indexes = `startIndex + 1`, `pvt` and
 * padding zeroed. Only the frontend initialises the page (a backend that re-initialises it
 * loses the frontend's requests). A non-zero `startIndex` exists to test 32-bit wrap-around;
 * rings attached afterwards pick it up from the producer indexes.
 */
export function initSharedRing(page: Uint8Array, startIndex = 0): void {
  const header = headerWords(page);
  const start = startIndex >>> 0;
  for (let i = 0; i < HEADER_WORDS; i++) Atomics.store(header, i, 0);
  Atomics.store(header, REQ_EVENT, start + 1);
  Atomics.store(header, RSP_EVENT, start + 1);
  Atomics.store(header, RSP_PROD, start);
  // req_prod last: a peer that sees it has seen the rest of the initialised header.
  Atomics.store(header, REQ_PROD, start);
}

/** `(new − event) < (new − old)` as uint32: the peer's event index lies in (old, new]. */
function mustNotify(newProd: number, oldProd: number, event: number): boolean {
  return (newProd - event) >>> 0 < (newProd - oldProd) >>> 0;
}

function checkPositiveInt(name: string, v: number): void {
  if (!Number.isInteger(v) || v <= 0) throw new RangeError(`${name} must be a positive integer, got ${v}`);
}

function checkPage(page: Uint8Array): void {
  if (!(page instanceof Uint8Array)) throw new TypeError("ring page must be a Uint8Array");
  if (page.byteLength < PAGE_SIZE) {
    throw new RangeError(`ring page must be ${PAGE_SIZE} bytes, got ${page.byteLength}`);
  }
  if (page.byteOffset % 8 !== 0) {
    throw new RangeError(`ring page must start at a multiple of 8 bytes, got byteOffset ${page.byteOffset}`);
  }
}

function headerWords(page: Uint8Array): Int32Array {
  checkPage(page);
  return new Int32Array(page.buffer, page.byteOffset, HEADER_WORDS);
}

/** What both halves share: geometry, typed views of the page, and the shared header words. */
abstract class RingBase {
  /** Number of slots (RING_SIZE); a power of two. */
  readonly size: number;
  /** Bytes per slot (the request/response union, 4-byte aligned). */
  readonly slotSize: number;
  readonly requestSize: number;
  readonly responseSize: number;
  /** The page; offsets returned by `next*` index into it. */
  readonly bytes: Uint8Array;
  /** A DataView of the page for writing and reading slots without allocating. */
  readonly view: DataView;
  /**
   * Set, with the offending numbers, when the peer published an impossible producer index.
   * From then on the ring reports no work; its owner should disconnect the peer.
   */
  broken: string | undefined = undefined;

  protected readonly header: Int32Array;
  protected readonly mask: number;

  constructor(page: Uint8Array, requestSize: number, responseSize: number) {
    this.header = headerWords(page);
    this.slotSize = ringSlotSize(requestSize, responseSize);
    this.size = ringEntries(this.slotSize);
    this.mask = this.size - 1;
    this.requestSize = requestSize;
    this.responseSize = responseSize;
    this.bytes = new Uint8Array(page.buffer, page.byteOffset, PAGE_SIZE);
    this.view = new DataView(page.buffer, page.byteOffset, PAGE_SIZE);
  }

  /** Byte offset in `bytes` of the slot for free-running index `idx` (RING_GET_REQUEST). */
  slotOffset(idx: number): number {
    return RING_HEADER_BYTES + (idx & this.mask) * this.slotSize;
  }

  /** Value of the shared `pvt` word (netif uses it for `smartpoll_active`). */
  get pvt(): number {
    return this.view.getUint32(RingOffsets.pvt, true);
  }
}

/** The frontend's half (ring.h `*_front_ring`): produces requests, consumes responses. */
export class FrontRing extends RingBase {
  private reqProdPvt: number;
  private rspCons: number;
  /** The req_prod we last published: the `old` of the notify check, kept privately. */
  private reqPushed: number;
  /** The rsp_prod last validated by `unconsumedResponses`; `nextResponse` never passes it. */
  private rspSeen: number;

  /**
   * Attaches to a page this frontend has initialised with `initSharedRing` (FRONT_RING_ATTACH):
   * private indexes start at the shared producers, so a non-zero start index carries over.
   */
  constructor(page: Uint8Array, requestSize: number, responseSize: number) {
    super(page, requestSize, responseSize);
    const reqProd = Atomics.load(this.header, REQ_PROD);
    const rspProd = Atomics.load(this.header, RSP_PROD);
    if ((reqProd - rspProd) >>> 0 > this.size) {
      throw new RangeError(
        `ring page is not initialised (req_prod ${reqProd >>> 0}, rsp_prod ${rspProd >>> 0}, size ${this.size}): ` +
          "call initSharedRing on it first",
      );
    }
    this.reqProdPvt = reqProd;
    this.reqPushed = reqProd;
    this.rspCons = rspProd;
    this.rspSeen = rspProd;
  }

  /** Free request slots (RING_FREE_REQUESTS); only private state, so a peer cannot skew it. */
  freeRequests(): number {
    return this.size - ((this.reqProdPvt - this.rspCons) >>> 0);
  }

  /** RING_FULL. */
  isFull(): boolean {
    return this.freeRequests() === 0;
  }

  /**
   * Claims the next request slot (RING_GET_REQUEST at req_prod_pvt++) and returns its byte
   * offset in `bytes`. Not visible to the backend until `pushRequests`.
   * @throws RangeError if the ring is full: check `isFull()` first.
   */
  nextRequest(): number {
    if (this.freeRequests() === 0) {
      throw new RangeError(
        `ring full (${this.size} requests outstanding): check isFull() before nextRequest()`,
      );
    }
    const off = this.slotOffset(this.reqProdPvt);
    this.reqProdPvt = (this.reqProdPvt + 1) | 0;
    return off;
  }

  /**
   * RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: publishes the requests claimed so far and returns
   * whether the backend asked to be notified of them (its req_event lies in (old, new]).
   */
  pushRequests(): boolean {
    const oldProd = this.reqPushed;
    const newProd = this.reqProdPvt;
    this.reqPushed = newProd;
    // Atomics.store is the write barrier (slots before index); the seq-cst store→load order
    // is the full barrier that makes the backend's req_event update and our publish race-free.
    Atomics.store(this.header, REQ_PROD, newProd);
    return mustNotify(newProd, oldProd, Atomics.load(this.header, REQ_EVENT));
  }

  /**
   * RING_HAS_UNCONSUMED_RESPONSES. A backend whose rsp_prod claims more responses than there
   * are pushed, unanswered requests (RING_RESPONSE_PROD_OVERFLOW) marks the ring `broken`.
   */
  unconsumedResponses(): number {
    if (this.broken !== undefined) return 0;
    const rspProd = Atomics.load(this.header, RSP_PROD);
    const avail = (rspProd - this.rspCons) >>> 0;
    const outstanding = (this.reqPushed - this.rspCons) >>> 0;
    if (avail > outstanding) {
      this.broken =
        `backend rsp_prod ${rspProd >>> 0} is ${avail} past rsp_cons ${this.rspCons >>> 0}, ` +
        `but only ${outstanding} requests are outstanding (req_prod ${this.reqPushed >>> 0}, ring size ${this.size})`;
      return 0;
    }
    this.rspSeen = rspProd;
    return avail;
  }

  /**
   * Returns the byte offset of the next response slot and consumes it (rsp_cons++). Only
   * responses already counted by `unconsumedResponses` / `finalCheckForResponses` are handed
   * out, so a backend moving rsp_prod meanwhile changes nothing here.
   * @throws RangeError if there is no such response (caller bug).
   */
  nextResponse(): number {
    if (this.rspCons === this.rspSeen) {
      throw new RangeError("no unconsumed response: check unconsumedResponses() before nextResponse()");
    }
    const off = this.slotOffset(this.rspCons);
    this.rspCons = (this.rspCons + 1) | 0;
    return off;
  }

  /**
   * RING_FINAL_CHECK_FOR_RESPONSES: true if responses are waiting. Otherwise asks for a
   * notification at the next response (rsp_event = rsp_cons + 1) and checks again, because a
   * response pushed between the first check and the event update would not notify us; after
   * a false return it is safe to sleep until notified.
   */
  finalCheckForResponses(): boolean {
    if (this.unconsumedResponses() > 0) return true;
    if (this.broken !== undefined) return false;
    Atomics.store(this.header, RSP_EVENT, (this.rspCons + 1) | 0);
    return this.unconsumedResponses() > 0;
  }

  /**
   * Batching: ask to be notified only when the `ahead`-th next response is pushed
   * (rsp_event = rsp_cons + ahead, 1 ≤ ahead ≤ size). Re-check `unconsumedResponses()`
   * afterwards before sleeping, and only wait for as many responses as are certain to come.
   */
  setResponseEvent(ahead: number): void {
    if (!Number.isInteger(ahead) || ahead < 1 || ahead > this.size) {
      throw new RangeError(`response event must be 1..${this.size} ahead, got ${ahead}`);
    }
    Atomics.store(this.header, RSP_EVENT, (this.rspCons + ahead) | 0);
  }
}

/** The backend's half (ring.h `*_back_ring`): consumes requests, produces responses. */
export class BackRing extends RingBase {
  private rspProdPvt: number;
  private reqCons: number;
  /** The rsp_prod we last published: the `old` of the notify check, kept privately. */
  private rspPushed: number;
  /**
   * The req_prod `unconsumedRequests` last validated: `copyRequest` consumes up to it without
   * reading the shared word again (netback reads req_prod once per batch, then rmb()). A
   * frontend that moves req_prod back after the check cannot take away a request the backend
   * was told it has: what it published stays published.
   */
  private reqSeen: number;
  /** One precomputed view per slot so `copyRequest` copies without allocating. */
  private readonly requestViews: Uint8Array[];

  /**
   * Attaches at the shared rsp_prod (BACK_RING_ATTACH): every request before it has been
   * answered, and requests the frontend pushed before we attached are still to be consumed.
   * Whatever the page holds, attaching never throws; bad indexes show up as `broken`.
   */
  constructor(page: Uint8Array, requestSize: number, responseSize: number) {
    super(page, requestSize, responseSize);
    const rspProd = Atomics.load(this.header, RSP_PROD);
    this.rspProdPvt = rspProd;
    this.rspPushed = rspProd;
    this.reqCons = rspProd;
    this.reqSeen = rspProd;
    this.requestViews = [];
    for (let i = 0; i < this.size; i++) {
      const off = this.slotOffset(i);
      this.requestViews.push(this.bytes.subarray(off, off + requestSize));
    }
  }

  /**
   * RING_HAS_UNCONSUMED_REQUESTS: min(req_prod − req_cons, size − (req_cons − rsp_prod_pvt)).
   * A req_prod more than `size` ahead of rsp_prod_pvt (RING_REQUEST_PROD_OVERFLOW), or behind
   * req_cons, cannot come from a correct frontend: the ring is marked `broken` and reports
   * no requests from then on.
   */
  unconsumedRequests(): number {
    if (this.broken !== undefined) return 0;
    const reqProd = Atomics.load(this.header, REQ_PROD);
    const ahead = (reqProd - this.rspProdPvt) >>> 0;
    const avail = (reqProd - this.reqCons) >>> 0;
    // With rsp_prod_pvt ≤ req_cons ≤ req_prod (mod 2^32), avail ≤ ahead; a req_prod that
    // went backwards past req_cons shows up as a huge `avail` instead.
    if (ahead > this.size || avail > this.size) {
      this.broken =
        `frontend req_prod ${reqProd >>> 0} is ${ahead} past rsp_prod_pvt ${this.rspProdPvt >>> 0} ` +
        `(req_cons ${this.reqCons >>> 0}), more than the ring size ${this.size}`;
      return 0;
    }
    this.reqSeen = reqProd;
    const space = this.size - ((this.reqCons - this.rspProdPvt) >>> 0);
    return Math.min(avail, space);
  }

  /**
   * RING_COPY_REQUEST: copies the next request into `into` (at least `requestSize` bytes) and
   * consumes it. Validate the copy, never the shared slot: the frontend can rewrite the slot
   * at any time (TOCTOU). Returns false, copying nothing, if there is no request.
   */
  copyRequest(into: Uint8Array): boolean {
    if (into.length < this.requestSize) {
      throw new RangeError(`copyRequest buffer holds ${into.length} bytes, needs ${this.requestSize}`);
    }
    // Within what was validated, and with a slot free for its response: no second look.
    const validated =
      this.broken === undefined &&
      this.reqCons !== this.reqSeen &&
      (this.reqCons - this.rspProdPvt) >>> 0 < this.size;
    if (!validated && this.unconsumedRequests() === 0) return false;
    into.set(this.requestViews[this.reqCons & this.mask]);
    this.reqCons = (this.reqCons + 1) | 0;
    return true;
  }

  /**
   * Claims the slot for the next response (RING_GET_RESPONSE at rsp_prod_pvt++) and returns
   * its byte offset in `bytes`. Responses go in request order, one per consumed request.
   * @throws RangeError if every consumed request already has its response (caller bug).
   */
  nextResponse(): number {
    if (this.reqCons === this.rspProdPvt) {
      throw new RangeError("no consumed request awaits a response: copyRequest() before nextResponse()");
    }
    const off = this.slotOffset(this.rspProdPvt);
    this.rspProdPvt = (this.rspProdPvt + 1) | 0;
    return off;
  }

  /**
   * RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publishes the responses written so far and returns
   * whether the frontend asked to be notified of them (its rsp_event lies in (old, new]).
   */
  pushResponses(): boolean {
    const oldProd = this.rspPushed;
    const newProd = this.rspProdPvt;
    this.rspPushed = newProd;
    Atomics.store(this.header, RSP_PROD, newProd);
    return mustNotify(newProd, oldProd, Atomics.load(this.header, RSP_EVENT));
  }

  /**
   * RING_FINAL_CHECK_FOR_REQUESTS: true if requests are waiting. Otherwise sets
   * req_event = req_cons + 1 and checks again (closing the race with a request pushed in
   * between); after a false return it is safe to sleep until notified — unless `broken`,
   * which the caller must check and act on.
   */
  finalCheckForRequests(): boolean {
    if (this.unconsumedRequests() > 0) return true;
    if (this.broken !== undefined) return false;
    Atomics.store(this.header, REQ_EVENT, (this.reqCons + 1) | 0);
    return this.unconsumedRequests() > 0;
  }

  /**
   * Batching: ask to be notified only when the `ahead`-th next request is pushed
   * (req_event = req_cons + ahead, 1 ≤ ahead ≤ size). Re-check `unconsumedRequests()` after.
   */
  setRequestEvent(ahead: number): void {
    if (!Number.isInteger(ahead) || ahead < 1 || ahead > this.size) {
      throw new RangeError(`request event must be 1..${this.size} ahead, got ${ahead}`);
    }
    Atomics.store(this.header, REQ_EVENT, (this.reqCons + ahead) | 0);
  }
}

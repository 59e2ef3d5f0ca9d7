/**
 * Grant tables, Xen v1 semantics (xen/include/public/grant_table.h).
 *
 * Each domain owns a table of 8-byte entries in shared memory: `uint16 flags, uint16 domid,
 * uint32 frame`. The guest writes its own entries (grant = write domid and frame, then
 * flags; revoke = compare-and-swap flags to 0 only when neither GTF_reading nor GTF_writing
 * is set). The hypervisor validates an entry on every map or copy and pins it, setting
 * GTF_reading/GTF_writing with a compare-and-swap on the (flags, domid) word exactly as Xen's
 * `_set_status` does, so a guest revoking concurrently either wins before the pin or sees
 * the grant in use. Pin counts live in a *shadow* table the guest cannot reach.
 *
 * This file holds both sides: `GrantTable` (the guest's view of its own table) and the
 * hypervisor's checks (`acquireGrant`, `releaseGrant`, `executeGrantCopy`), which run in the
 * hypervisor thread for ordinary guests and in place for the privileged driver domain.
 */
import {
  DOMID_MAX,
  DOMID_SELF,
  type DomId,
  GNTST,
  GTF_permit_access,
  GTF_reading,
  GTF_readonly,
  GTF_type_mask,
  GTF_writing,
  gntstName,
  PAGE_SIZE,
} from "./abi.js";
import { copyBytes } from "./copy.js";

/** Refs 0..7 are reserved for the toolstack, as in Linux (GNTTAB_NR_RESERVED_ENTRIES). */
export const GNTTAB_NR_RESERVED_ENTRIES = 8;
export const DEFAULT_GRANT_ENTRIES = 1024;
/** Retries of a pin whose entry changed under it before it is refused (Xen's _set_status tries 4 times). */
export const GRANT_ENTRY_RETRIES = 4;

/**
 * Shadow table layout (Int32Array): [alive, nrEntries, lock, segment generation, then per ref:
 * readPins, writePins].
 */
const SHADOW_ALIVE = 0;
const SHADOW_NR = 1;
const SHADOW_LOCK = 2;
const SHADOW_SEGMENTS = 3;
const SHADOW_HEADER = 4;

export function allocGrantTable(nrEntries = DEFAULT_GRANT_ENTRIES): {
  table: SharedArrayBuffer;
  shadow: SharedArrayBuffer;
} {
  const shadow = new SharedArrayBuffer((SHADOW_HEADER + 2 * nrEntries) * 4);
  const s = new Int32Array(shadow);
  s[SHADOW_ALIVE] = 1;
  s[SHADOW_NR] = nrEntries;
  return { table: new SharedArrayBuffer(nrEntries * 8), shadow };
}

export function markGrantTableDead(shadow: SharedArrayBuffer): void {
  Atomics.store(new Int32Array(shadow), SHADOW_ALIVE, 0);
}

/**
 * The granter's segment generation: the hypervisor adds one each time a shared segment of the
 * domain is made or released, before the hypercall that did it returns. The privileged domain
 * keeps what it learned of a domain's segments only while this number stays the same
 * (guest.ts ForeignView), so a released segment never resolves for it again, and a frame it
 * already looked up costs it no hypercall. In the shadow, which only the hypervisor and the
 * privileged domain can reach: the domain itself cannot hold it still. An int32 that wraps;
 * only equality is asked.
 */
export function segmentGeneration(shadow: Int32Array): number {
  return Atomics.load(shadow, SHADOW_SEGMENTS);
}

/** The hypervisor's side of segmentGeneration: the domain's segments changed. */
export function bumpSegmentGeneration(shadow: Int32Array): void {
  Atomics.add(shadow, SHADOW_SEGMENTS, 1);
}

/**
 * Where a frame's bytes live: a buffer and a byte offset. `shareable` frames belong to a
 * shared segment (a buffer of their own, which a mapping may hand out whole); the others are
 * RAM, which only the privileged domain maps. `segment` is the hypervisor's own record of
 * that segment (opaque here; absent in the privileged domain's foreign view).
 */
export interface FrameLocation {
  readonly buffer: SharedArrayBuffer;
  readonly offset: number;
  readonly shareable: boolean;
  readonly segment?: unknown;
}

/** What the hypervisor-side checks need to know of a granting domain. */
export interface GrantingDomain {
  readonly domid: DomId;
  readonly entries: Uint32Array;
  readonly shadow: Int32Array;
  frame(pfn: number): FrameLocation | undefined;
}

export type DomainResolver = (domid: DomId) => GrantingDomain | undefined;

/** A status with the reason, so a caller sees both Xen's code and what to fix. */
export interface GrantResult {
  status: number;
  error?: string;
}

function fail(status: number, error: string): GrantResult {
  return { status, error: `${gntstName(status)}: ${error}` };
}

function lock(shadow: Int32Array): void {
  while (Atomics.compareExchange(shadow, SHADOW_LOCK, 0, 1) !== 0) {
    // Held only for a few loads and stores by another hypervisor thread.
  }
}

function unlock(shadow: Int32Array): void {
  Atomics.store(shadow, SHADOW_LOCK, 0);
}

/** The in-use bits the hypervisor sets and clears under the lock; the rest of a word is the granter's. */
const PIN_BITS = GTF_reading | GTF_writing;

export function isAlive(d: GrantingDomain): boolean {
  return Atomics.load(d.shadow, SHADOW_ALIVE) === 1;
}

/**
 * Validates grant `ref` of `granter` for use by `user` and pins it (reading, and writing if
 * `write`). On success returns the frame; on failure a GNTST status and nothing changes.
 */
export function acquireGrant(
  granter: GrantingDomain,
  ref: number,
  user: DomId,
  write: boolean,
): GrantResult & { frame?: FrameLocation } {
  if (!isAlive(granter)) return fail(GNTST.bad_domain, `domain ${granter.domid} is gone`);
  const nr = granter.shadow[SHADOW_NR];
  if (!Number.isInteger(ref) || ref < 0 || ref >= nr)
    return fail(
      GNTST.bad_gntref,
      `grant ref ${ref} is outside domain ${granter.domid}'s table (0..${nr - 1})`,
    );
  const e = granter.entries;
  for (let tries = 0; ; tries++) {
    // The granter may rewrite its entry at any moment; one that keeps doing so between our
    // load and our compare-exchange is refused, not waited for (Xen: "unstable" entry).
    if (tries > GRANT_ENTRY_RETRIES)
      return fail(
        GNTST.general_error,
        `grant ref ${ref} of domain ${granter.domid} changed under every try: domain ${granter.domid} keeps rewriting it`,
      );
    const word = Atomics.load(e, 2 * ref);
    const flags = word & 0xffff;
    const dom = word >>> 16;
    if ((flags & GTF_type_mask) !== GTF_permit_access)
      return fail(GNTST.bad_gntref, `grant ref ${ref} of domain ${granter.domid} is not in use`);
    if (dom !== user)
      return fail(
        GNTST.permission_denied,
        `grant ref ${ref} of domain ${granter.domid} is granted to domain ${dom}, not ${user}`,
      );
    if (write && flags & GTF_readonly)
      return fail(GNTST.permission_denied, `grant ref ${ref} of domain ${granter.domid} is read-only`);
    const pfn = Atomics.load(e, 2 * ref + 1);
    // Looked up before the lock, never under it: in the privileged domain a frame above RAM
    // it has not looked up yet is a hypercall (guest.ts ForeignView), and the hypervisor thread,
    // serving a hypercall on the same granter's grants, would spin on the lock dom0 holds
    // while dom0 waits for its answer: a guest granting a bogus frame hung the whole host.
    const frame = granter.frame(pfn);
    if (!frame)
      return fail(
        GNTST.bad_page,
        `grant ref ${ref} names frame ${pfn}, which domain ${granter.domid} does not own`,
      );
    lock(granter.shadow);
    try {
      // Pinned only as checked: another pin or release may have moved the in-use bits since
      // (fine), the granter may have rewritten the grant itself (try again).
      const now = Atomics.load(e, 2 * ref);
      if ((now | PIN_BITS) !== (word | PIN_BITS) || Atomics.load(e, 2 * ref + 1) !== pfn) continue;
      const want = now | GTF_reading | (write ? GTF_writing : 0);
      if (want !== now && Atomics.compareExchange(e, 2 * ref, now, want >>> 0) !== now) continue;
      Atomics.add(granter.shadow, SHADOW_HEADER + 2 * ref + (write ? 1 : 0), 1);
      return { status: GNTST.okay, frame };
    } finally {
      unlock(granter.shadow);
    }
  }
}

/** Drops a pin taken by acquireGrant; clears GTF_reading/GTF_writing when the last one goes. */
export function releaseGrant(granter: GrantingDomain, ref: number, write: boolean): void {
  const s = granter.shadow;
  lock(s);
  try {
    const pinIdx = SHADOW_HEADER + 2 * ref + (write ? 1 : 0);
    if (s[pinIdx] > 0) s[pinIdx]--;
    const readers = s[SHADOW_HEADER + 2 * ref];
    const writers = s[SHADOW_HEADER + 2 * ref + 1];
    const clear = (writers === 0 ? GTF_writing : 0) | (readers === 0 && writers === 0 ? GTF_reading : 0);
    if (clear === 0) return;
    // One atomic bit-clear: a granter rewriting its entry cannot make this retry.
    Atomics.and(granter.entries, 2 * ref, ~clear >>> 0);
  } finally {
    unlock(s);
  }
}

export function pinCounts(granter: GrantingDomain, ref: number): { readers: number; writers: number } {
  return {
    readers: Atomics.load(granter.shadow, SHADOW_HEADER + 2 * ref),
    writers: Atomics.load(granter.shadow, SHADOW_HEADER + 2 * ref + 1),
  };
}

// ---- grant copy (GNTTABOP_copy) ----------------------------------------------------------

/** One side of a copy: a grant ref of `domid`, or (own frames only) a frame number. */
export interface GrantCopySide {
  domid: DomId;
  ref?: number;
  gmfn?: number;
  offset: number;
}

/**
 * Bytes one grant_read hypercall copies at most (a read-only mapping's `read` goes in parts of
 * it): the copy runs on the hypervisor's thread, which serves every domain, and 16 MiB a call
 * held it for tens of ms in a loop.
 */
export const GRANT_READ_MAX = 1 << 20;

export interface GrantCopyOp {
  source: GrantCopySide;
  dest: GrantCopySide;
  len: number;
}

interface ResolvedSide {
  frame: FrameLocation;
  release?: () => void;
}

function resolveSide(
  side: GrantCopySide,
  write: boolean,
  caller: DomId,
  resolve: DomainResolver,
): GrantResult & { side?: ResolvedSide } {
  if (side === null || typeof side !== "object")
    return fail(GNTST.bad_copy_arg, "copy side must be an object");
  const hasRef = side.ref !== undefined;
  const hasFrame = side.gmfn !== undefined;
  if (hasRef === hasFrame)
    return fail(GNTST.bad_copy_arg, "give exactly one of ref or gmfn on each side of a copy");
  const domid = side.domid === DOMID_SELF ? caller : side.domid;
  if (!Number.isInteger(domid) || domid < 0 || domid > DOMID_MAX)
    return fail(GNTST.bad_domain, `domain id ${String(side.domid)} is not valid`);
  const dom = resolve(domid);
  if (!dom || !isAlive(dom)) return fail(GNTST.bad_domain, `domain ${domid} does not exist`);
  if (hasFrame) {
    // A raw frame number is only meaningful for the caller's own memory.
    if (domid !== caller)
      return fail(
        GNTST.permission_denied,
        `domain ${caller} may name frames only of its own memory, not domain ${domid}'s`,
      );
    const frame = Number.isInteger(side.gmfn) ? dom.frame(side.gmfn as number) : undefined;
    if (!frame) return fail(GNTST.bad_page, `frame ${String(side.gmfn)} is not memory of domain ${domid}`);
    return { status: GNTST.okay, side: { frame } };
  }
  const acquired = acquireGrant(dom, side.ref as number, caller, write);
  if (acquired.status !== GNTST.okay) return acquired;
  const ref = side.ref as number;
  return {
    status: GNTST.okay,
    side: { frame: acquired.frame!, release: () => releaseGrant(dom, ref, write) },
  };
}

/**
 * Executes one copy on behalf of `caller`. Bounds: offset + len within one page on both
 * sides (a copy never crosses a page: GNTST_bad_copy_arg). Returns the status; on error,
 * nothing was written.
 */
export function executeGrantCopy(op: GrantCopyOp, caller: DomId, resolve: DomainResolver): GrantResult {
  if (op === null || typeof op !== "object") return fail(GNTST.bad_copy_arg, "copy op must be an object");
  const { len } = op;
  if (!Number.isInteger(len) || len < 0 || len > PAGE_SIZE)
    return fail(GNTST.bad_copy_arg, `copy length ${String(len)} must be an integer in 0..${PAGE_SIZE}`);
  for (const [name, side] of [
    ["source", op.source],
    ["dest", op.dest],
  ] as const) {
    const off = side?.offset;
    if (!Number.isInteger(off) || off < 0 || off + len > PAGE_SIZE)
      return fail(
        GNTST.bad_copy_arg,
        `${name} offset ${String(off)} + length ${len} crosses the page (${PAGE_SIZE} B)`,
      );
  }
  const src = resolveSide(op.source, false, caller, resolve);
  if (src.status !== GNTST.okay) return src;
  const dst = resolveSide(op.dest, true, caller, resolve);
  if (dst.status !== GNTST.okay) {
    src.side!.release?.();
    return dst;
  }
  try {
    const s = src.side!.frame;
    const d = dst.side!.frame;
    copyBytes(
      new Uint8Array(d.buffer, d.offset + op.dest.offset, len),
      0,
      new Uint8Array(s.buffer, s.offset + op.source.offset, len),
      0,
      len,
    );
    return { status: GNTST.okay };
  } finally {
    src.side!.release?.();
    dst.side!.release?.();
  }
}

// ---- the guest's side ----------------------------------------------------------------------

export class GrantError extends Error {
  constructor(
    message: string,
    readonly ref?: number,
  ) {
    super(message);
    this.name = "GrantError";
  }
}

/**
 * A domain's own grant table. `grantAccess` fills an entry (domid and frame first, flags
 * last, as Xen requires); `endAccess` revokes it only if no one has it mapped.
 */
export class GuestGrantTable {
  readonly entries: Uint32Array;
  readonly size: number;
  private readonly freeRefs: number[] = [];

  constructor(
    table: SharedArrayBuffer,
    readonly domid: DomId,
    private readonly ownsFrame: (pfn: number) => boolean,
  ) {
    this.entries = new Uint32Array(table);
    this.size = this.entries.length / 2;
    for (let r = this.size - 1; r >= GNTTAB_NR_RESERVED_ENTRIES; r--) this.freeRefs.push(r);
  }

  get freeCount(): number {
    return this.freeRefs.length;
  }

  /** Grants `peer` access to frame `pfn` (read-only if asked). Returns the grant ref. */
  grantAccess(peer: DomId, pfn: number, readonly = false): number {
    if (!Number.isInteger(peer) || peer < 0 || peer > DOMID_MAX)
      throw new GrantError(`grantAccess: peer must be a domain id (0..${DOMID_MAX}), got ${String(peer)}`);
    if (!Number.isInteger(pfn) || !this.ownsFrame(pfn))
      throw new GrantError(`grantAccess: frame ${String(pfn)} is not memory of domain ${this.domid}`);
    const ref = this.freeRefs.pop();
    if (ref === undefined)
      throw new GrantError(
        `grantAccess: all ${this.size - GNTTAB_NR_RESERVED_ENTRIES} grant entries are in use; end some grants first`,
      );
    Atomics.store(this.entries, 2 * ref + 1, pfn);
    Atomics.store(
      this.entries,
      2 * ref,
      ((peer << 16) | GTF_permit_access | (readonly ? GTF_readonly : 0)) >>> 0,
    );
    return ref;
  }

  /** True while the hypervisor has the grant mapped or is copying through it. */
  isInUse(ref: number): boolean {
    return (Atomics.load(this.entries, 2 * ref) & (GTF_reading | GTF_writing)) !== 0;
  }

  /**
   * Revokes a grant unless it is mapped: true if it is revoked now (or was not granted), false
   * while the hypervisor has it mapped. One compare-exchange decides, so a map racing in either
   * comes first (false) or finds the grant gone: a caller that looked whether it was mapped and
   * then ended it would leave a grant mapped in between and think it ended.
   */
  tryEndAccess(ref: number): boolean {
    if (!Number.isInteger(ref) || ref < GNTTAB_NR_RESERVED_ENTRIES || ref >= this.size)
      throw new GrantError(
        `tryEndAccess: grant ref ${String(ref)} is not a grantable ref (8..${this.size - 1})`,
        ref,
      );
    for (;;) {
      const word = Atomics.load(this.entries, 2 * ref);
      if ((word & GTF_type_mask) !== GTF_permit_access) return true;
      if (word & (GTF_reading | GTF_writing)) return false;
      if (Atomics.compareExchange(this.entries, 2 * ref, word, 0) === word) {
        this.freeRefs.push(ref);
        return true;
      }
    }
  }

  /** Revokes a grant. Throws if it is still mapped (end the mapping first) or not granted. */
  endAccess(ref: number): void {
    if (!Number.isInteger(ref) || ref < GNTTAB_NR_RESERVED_ENTRIES || ref >= this.size)
      throw new GrantError(
        `endAccess: grant ref ${String(ref)} is not a grantable ref (8..${this.size - 1})`,
        ref,
      );
    const word = Atomics.load(this.entries, 2 * ref);
    if ((word & GTF_type_mask) !== GTF_permit_access)
      throw new GrantError(`endAccess: grant ref ${ref} is not in use`, ref);
    if (
      word & (GTF_reading | GTF_writing) ||
      Atomics.compareExchange(this.entries, 2 * ref, word, 0) !== word
    ) {
      const by = word >>> 16;
      throw new GrantError(
        `endAccess: grant ref ${ref} is still mapped by domain ${by} (${word & GTF_writing ? "GTF_writing" : "GTF_reading"}); ` +
          "the mapper must unmap it first",
        ref,
      );
    }
    this.freeRefs.push(ref);
  }
}

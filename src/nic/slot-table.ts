/**
 * The NIC's slot tables (Open-MX keeps such fixed arrays of in-flight requests in its driver's
 * per-peer and per-endpoint state): the CONNECTs waiting for a reply (connect.ts), the remote
 * PULLs this NIC asked for (remote-pull.ts), the SENDs of a link's window awaiting their ACK
 * and the PULL jobs a link serves (link-state.ts). A SlotTable keeps which slots are taken,
 * a free list, and each slot's id; the per-slot state lives in its owner's parallel typed
 * arrays, indexed by slot. Taking and releasing allocate nothing.
 *
 * An id is a generation << slotBits | the slot: a reply carrying it finds its slot at once,
 * and a late reply for a slot released and taken again does not match (the generation moved).
 */

export class SlotTable {
  readonly capacity: number;
  /** 1 while a slot is taken. */
  readonly used: Uint8Array;
  /** Each slot's id from its last take (its generation, then the slot in the low slotBits). */
  readonly id: Uint32Array;
  /** Slots taken. */
  count = 0;
  /** Free slots as a stack: free[capacity - 1 - count] is the next to take. */
  private readonly free: Int32Array;
  private readonly slotBits: number;
  private readonly slotMask: number;
  private readonly genMask: number;

  /** `slotBits` (default: the fewest that hold `capacity` slots) leaves 32 - slotBits for the generation. */
  constructor(capacity: number, slotBits = Math.max(1, Math.ceil(Math.log2(capacity)))) {
    if (!Number.isInteger(slotBits) || slotBits < 1 || slotBits > 24)
      throw new RangeError(`SlotTable: slotBits must be an integer in 1..24, got ${slotBits}`);
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 2 ** slotBits)
      throw new RangeError(`SlotTable: capacity must be an integer in 1..${2 ** slotBits}, got ${capacity}`);
    this.capacity = capacity;
    this.slotBits = slotBits;
    this.slotMask = 2 ** slotBits - 1;
    this.genMask = 2 ** (32 - slotBits) - 1;
    this.used = new Uint8Array(capacity);
    this.id = new Uint32Array(capacity);
    this.free = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) {
      this.free[capacity - 1 - i] = i;
      this.id[i] = i;
    }
  }

  /** Every slot is taken. */
  get full(): boolean {
    return this.count === this.capacity;
  }

  /** The id the next take() will give (a frame may carry it before the slot is taken). Not full. */
  nextId(): number {
    return this.nextIdOf(this.free[this.capacity - 1 - this.count]);
  }

  /** Takes a free slot (the table is not full) under a new generation. Returns the slot. */
  take(): number {
    const s = this.free[this.capacity - 1 - this.count];
    this.id[s] = this.nextIdOf(s);
    this.used[s] = 1;
    this.count++;
    return s;
  }

  /** Frees slot `s`. Returns false (and does nothing) if it was not taken. */
  release(s: number): boolean {
    if (this.used[s] !== 1) return false;
    this.used[s] = 0;
    this.count--;
    this.free[this.capacity - 1 - this.count] = s;
    return true;
  }

  /** The slot taken under `id` (a u32 from a frame: hostile), or -1 (free, reused, or garbage). */
  find(id: number): number {
    const s = id & this.slotMask;
    return s < this.capacity && this.used[s] === 1 && this.id[s] === id >>> 0 ? s : -1;
  }

  private nextIdOf(s: number): number {
    const gen = ((this.id[s] >>> this.slotBits) + 1) & this.genMask;
    return (gen * 2 ** this.slotBits + s) >>> 0;
  }
}

/**
 * A SlotTable shared by a NIC's endpoints, each holding at most `credits` slots (connect.ts
 * CONNECT_CREDITS, remote-pull.ts PULL_CREDITS), sized so every endpoint can be at its share
 * at once: none can take the slots another needs. An endpoint over its share waits in its own
 * queue (its engine's choice), never failing for it.
 */
export class SharedSlotTable extends SlotTable {
  /** The endpoint holding each slot. */
  readonly ep: Uint32Array;
  /** Per endpoint: its slots taken (at most `credits`). */
  private readonly perEp: Uint8Array;

  constructor(
    maxEndpoints: number,
    private readonly credits: number,
    slotBits: number,
  ) {
    super(maxEndpoints * credits, slotBits);
    this.ep = new Uint32Array(this.capacity);
    this.perEp = new Uint8Array(maxEndpoints);
  }

  /** Whether endpoint `ep` may take a slot: its share has room. */
  canTake(ep: number): boolean {
    return this.perEp[ep] < this.credits && !this.full;
  }

  /** Takes a slot for endpoint `ep` (canTake said yes). Returns the slot. */
  takeFor(ep: number): number {
    const s = this.take();
    this.ep[s] = ep;
    this.perEp[ep]++;
    return s;
  }

  /** Frees slot `s` and gives its endpoint's share back. Returns false if it was not taken. */
  releaseSlot(s: number): boolean {
    if (!this.release(s)) return false;
    this.perEp[this.ep[s]]--;
    return true;
  }
}

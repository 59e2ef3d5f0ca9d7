/**
 * Holds a co-resident lane to the QoS policy (issue 16) on its reading side. Messages between
 * co-resident guests never reach the NIC, so the NIC cannot police them; the receiving
 * library does, from limits myrback writes into a page granted to the receiver alone (the
 * lane policy page, channel-abi.ts): the sender's tx caps with the receiver's rx caps, and
 * the sender's weight. A record the caps do not allow yet stays in the lane; the lane fills
 * and the sender waits on it (the lane's own back-pressure): slowed, never lost or failed.
 *
 * Why the reader is the right side: the sender shares the channel's memory and could rewrite
 * any word in it, but it cannot reach the receiver's policy page, nor make the receiver read
 * faster. A receiver that lifts the limit (a rewritten library) only takes in more of what a
 * willing sender gives it, burning its own CPU: a pair that colludes could as well move
 * bytes through the channel's memory without MX at all, which no limit on messages stops.
 *
 * Discipline, as the NIC's caps (nic/qos.ts): token buckets 25 ms of the rate deep (at most
 * 16 MiB), empty when a cap appears; a record
 * may be read while its buckets are not in debt, then takes its whole cost. The buckets are
 * the writer's at this receiving endpoint, not a lane's (WriterBuckets): every lane one
 * domain writes to it draws on them, and they outlive its last lane while in debt. A bucket
 * per lane started empty with each new channel, so a capped sender that connected again
 * before each message had every one read at once, whatever its size (a reviewer's PoC: 24 MiB
 * in 235 ms under an 8 MiB/s cap), and N endpoints had N times its message cap. Between the
 * lanes one receiver reads, weights share its reading: per progress round a lane is read for
 * at most weight × LANE_QUANTUM bytes (a weighted round robin; a record may overdraw, no
 * deficit is carried). The lanes one receiver reads from one domain (the page's writer group,
 * which myrback writes) share that round: weight × LANE_QUANTUM for all of them together, or
 * a guest with four endpoints connected to one receiver was read four times its weight (the
 * NIC shares a domain's endpoints' weight too, nic/qos.ts). Cost when unlimited: one load per
 * round; capped: a clock read per record.
 *
 * A share limit (the page's ShareBytesPerSec) is the host's weighted share between lanes of
 * different receivers, which the weights above cannot reach: myrback's share loop
 * (myrixen/back/share-loop.ts) writes it only while lanes of different weights contend, from
 * the counters this policer keeps in the same page (message bytes taken, share holds). It
 * is a bucket of its own (SHARE_BURST_MS deep), apart from the caps, and holds every message
 * record, a rendezvous the NIC pulls too (the NIC does not know the share), never a control
 * record. Cost: one store per message record (the count), a clock read per message held.
 *
 * The same page (the member's own) also keeps the member's count as the writer of the
 * other lane (GivenBytes, `gave`): the share loop splits a limited writer's share among its
 * lanes by what the writer says it gave each, not by what each reader says it took.
 */
import { POLICY_GIVEN_WORD, POLICY_SHARE_HOLDS_WORD, POLICY_TAKEN_WORD } from "../myrixen/channel-abi.js";
import { BURST_MAX, BURST_MS } from "../nic/qos.js";
import type { EndpointCounters } from "./types.js";

/** Bytes a lane of weight 1 is read for per progress round (weight w: w times it). */
export const LANE_QUANTUM = 64 * 1024;
/** What a record that carries no message (a NOTIFY, a CTS) costs a byte cap: as an empty descriptor at the NIC. */
export const CONTROL_RECORD_COST = 64;
/** Depth of the share bucket: this many ms of the share rate (at least one 1 MiB message's worth). */
export const SHARE_BURST_MS = 10;

/** One round's reading, shared by the lanes of one writer group (or a lane's own). */
export class RoundShare {
  /** Lanes that share it (a lone lane's budget starts again at every begin). */
  lanes = 0;
  /** The progress round it was last filled for, and the bytes left of it. */
  epoch = -1;
  left = 0;
  constructor(readonly group: number) {}
}

/**
 * A writer's token buckets at one receiving endpoint (the caps' state; the rates are its lanes'
 * policy, the same for each: the writer's tx caps with this receiver's rx caps). Negative:
 * in debt.
 */
export class WriterBuckets {
  bytesPerSec = 0;
  msgsPerSec = 0;
  bytesDepth = 0;
  msgsDepth = 0;
  bytes = 0;
  msgs = 0;
  /** When the buckets were last refilled (ms). */
  last = 0;
  /** Lanes drawing on them now. */
  lanes = 0;

  refill(t: number): void {
    const dt = (t - this.last) / 1000;
    this.last = t;
    if (dt <= 0) return;
    if (this.bytesPerSec > 0) this.bytes = Math.min(this.bytesDepth, this.bytes + this.bytesPerSec * dt);
    if (this.msgsPerSec > 0) this.msgs = Math.min(this.msgsDepth, this.msgs + this.msgsPerSec * dt);
  }

  get inDebt(): boolean {
    return this.bytes < 0 || this.msgs < 0;
  }
}

/**
 * One receiving endpoint's writer groups: the RoundShare each group's lanes hold, made by the
 * first and dropped with the last; and each group's WriterBuckets, kept past its last lane
 * until their debt is paid, so that a writer that connects again finds it.
 */
export class LaneGroups {
  private readonly byGroup = new Map<number, RoundShare>();
  private readonly buckets = new Map<number, WriterBuckets>();

  take(group: number): RoundShare {
    let g = this.byGroup.get(group);
    if (g === undefined) this.byGroup.set(group, (g = new RoundShare(group)));
    g.lanes++;
    return g;
  }

  give(g: RoundShare): void {
    if (--g.lanes <= 0 && this.byGroup.get(g.group) === g) this.byGroup.delete(g.group);
  }

  get size(): number {
    return this.byGroup.size;
  }

  /** `group`'s buckets, for one more lane (the debt of its closed lanes included). */
  takeBuckets(group: number, now: number): WriterBuckets {
    this.forgetPaid(now);
    let b = this.buckets.get(group);
    if (b === undefined) {
      this.buckets.set(group, (b = new WriterBuckets()));
      b.last = now;
    }
    b.lanes++;
    return b;
  }

  /** A lane of `group` let go of `b`: forgotten with its last lane unless in debt. */
  giveBuckets(group: number, b: WriterBuckets, now: number): void {
    if (--b.lanes > 0) return;
    b.refill(now);
    if (!b.inDebt && this.buckets.get(group) === b) this.buckets.delete(group);
  }

  /** Buckets no lane holds whose debt is paid by `now` are forgotten (at most one per domain waits). */
  private forgetPaid(now: number): void {
    for (const [g, b] of this.buckets) {
      if (b.lanes > 0) continue;
      b.refill(now);
      if (!b.inDebt) this.buckets.delete(g);
    }
  }
}

export class LanePolicer {
  private readonly seq: Int32Array;
  private readonly words: Float64Array;
  private seen = -1;
  weight = 1;
  /** The share loop's limit (bytes/s; 0 = none). */
  shareBytesPerSec = 0;
  private capped = false;
  /** Caps or a share limit: the buckets are looked at. */
  private limited = false;
  private shareBucket = 0;
  private shareDepth = 0;
  /** Message bytes taken (the page's TakenBytes, u32) and share holds, as counted here. */
  private taken = 0;
  private shareHolds = 0;
  /** Message bytes this member put into the lane it writes (the page's GivenBytes, u32). */
  private given = 0;
  /** The caps' buckets: the writer group's (LaneGroups.takeBuckets), or the lane's own. */
  private b = new WriterBuckets();
  /** The writer group whose buckets `b` are (−1: the lane's own). */
  private bucketsGroup = -1;
  /** When the share bucket was last refilled (ms). */
  private shareLast = 0;
  /** This round's reading: the lane's own, or its writer group's (RoundShare.left). */
  private rs = new RoundShare(-1);
  /** While the caps hold the lane: the time (ms, `now`'s clock) the debt is paid; else 0. */
  heldUntil = 0;

  constructor(
    page: SharedArrayBuffer,
    /** The receiving endpoint's counters and its progress rounds (EndpointContext: `rounds` counts them). */
    private readonly ctx: { readonly counters: Pick<EndpointCounters, "laneHolds">; readonly rounds: number },
    private readonly now: () => number = () => performance.now(),
    /** The receiving endpoint's writer groups (absent: every lane counts alone). */
    private readonly groups?: LaneGroups,
  ) {
    this.seq = new Int32Array(page, 0, POLICY_GIVEN_WORD + 1);
    this.words = new Float64Array(page, 8, 5); // BytesPerSec, MsgsPerSec, Weight, ShareBytesPerSec, WriterGroup
    // int32s, the words' own bits: as u32s they would leave V8's small integers past 2^31 (channel.ts).
    this.taken = Atomics.load(this.seq, POLICY_TAKEN_WORD);
    this.shareHolds = Atomics.load(this.seq, POLICY_SHARE_HOLDS_WORD);
    this.given = Atomics.load(this.seq, POLICY_GIVEN_WORD);
  }

  /** Starts a progress round: takes up a changed policy; false while the caps hold the lane. */
  begin(): boolean {
    // A plain load on every round: only a hint that the page changed (reload reads it as a
    // seqlock, atomically); an atomic load here was a builtin call on every poll of the lane.
    if (this.seq[0] !== this.seen) this.reload();
    // A group's round is filled once per progress round (EndpointContext.rounds counts them), a lone lane's
    // at every look, as before.
    const rs = this.rs;
    const round = this.ctx.rounds;
    if (rs.lanes < 2 || rs.epoch !== round) {
      rs.epoch = round;
      rs.left = this.weight * LANE_QUANTUM;
    }
    if (!this.limited || this.heldUntil === 0) return true;
    this.refill(this.now());
    // The caps hold every record; a share debt only message records (admit, charge).
    if (this.b.inDebt) return false;
    this.heldUntil = 0;
    return true;
  }

  /**
   * May a record that costs the caps `bytes` and `msgs` (and this round's share `roundBytes`)
   * be read now? If so it is charged.
   */
  admit(bytes: number, msgs: number, roundBytes: number): boolean {
    if (this.rs.left <= 0) return false;
    if (this.limited) {
      const b = this.b;
      const shared = msgs > 0 && this.shareBytesPerSec > 0;
      if (b.inDebt || (shared && this.shareBucket < 0)) {
        const t = this.now();
        this.refill(t);
        if (b.inDebt || (shared && this.shareBucket < 0)) {
          this.hold(t, shared);
          return false;
        }
      }
      this.heldUntil = 0;
      if (b.bytesPerSec > 0) b.bytes -= bytes;
      if (b.msgsPerSec > 0) b.msgs -= msgs;
      if (shared) this.shareBucket -= bytes;
    }
    if (msgs > 0) this.count(bytes);
    this.rs.left -= roundBytes;
    return true;
  }

  /**
   * Charges a record whose bytes are not held here by the caps (a rendezvous the NIC pulls,
   * which holds its bytes to the same caps); the share limit, which the NIC does not know,
   * holds it.
   */
  charge(bytes: number, msgs: number): boolean {
    if (this.rs.left <= 0) return false;
    if (this.limited) {
      if (this.shareBytesPerSec > 0) {
        if (this.shareBucket < 0) {
          const t = this.now();
          this.refill(t);
          if (this.shareBucket < 0) {
            this.hold(t, true);
            return false;
          }
        }
        this.heldUntil = 0;
        this.shareBucket -= bytes;
      }
      const b = this.b;
      if (b.bytesPerSec > 0) b.bytes -= bytes;
      if (b.msgsPerSec > 0) b.msgs -= msgs;
    }
    this.count(bytes);
    return true;
  }

  /** The lane is held at `t`: until when, counted once per hold. */
  private hold(t: number, shared: boolean): void {
    if (this.heldUntil === 0) {
      this.ctx.counters.laneHolds++;
      if (shared && this.shareBucket < 0)
        Atomics.store(this.seq, POLICY_SHARE_HOLDS_WORD, (this.shareHolds = (this.shareHolds + 1) | 0));
    }
    const b = this.b;
    const waitBytes = b.bytesPerSec > 0 && b.bytes < 0 ? -b.bytes / b.bytesPerSec : 0;
    const waitMsgs = b.msgsPerSec > 0 && b.msgs < 0 ? -b.msgs / b.msgsPerSec : 0;
    const waitShare = shared && this.shareBucket < 0 ? -this.shareBucket / this.shareBytesPerSec : 0;
    this.heldUntil = t + 1000 * Math.max(waitBytes, waitMsgs, waitShare);
  }

  /** Message bytes taken, for the share loop (the page's TakenBytes). */
  private count(bytes: number): void {
    this.taken = (this.taken + bytes) | 0;
    // myrback's share loop reads it every few ms: a plain store (a 32-bit word is never torn),
    // not a fence per message.
    this.seq[POLICY_TAKEN_WORD] = this.taken;
  }

  /** A message of `bytes` this member wrote into its outgoing lane (the page's GivenBytes). */
  gave(bytes: number): void {
    this.given = (this.given + bytes) | 0;
    // Read by the share loop every few ms, as TakenBytes: a plain store.
    this.seq[POLICY_GIVEN_WORD] = this.given;
  }

  /** A record already paid for (a piece of a charged rendezvous): only this round's share. */
  share(roundBytes: number): boolean {
    if (this.rs.left <= 0) return false;
    this.rs.left -= roundBytes;
    return true;
  }

  /** The lane is gone: it leaves its writer group. */
  dispose(): void {
    if (this.groups !== undefined && this.rs.group >= 0) this.groups.give(this.rs);
    this.rs = new RoundShare(-1);
    this.leaveBuckets();
  }

  /** The lane draws on its own buckets again; its writer's keep what it owes (LaneGroups.giveBuckets). */
  private leaveBuckets(): void {
    if (this.groups !== undefined && this.bucketsGroup >= 0)
      this.groups.giveBuckets(this.bucketsGroup, this.b, this.now());
    this.bucketsGroup = -1;
    this.b = new WriterBuckets();
  }

  /**
   * Records read past the caps, for what must arrive whatever they say (what a peer that went
   * away left in its lane: channel-path.ts drain): charged all the same, so the writer's next
   * lanes pay for them.
   */
  force(bytes: number, msgs: number): void {
    if (this.seq[0] !== this.seen) this.reload();
    const b = this.b;
    if (b.bytesPerSec > 0) b.bytes -= bytes;
    if (b.msgsPerSec > 0) b.msgs -= msgs;
    if (msgs > 0) this.count(bytes);
  }

  private refill(t: number): void {
    this.b.refill(t);
    const dt = (t - this.shareLast) / 1000;
    this.shareLast = t;
    if (dt <= 0) return;
    if (this.shareBytesPerSec > 0)
      this.shareBucket = Math.min(this.shareDepth, this.shareBucket + this.shareBytesPerSec * dt);
  }

  /** A new policy from the page (myrback rewrote it); a torn read is retried next round. */
  private reload(): void {
    const s = Atomics.load(this.seq, 0);
    if ((s & 1) !== 0) return;
    const w = this.words;
    const bytesPerSec = w[0];
    const msgsPerSec = w[1];
    const weight = w[2];
    const shareBytes = w[3];
    const group = w[4];
    if (Atomics.load(this.seq, 0) !== s) return;
    this.seen = s;
    // The page is this member's own: nonsense in it (it wrote there itself) means no cap.
    const rate = (v: number) => (Number.isFinite(v) && v > 0 ? v : 0);
    const t = this.now();
    // The writer group first: its buckets are the ones the new rates apply to.
    const g = Number.isInteger(group) && group >= 0 && group <= 0xffffffff ? group : -1;
    if (this.groups !== undefined && g !== this.bucketsGroup) {
      this.leaveBuckets();
      if (g >= 0) {
        this.b = this.groups.takeBuckets(g, t);
        this.bucketsGroup = g;
      }
    }
    this.refill(t);
    const newBytes = rate(bytesPerSec);
    const newMsgs = rate(msgsPerSec);
    const b = this.b;
    b.bytesDepth = Math.min((newBytes * BURST_MS) / 1000, BURST_MAX);
    b.msgsDepth = Math.max(1, (newMsgs * BURST_MS) / 1000);
    // As at the NIC: a cap that appears starts with an empty bucket; one that goes leaves no debt.
    b.bytes = newBytes === 0 ? 0 : Math.min(b.bytes, b.bytesDepth);
    b.msgs = newMsgs === 0 ? 0 : Math.min(b.msgs, b.msgsDepth);
    b.bytesPerSec = newBytes;
    b.msgsPerSec = newMsgs;
    this.weight = Number.isFinite(weight) && weight >= 1 ? Math.min(1000, Math.floor(weight)) : 1;
    // The share changes every few ms while lanes contend: what the bucket holds carries over
    // (a debt too), so rewriting the rate neither frees a burst nor forgives a debt.
    const newShare = rate(shareBytes);
    this.shareDepth = Math.max(1 << 20, (newShare * SHARE_BURST_MS) / 1000);
    this.shareBucket = newShare === 0 ? 0 : Math.min(this.shareBucket, this.shareDepth);
    this.shareBytesPerSec = newShare;
    this.capped = newBytes > 0 || newMsgs > 0;
    this.limited = this.capped || newShare > 0;
    this.shareLast = t;
    if (!this.limited) this.heldUntil = 0;
    // The writer group's round (a domain id; anything else: none).
    if (g !== this.rs.group && this.groups !== undefined) {
      if (this.rs.group >= 0) this.groups.give(this.rs);
      this.rs = g >= 0 ? this.groups.take(g) : new RoundShare(-1);
    }
  }
}

/**
 * myrback's share loop (issue 16): a host-wide, work-conserving weighted share for
 * co-resident traffic. A lane's weight (lane-policer.ts) only shares one receiver's reading
 * between the lanes it reads; two pairs with different receivers (A→D beside E→F) meet only in
 * the CPU scheduler, which shares 1:1 whatever the weights say. This loop, in dom0 (the
 * driver domain's thread), closes that gap from the control path, as a slow controller:
 *
 *   every TICK_MS while two or more lanes move bytes (IDLE_TICK_MS while none or one does),
 *   it reads each lane's counters from the reader's lane policy page (message bytes taken,
 *   share holds: channel-abi.ts), keeps a moving average of each lane's rate, and takes the
 *   lanes that contend: moving at least CONTEND_BYTES_PER_SEC, or held by their share, each
 *   as part of its writer domain's flow (a domain's weight is the domain's, however many
 *   receivers it streams to). Normalised by weight, the slowest free flow sets the level L
 *   (bytes/s per unit of weight); a flow more than SWITCH ahead of L is limited to weight × L
 *   × (1 + HEADROOM), split among its lanes by their rates, and stays limited until it falls
 *   more than SWITCH behind L with its limits not binding for FREE_TICKS (hysteresis: one noisy tick does not swap the roles). The limited lane's receiver sleeps on its share
 *   bucket, its sender waits on the lane, and the core they leave goes to the lanes behind:
 *   they speed up, L rises, the limits follow. At the fixed point the rates stand in the
 *   weights' ratio (within HEADROOM). Fewer than two lanes contending, or all of one weight,
 *   for GRACE_TICKS in a row: every limit is lifted (a sender alone on the host is not
 *   limited; a pair the scheduler left waiting for a few ms does not lift them).
 *
 * A domain's byte caps are the domain's, not each lane's: every lane it writes is held to its
 * tx cap and every lane it reads to its rx cap (lane policy), so a capped domain with lanes to
 * four peers streamed at four times its cap. While two or more of a capped domain's lanes (in
 * one direction) move bytes, the loop splits the cap among them in proportion to their rates
 * (a lane that slows leaves its part to the others: the domain may use its whole cap, no more),
 * and lifts that split once one lane or none moves (its lane cap holds a lone lane).
 *
 * The limits go into the share word of the reader's page (never the caps, which stay a
 * ceiling); dom0 writes it, the lane's sender cannot reach it. The loop only runs while some
 * domain with a co-resident channel has a weight other than 1, or a byte cap and two lanes or
 * more in its direction (MyriCore.refreshShares): with default QoS no timer exists and nothing
 * is read.
 *
 * Trust: the counters are the members' libraries'. A lane's rate, which decides who
 * contends, the level and who is limited, is its reader's count (TakenBytes, the reader's own
 * page): a writer cannot make its lanes look slow to escape its limit. A receiver that
 * under-reports makes its lane look slow and so lowers the others' limits; FLOOR bounds that:
 * a lane is never limited below half its weighted share (weight ÷ the contending weights) of
 * the rate it moved at while last free (for FREE_SAMPLE_TICKS), not far from what the liar could take from them by
 * really using its share. A receiver that over-reports makes its writer's flow look fast,
 * which limits that flow to no less than its weighted share; and it cannot draw that share
 * away from the writer's other lanes, because a limited flow's limit, and a writer's tx cap,
 * are split among its lanes by what the writer itself counted giving each (GivenBytes, the
 * writer's own page): a writer that miscounts only misplaces its own share. A receiver's rx
 * cap is split by its own counts.
 */

import type { DomId } from "../../xen/abi.js";
import { readLaneCounters, readLaneGiven, writeLaneShare } from "../channel-abi.js";

/** The loop's period while lanes contend (ms). */
export const TICK_MS = 5;
/** Its period while fewer than two lanes move bytes (ms): a look for contention. */
export const IDLE_TICK_MS = 20;
/** A lane moving less than this is not streaming: it limits no one and is not limited. */
export const CONTEND_BYTES_PER_SEC = 16e6;
/** Slack over the weighted level a limited lane gets (the share's accuracy: 1 ± this). */
export const HEADROOM = 0.03;
/**
 * A lane is never limited below this part of its weighted share of the rate it moved at
 * while last free (the bound on what a receiver that under-reports can cost the others).
 */
export const FLOOR = 0.5;
/** Weight of the newest tick in a lane's moving average rate. */
const EWMA = 0.25;
/**
 * Ticks in a row a lane may move nothing (large messages arrive in steps) and still contend;
 * past them it stopped, and the lanes it held back are freed. Its rate is taken over the
 * whole quiet span when it moves again, so a pause does not drag its average down.
 */
const QUIET_TICKS = 3;
/** How far (as a fraction) a lane must run ahead of the level to be limited, or behind it to be freed. */
export const SWITCH = 0.15;
/** Ticks without contention after which the limits are lifted (a pause shorter keeps them). */
export const GRACE_TICKS = 4;
/** Ticks in a row a limited lane's limit must not bind before it may be freed. */
export const FREE_TICKS = 4;
/**
 * Ticks in a row a lane must move while free before its moving average is taken as its free
 * rate (the floor's reference): by then the average holds at most 0.75^8 = 10% of what came
 * before. Taken at the first free tick, the average was still mostly the limited rate: a
 * receiver that lied for 32 ticks, then kept quiet just long enough for the limits to be lifted
 * for a tick, lowered a neighbour's floor at every cycle, to 35% below its bound, moving nothing.
 */
export const FREE_SAMPLE_TICKS = 8;

/** One lane as the loop sees it: the reader's policy page and the writer's weight. */
export interface ShareLane {
  /** Stable while the lane lives (channel id and side). */
  key: string;
  /** The lane's reader's policy page. */
  page: SharedArrayBuffer;
  /** The lane's writer's policy page in the same channel (its GivenBytes); absent: split by the reader's counts. */
  writerPage?: SharedArrayBuffer;
  /** The lane's writer's weight. */
  weight: number;
  /** The writing and the reading domain (for the inspection, and whose caps are shared). */
  writer: DomId;
  reader: DomId;
  /** The writer's tx byte cap and the reader's rx byte cap, bytes/s (0 or absent: none). */
  writerTx?: number;
  readerRx?: number;
}

/**
 * The capped domains a lane counts against: its writer's tx cap ("tx <domid>") and its
 * reader's rx cap ("rx <domid>"), bytes/s, those that are set. Lanes of one key share its cap.
 */
export function capsOf(lane: ShareLane): [key: string, cap: number][] {
  const out: [string, number][] = [];
  if (lane.writerTx !== undefined && lane.writerTx > 0) out.push([`tx ${lane.writer}`, lane.writerTx]);
  if (lane.readerRx !== undefined && lane.readerRx > 0) out.push([`rx ${lane.reader}`, lane.readerRx]);
  return out;
}

/** What the loop needs from myrback: the lanes now and a clock and timer (tests give theirs). */
export interface ShareLoopHost {
  lanes(): ShareLane[];
  /** ms */
  now(): number;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(handle: unknown): void;
  /** Counts a tick and a limit written (the stats page). */
  counted?(what: "tick" | "limit"): void;
  log?(message: string): void;
}

interface LaneState {
  taken: number;
  holds: number;
  /** The writer's GivenBytes at the last tick, and its moving average rate (−1: no writer page). */
  given: number;
  givenRate: number;
  /** Moving average rate (bytes/s); −1 before the first tick. */
  rate: number;
  /** The average rate when the lane was last free (the floor's reference). */
  freeRate: number;
  /** Ticks in a row it moved while free (FREE_SAMPLE_TICKS). */
  freeTicks: number;
  /** The weight's share limit (bytes/s; 0 none). */
  limit: number;
  /** The limit written to the page: the weight's and the domain caps' split, the smaller (0 none). */
  written: number;
  /** Ticks in a row in which the share limit did not hold the lane. */
  unheld: number;
  /** Ticks in a row with nothing moved, and their seconds. */
  quiet: number;
  span: number;
  page: SharedArrayBuffer;
}

/** A writer domain's contending lanes, weighed as one. */
interface Flow {
  weight: number;
  /** The lanes' rates and free rates, summed. */
  rate: number;
  freeRate: number;
  /** Some lane of it has a weight limit; the fewest ticks any of its limits went unheld. */
  limited: boolean;
  unheld: number;
  lanes: LaneState[];
}

/** The loop's view of one lane, for the inspection and tests. */
export interface LaneShareInfo {
  key: string;
  writer: DomId;
  reader: DomId;
  weight: number;
  rateBytesPerSec: number;
  limitBytesPerSec: number;
  contending: boolean;
}

export class ShareLoop {
  private readonly state = new Map<string, LaneState>();
  private timer: unknown;
  private last = 0;
  private view: LaneShareInfo[] = [];
  /** Ticks in a row without contention. */
  private calm = 0;

  constructor(private readonly host: ShareLoopHost) {}

  get running(): boolean {
    return this.timer !== undefined;
  }

  /** Starts the loop (no-op if it runs). */
  start(): void {
    if (this.timer !== undefined) return;
    this.last = this.host.now();
    this.schedule(IDLE_TICK_MS);
  }

  /** Stops it and lifts every limit it wrote. */
  stop(): void {
    if (this.timer === undefined) return;
    this.host.clearTimer(this.timer);
    this.timer = undefined;
    for (const s of this.state.values()) if (s.written !== 0) writeLaneShare(s.page, 0);
    this.state.clear();
    this.view = [];
  }

  /** What the last tick saw and wrote. */
  info(): LaneShareInfo[] {
    return this.view;
  }

  private schedule(ms: number): void {
    this.timer = this.host.setTimer(() => {
      if (this.timer === undefined) return;
      let busy = false;
      try {
        busy = this.tick();
      } catch (e) {
        // dom0 goes on whatever a tick met; the loop looks again later.
        this.host.log?.(`share loop: ${(e as Error).message}`);
      }
      if (this.timer !== undefined) this.schedule(busy ? TICK_MS : IDLE_TICK_MS);
    }, ms);
  }

  /** One look: measures, decides, writes. True while lanes share (or a grace after): look again soon. */
  tick(): boolean {
    const now = this.host.now();
    const dt = (now - this.last) / 1000;
    this.last = now;
    this.host.counted?.("tick");
    const lanes = this.host.lanes();
    const seen = new Set<string>();
    const contending: { lane: ShareLane; s: LaneState }[] = [];
    /** Per capped domain and direction: its cap and its lanes that move bytes (`tx`: the domain writes them). */
    const capped = new Map<string, { cap: number; tx: boolean; lanes: LaneState[] }>();
    const view: LaneShareInfo[] = [];
    for (const lane of lanes) {
      seen.add(lane.key);
      const c = readLaneCounters(lane.page);
      let s = this.state.get(lane.key);
      if (s === undefined || s.page !== lane.page) {
        s = {
          taken: c.taken,
          holds: c.holds,
          given: lane.writerPage === undefined ? 0 : readLaneGiven(lane.writerPage),
          givenRate: -1,
          rate: -1,
          freeRate: 0,
          freeTicks: 0,
          limit: 0,
          written: 0,
          page: lane.page,
          quiet: 0,
          span: 0,
          unheld: 0,
        };
        this.state.set(lane.key, s);
        continue;
      }
      const moved = (c.taken - s.taken) >>> 0;
      const held = c.holds !== s.holds;
      s.unheld = held ? 0 : s.unheld + 1;
      s.taken = c.taken;
      s.holds = c.holds;
      if (dt <= 0) continue;
      if (lane.writerPage !== undefined) {
        const g = readLaneGiven(lane.writerPage);
        const r = ((g - s.given) >>> 0) / dt;
        s.given = g;
        s.givenRate = s.givenRate < 0 ? r : EWMA * r + (1 - EWMA) * s.givenRate;
      }
      if (moved === 0) {
        s.quiet++;
        s.span += dt;
      } else {
        const r = moved / (s.quiet >= QUIET_TICKS ? dt : s.span + dt);
        // A lane that stopped starts afresh: its old average would decide the roles.
        s.rate = s.rate < 0 || s.quiet >= QUIET_TICKS ? r : EWMA * r + (1 - EWMA) * s.rate;
        s.quiet = 0;
        s.span = 0;
        s.freeTicks = s.limit === 0 ? s.freeTicks + 1 : 0;
        if (s.limit === 0 && (s.freeRate === 0 || s.freeTicks >= FREE_SAMPLE_TICKS)) s.freeRate = s.rate;
      }
      const busy = (s.rate >= CONTEND_BYTES_PER_SEC && s.quiet < QUIET_TICKS) || (s.limit !== 0 && held);
      if (busy) contending.push({ lane, s });
      if (s.rate > 0 && s.quiet < QUIET_TICKS) {
        for (const [key, cap] of capsOf(lane)) {
          const g = capped.get(key);
          if (g) g.lanes.push(s);
          else capped.set(key, { cap, tx: key.startsWith("tx "), lanes: [s] });
        }
      }
      view.push({
        key: lane.key,
        writer: lane.writer,
        reader: lane.reader,
        weight: lane.weight,
        rateBytesPerSec: s.rate,
        limitBytesPerSec: 0,
        contending: busy,
      });
    }
    // A channel that went: its page is no longer ours to write.
    for (const key of [...this.state.keys()]) if (!seen.has(key)) this.state.delete(key);

    const limits = new Map<LaneState, number>();
    // Lanes contend as their writer's flow: a domain's weight is the domain's, however many
    // receivers it streams to (a weight-1 domain with lanes to four receivers counted four
    // times in the level); a limited flow's lanes share its limit by their rates.
    const flows = new Map<DomId, Flow>();
    for (const c of contending) {
      let f = flows.get(c.lane.writer);
      if (f === undefined) {
        f = {
          weight: c.lane.weight,
          rate: 0,
          freeRate: 0,
          limited: false,
          unheld: Number.POSITIVE_INFINITY,
          lanes: [],
        };
        flows.set(c.lane.writer, f);
      }
      f.rate += c.s.rate;
      f.freeRate += c.s.freeRate;
      if (c.s.limit !== 0) f.limited = true;
      f.unheld = Math.min(f.unheld, c.s.unheld);
      f.lanes.push(c.s);
    }
    const weights = new Set([...flows.values()].map((f) => f.weight));
    const sharing = flows.size >= 2 && weights.size >= 2;
    this.calm = sharing ? 0 : this.calm + 1;
    if (sharing) {
      // The level: the slowest free flow's rate per unit of weight (the limited ones follow it).
      let level = Number.POSITIVE_INFINITY;
      let total = 0;
      for (const f of flows.values()) {
        total += f.weight;
        if (!f.limited) level = Math.min(level, f.rate / f.weight);
      }
      if (level === Number.POSITIVE_INFINITY)
        for (const f of flows.values()) level = Math.min(level, f.rate / f.weight);
      for (const f of flows.values()) {
        // Hysteresis: a free flow is limited once clearly ahead of the level; a limited one is
        // freed only once clearly behind it with its limits not binding for FREE_TICKS (it
        // wants no more than it gets), so one noisy tick does not swap the roles.
        const norm = f.rate / f.weight;
        const ahead = f.limited
          ? f.unheld < FREE_TICKS || norm * (1 + SWITCH) >= level
          : norm > level * (1 + SWITCH);
        if (!ahead) continue;
        const floor = (FLOOR * f.freeRate * f.weight) / total;
        const limit = Math.max(f.weight * level * (1 + HEADROOM), floor, 1);
        const parts = splitParts(f.lanes, true);
        for (let i = 0; i < f.lanes.length; i++) limits.set(f.lanes[i], Math.max(limit * parts[i], 1));
      }
    } else if (this.calm <= GRACE_TICKS) {
      // Contention may only have paused (a pair the scheduler left waiting): limits stay a little.
      for (const s of this.state.values()) if (s.limit !== 0) limits.set(s, s.limit);
    }
    // A capped domain's moving lanes split its cap by their rates (the smaller split, when a
    // lane is both its writer's and its reader's).
    const splits = new Map<LaneState, number>();
    for (const { cap, tx, lanes: members } of capped.values()) {
      if (members.length < 2) continue;
      const parts = splitParts(members, tx);
      for (let i = 0; i < members.length; i++) {
        const m = members[i];
        const part = Math.max(cap * parts[i], 1);
        const had = splits.get(m);
        splits.set(m, had === undefined ? part : Math.min(had, part));
      }
    }
    for (const s of this.state.values()) {
      const byWeight = limits.get(s) ?? 0;
      const byCap = splits.get(s) ?? 0;
      s.limit = byWeight;
      const want = byWeight === 0 ? byCap : byCap === 0 ? byWeight : Math.min(byWeight, byCap);
      // Rewritten when it moves by more than 1% (or appears, or goes): fewer seqlock rounds.
      if (
        want === s.written ||
        (want !== 0 && s.written !== 0 && Math.abs(want - s.written) < 0.01 * s.written)
      )
        continue;
      writeLaneShare(s.page, want);
      s.written = want;
      if (want !== 0) this.host.counted?.("limit");
    }
    for (const v of view) v.limitBytesPerSec = this.state.get(v.key)?.written ?? 0;
    this.view = view;
    return sharing || this.calm <= GRACE_TICKS || splits.size > 0;
  }
}

/**
 * How one domain's share (or cap) splits among `lanes`, as fractions summing to 1: by the
 * writer's counts when `byWriter` and every lane has them (GivenBytes: a reader's claim does
 * not move the writer's share between its lanes), else by the readers' rates; equal parts
 * when nothing moved.
 */
function splitParts(lanes: readonly LaneState[], byWriter: boolean): number[] {
  const writer = byWriter && lanes.every((l) => l.givenRate >= 0);
  let total = 0;
  for (const l of lanes) total += writer ? l.givenRate : l.rate;
  return lanes.map((l) => (total > 0 ? (writer ? l.givenRate : l.rate) / total : 1 / lanes.length));
}

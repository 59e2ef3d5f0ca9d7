/**
 * Attaching TCP links from the NIC's thread (nic-worker.ts): "tcp" connects to a peer NIC's
 * listener and attaches the link, and from then on reconnects it whenever its connection
 * drops without a goodbye (the peer NIC was stopped or crashed, the network failed, a stream
 * fault): with backoff (RECONNECT_MIN_MS doubling to RECONNECT_MAX_MS) for
 * RECONNECT_FAST_FOR_MS, then once every RECONNECT_SLOW_MS, until the link is back, the host
 * detaches that peer, the NIC stops, or RECONNECT_GIVE_UP_MS pass: then the peer is given up
 * and forgotten (counted `links_given_up`, logged once), and only a new attach links it again.
 * "tcp-listen" accepts peers and attaches each one that proves the key, replacing any link the
 * NIC still has to that peer.
 *
 * A live link is never replaced. The cluster key proves that a peer belongs to the cluster, not
 * which NIC it is: any key holder can claim any NIC id. So a connection claiming the id of a
 * peer this NIC is linked to is taken only if the old link no longer answers a probe
 * (LINK_PROBE_MS: the peer restarted, or its old connection died unnoticed); while it answers,
 * the newcomer is refused and logged with its address, and a link that is replaced gets no
 * goodbye (which would tell its peer not to come back). Both ends apply the rule to the same old
 * link, so they agree: a dialer whose peer was linked another way keeps that link if it answers.
 * An attach that names the NIC it means to reach (`peerNic`, as the cluster's launchers and
 * hosts do) refuses a listener that turns out to be another. An attach to an address this NIC
 * is linked through already is refused (EBUSY) without dialing, and one to an address being
 * dialed waits for that dial first.
 *
 * A NIC keeps a bounded number of peer NIC ids, per remote address and in all (link-bound.ts):
 * a link beyond is refused on either side (EMLINK), while a peer that comes back under its id
 * from its address keeps its place (a reconnection is never refused for it). A listener refuses
 * in the handshake, before the link is up (tcp-handshake.ts step 3; counted links_refused, said
 * once per address): the dialer's attach rejects with EMLINK naming the listener's bound, and a
 * reconnecting dialer counts it as a failed attempt (it backs off and gives up as for any
 * other). A link that drops within RECONNECT_STABLE_MS of coming back up (refused by the peer
 * just after the handshake, say) counts as a failed attempt too, so no peer makes a dialer spin.
 */
import type { Link } from "./link.js";
import { LinkBoundError } from "./link-bound.js";
import { detailOf, NicError } from "./status.js";
import { checkKey, REFUSED_LINKS, REFUSED_LINKS_PER_ADDRESS } from "./tcp-handshake.js";
import { defaultLog, type TcpLink, type TcpLinkLog, tcpLinkStats } from "./tcp-link.js";
import { connectTcpLink, listenTcpLinks, type TcpLinkServer } from "./tcp-link-setup.js";

/**
 * How long an attached link has to answer a probe before a newer connection claiming its peer
 * replaces it. A NIC answers from its event loop, so a live one answers in well under this even
 * while it streams; a dead connection costs a restarted peer this much once.
 */
export const LINK_PROBE_MS = 1000;

export const RECONNECT_MIN_MS = 50;
export const RECONNECT_MAX_MS = 1000;
/**
 * How long a dropped link is redialled fast (every RECONNECT_MAX_MS once the backoff is up):
 * a host restarted, a NIC respawned or a network blip is back within seconds to a few
 * minutes, and its jobs should see the link again within a second of that.
 */
export const RECONNECT_FAST_FOR_MS = 5 * 60_000;
/**
 * Then one attempt a minute: a node that reboots (firmware, a kernel update) is relinked
 * within a minute of coming back, at 1/60 of the fast retries' cost in connections.
 */
export const RECONNECT_SLOW_MS = 60_000;
/**
 * Then the peer is given up and forgotten: its link-table entry, its timer and its dials go.
 * A peer silent for an hour was removed, replaced or restarted under another NIC id, and
 * without a bound every such peer cost a connection a second for as long as the host ran
 * (weeks of churn: one more dead peer each time). What needs it later links it again:
 * a job's hosts link through the launcher (job.ts, peer-links.ts ensureLinks), a host keeps
 * its `--peers` linked by itself (peer-links.ts peerLoop, through the peer's control port).
 */
export const RECONNECT_GIVE_UP_MS = 60 * 60_000;
/**
 * How long a reconnected link has to stay up before its drop starts a new reconnection (backoff
 * and the bound afresh from that drop); one that drops sooner counts as a failed attempt of the
 * reconnection under way. Else a peer that took each connection and dropped it at once (it
 * refused the link after the handshake) was redialled as fast as the handshakes went, forever.
 */
export const RECONNECT_STABLE_MS = 5000;

/** How a connecting link's reconnection runs (the spec's `reconnect`; tests shorten it). */
export interface ReconnectPolicy {
  /** Fast retries for this long after the drop (default RECONNECT_FAST_FOR_MS). */
  fastForMs?: number;
  /** Then one attempt this often (default RECONNECT_SLOW_MS). */
  slowEveryMs?: number;
  /** Given up this long after the drop (default RECONNECT_GIVE_UP_MS). */
  giveUpAfterMs?: number;
}

function checkReconnectPolicy(v: unknown): Required<ReconnectPolicy> {
  if (v !== undefined && (typeof v !== "object" || v === null))
    throw new RangeError("tcp link: reconnect must be an object");
  const r = (v ?? {}) as Record<string, unknown>;
  const ms = (name: keyof ReconnectPolicy, dflt: number): number => {
    const x = r[name];
    if (x === undefined) return dflt;
    if (!Number.isInteger(x) || (x as number) < 1 || (x as number) > 2 ** 31 - 1)
      throw new RangeError(`tcp link: reconnect.${name} must be a positive integer (ms, below 2^31)`);
    return x as number;
  };
  return {
    fastForMs: ms("fastForMs", RECONNECT_FAST_FOR_MS),
    slowEveryMs: ms("slowEveryMs", RECONNECT_SLOW_MS),
    giveUpAfterMs: ms("giveUpAfterMs", RECONNECT_GIVE_UP_MS),
  };
}

/** "60 min", "90 s" or "2500 ms", for log lines. */
function duration(ms: number): string {
  return ms >= 60_000 && ms % 60_000 === 0
    ? `${ms / 60_000} min`
    : ms >= 1000 && ms % 1000 === 0
      ? `${ms / 1000} s`
      : `${ms} ms`;
}

/** Failed reconnection attempts per log line around attempt `n`: 10 below 100, 100 below 1000, then 1000. */
export function logEvery(n: number): number {
  return n < 100 ? 10 : n < 1000 ? 100 : 1000;
}
/** Connect plus handshake time allowed to one reconnection attempt (unless the spec says). */
export const RECONNECT_ATTEMPT_MS = 1000;

/** The part of the Nic engine that attachTcpSpec drives. */
export interface TcpLinkHost {
  readonly nicId: number;
  /** Throws (EBUSY) if a link to that peer is attached, unless `replace`; (EMLINK) past the NIC's bounds (link-bound.ts). */
  attachLink(link: Link, replace?: boolean): void;
  detachLink(peerNic: number): void;
  /** Throws (EMLINK, counted links_refused) if a link from `peerNic` at `address` would be refused for the NIC's bounds (link-bound.ts). */
  checkLinkBound(peerNic: number, address: string): void;
  /** The link went down by itself; `retrying`: a reconnection will be tried. */
  linkLost(link: Link, retrying: boolean): void;
  /** No reconnection will be tried any more for that peer; `gaveUp`: it was given up (counted). */
  forgetLink(peerNic: number, gaveUp?: boolean): void;
  hasLink(peerNic: number): boolean;
  /** The link attached to `peerNic`, if any. */
  attachedLink(peerNic: number): Link | undefined;
  onStop(cb: () => void): void;
}

/** True if a link to `peerNic` is attached and its peer still answers on it. */
async function liveLink(nic: TcpLinkHost, peerNic: number): Promise<boolean> {
  const old = nic.attachedLink(peerNic);
  if (old === undefined) return false;
  if (old.probe === undefined) return true;
  return (await old.probe(LINK_PROBE_MS)) && nic.attachedLink(peerNic) === old;
}

/** `key`: the cluster key both ends hold (never sent; tcp-handshake.ts); `peerNic`: the NIC the dialer means to reach. */
export type TcpLinkSpec =
  | {
      kind: "tcp";
      host?: string;
      port: number;
      timeoutMs?: number;
      key: Uint8Array;
      peerNic?: number;
      reconnect?: ReconnectPolicy;
    }
  | { kind: "tcp-listen"; host?: string; port: number; key: Uint8Array };

export function isTcpLinkSpec(spec: unknown): spec is TcpLinkSpec {
  const k = (spec as { kind?: unknown } | null)?.kind;
  return k === "tcp" || k === "tcp-listen";
}

/**
 * A connecting link's life after its first connection: while its connection is up it waits;
 * when it drops without a goodbye it reconnects, fast then slowly (ReconnectPolicy), until
 * cancelled or given up.
 */
class Reconnector {
  cancelled = false;
  link: TcpLink | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private backoffMs = RECONNECT_MIN_MS;
  private attempts = 0;
  /** When the link dropped (performance.now()): the phases and the bound count from there. */
  private downSince = 0;
  private slow = false;
  private lastError = "";
  readonly where: string;

  constructor(
    private readonly nic: TcpLinkHost,
    readonly peerNic: number,
    readonly host: string,
    readonly port: number,
    private readonly timeoutMs: number,
    private readonly key: Buffer,
    private readonly log: TcpLinkLog,
    private readonly policy: Required<ReconnectPolicy>,
  ) {
    this.where = `tcp-link nic ${nic.nicId} -> nic ${peerNic} (${host}:${port})`;
  }

  /** Watches a connection just attached. */
  watch(link: TcpLink): void {
    this.link = link;
    const upAt = performance.now();
    link.onClose((reason, goodbye) => {
      if (this.link !== link) return;
      this.link = null;
      const retry = !this.cancelled && !goodbye;
      this.nic.linkLost(link, retry);
      if (!retry) {
        if (!this.cancelled)
          this.log(`${this.where}: link down (${reason}); not reconnecting`, {
            peerNic: this.peerNic,
            reason,
          });
        this.forget();
        return;
      }
      const upFor = performance.now() - upAt;
      if (this.downSince !== 0 && upFor < RECONNECT_STABLE_MS) {
        // Back up only briefly: the reconnection goes on, backoff, attempts and bound kept.
        this.failed(`the link dropped ${Math.round(upFor)} ms after it came up: ${reason}`);
        return;
      }
      this.log(`${this.where}: link down (${reason}); reconnecting`, { peerNic: this.peerNic, reason });
      this.backoffMs = RECONNECT_MIN_MS;
      this.attempts = 0;
      this.downSince = performance.now();
      this.slow = false;
      this.lastError = reason;
      this.schedule();
    });
  }

  cancel(): void {
    this.cancelled = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.forget();
  }

  private forget(gaveUp = false): void {
    this.cancelled = true;
    const map = reconnectors.get(this.nic);
    if (map?.get(this.peerNic) === this) map.delete(this.peerNic);
    this.nic.forgetLink(this.peerNic, gaveUp);
  }

  /**
   * Sets the timer for the next attempt: the backoff while fast, then slowEveryMs; the last
   * attempt falls on the bound. Past it, gives the peer up. Returns the delay (undefined: gave up).
   */
  private schedule(): number | undefined {
    const { fastForMs, slowEveryMs, giveUpAfterMs } = this.policy;
    const down = performance.now() - this.downSince;
    if (down >= giveUpAfterMs) {
      this.log(
        `${this.where}: no link for ${duration(giveUpAfterMs)} (${this.attempts} attempts); giving up and forgetting NIC ${this.peerNic} (the last attempt: ${this.lastError}); only a new attach links it again`,
        { peerNic: this.peerNic, reason: this.lastError },
      );
      this.forget(true);
      return undefined;
    }
    let delay: number;
    if (down < fastForMs) {
      delay = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, RECONNECT_MAX_MS);
    } else {
      if (!this.slow) {
        this.slow = true;
        this.log(
          `${this.where}: no link for ${duration(fastForMs)} (${this.attempts} attempts); trying every ${duration(slowEveryMs)}, giving up ${duration(giveUpAfterMs)} after the drop`,
          { peerNic: this.peerNic, reason: this.lastError },
        );
      }
      delay = slowEveryMs;
    }
    delay = Math.max(0, Math.min(delay, giveUpAfterMs - down));
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.attempt();
    }, delay);
    return delay;
  }

  /** An attempt failed: the next one is scheduled (or the peer given up), and said so now and then. */
  private failed(why: string): void {
    this.lastError = why;
    const next = this.schedule();
    // Every attempt at first, then ever more rarely (once in 10, then in 100): a peer that
    // crashed for good costs a few lines before it is given up.
    if (next !== undefined && (this.attempts <= 3 || this.attempts % logEvery(this.attempts) === 0))
      this.log(
        `${this.where}: reconnection attempt ${this.attempts} failed (${why}); next in ${Math.round(next)} ms`,
        {
          peerNic: this.peerNic,
          reason: why,
        },
      );
  }

  /** The peer reached us another way meanwhile (it connected to our listener): that link stays, and this reconnection ends. */
  private linkedElsewhere(): boolean {
    if (!this.nic.hasLink(this.peerNic)) return false;
    this.log(`${this.where}: a link to NIC ${this.peerNic} is attached already; not reconnecting`, {
      level: "info",
      peerNic: this.peerNic,
    });
    this.forget();
    return true;
  }

  private async attempt(): Promise<void> {
    if (this.cancelled) return;
    if (this.linkedElsewhere()) return;
    const dials = dialsOf(this.nic);
    const address = `${this.host}:${this.port}`;
    // An attach is dialing this address (it cancels us once connected): no second connection.
    if (dials.has(address)) {
      this.schedule();
      return;
    }
    this.attempts++;
    let link: TcpLink;
    const dial = connectTcpLink({
      nicId: this.nic.nicId,
      host: this.host,
      port: this.port,
      key: this.key,
      timeoutMs: this.timeoutMs,
      log: this.log,
    });
    dials.set(address, dial);
    try {
      link = await dial;
    } catch (e) {
      // The host's log: what a listener that is not a MyriXen NIC sent, too.
      if (!this.cancelled) this.failed(detailOf(e));
      return;
    } finally {
      if (dials.get(address) === dial) dials.delete(address);
    }
    if (this.cancelled) {
      link.close();
      return;
    }
    if (link.peerNic !== this.peerNic) {
      // Another NIC took the address (the host restarted under another id): it may go again.
      link.close();
      this.failed(`the listener is now NIC ${link.peerNic}`);
      return;
    }
    if (this.linkedElsewhere()) {
      link.close();
      return;
    }
    try {
      this.nic.attachLink(link);
    } catch (e) {
      this.log(`${this.where}: reconnected but the NIC refused the link: ${(e as Error).message}`);
      link.close();
      this.forget();
      return;
    }
    this.log(`${this.where}: link up again (attempt ${this.attempts})`, {
      level: "info",
      peerNic: this.peerNic,
    });
    this.watch(link);
  }
}

const reconnectors = new WeakMap<TcpLinkHost, Map<number, Reconnector>>();
/** Connections being dialed now (an attach's or a reconnection's), per NIC, by "host:port". */
const dialing = new WeakMap<TcpLinkHost, Map<string, Promise<TcpLink>>>();

function dialsOf(nic: TcpLinkHost): Map<string, Promise<TcpLink>> {
  let map = dialing.get(nic);
  if (!map) dialing.set(nic, (map = new Map()));
  return map;
}

function reconnectorsOf(nic: TcpLinkHost): Map<number, Reconnector> {
  let map = reconnectors.get(nic);
  if (!map) {
    const m = new Map<number, Reconnector>();
    reconnectors.set(nic, m);
    nic.onStop(() => {
      for (const r of [...m.values()]) r.cancel();
    });
    map = m;
  }
  return map;
}

/**
 * Stops reconnecting to `peerNic` (the host detaches it). Returns whether a reconnecting link
 * existed; its connection, if up, is still attached (the caller detaches it).
 */
export function cancelTcpReconnect(nic: TcpLinkHost, peerNic: number): boolean {
  const r = reconnectors.get(nic)?.get(peerNic);
  if (!r) return false;
  r.cancel();
  return true;
}

/** Connects to a peer's listener and attaches the link, reconnecting it from then on. */
async function dialAndAttach(
  nic: TcpLinkHost,
  host: string,
  port: number,
  timeoutMs: number | undefined,
  key: Buffer,
  log: TcpLinkLog,
  expected: number | undefined,
  policy: Required<ReconnectPolicy>,
): Promise<TcpLink> {
  const link = await connectTcpLink({ nicId: nic.nicId, host, port, key, timeoutMs, log });
  if (expected !== undefined && link.peerNic !== expected) {
    link.abort(`reached NIC ${link.peerNic}, not NIC ${expected}`);
    throw new NicError(
      "EPROTO",
      `${host}:${port} answered as NIC ${link.peerNic}, not NIC ${expected}: another host listens there, or one claims to be it`,
    );
  }
  // Linked already another way: the peer's listener refused this connection if that link
  // answers (and took it if not), so this end decides on the same link the same way.
  const replacing = nic.hasLink(link.peerNic);
  if (replacing && (await liveLink(nic, link.peerNic))) {
    link.abort("a live link to this NIC is attached already");
    throw new NicError("EBUSY", `a link to NIC ${link.peerNic} is attached already, and it answers`);
  }
  // An explicit attach wins over a reconnection still trying for that peer.
  cancelTcpReconnect(nic, link.peerNic);
  try {
    nic.attachLink(link, true);
  } catch (e) {
    link.close();
    throw e;
  }
  if (replacing)
    log(
      `tcp-link nic ${nic.nicId} -> nic ${link.peerNic} (${host}:${port}): link up (replaces the previous connection)`,
      {
        level: "info",
        peerNic: link.peerNic,
      },
    );
  const r = new Reconnector(
    nic,
    link.peerNic,
    host,
    port,
    timeoutMs ?? RECONNECT_ATTEMPT_MS,
    key,
    log,
    policy,
  );
  reconnectorsOf(nic).set(link.peerNic, r);
  r.watch(link);
  return link;
}

/**
 * Carries out a TCP link spec on the NIC's thread: "tcp" connects and attaches the link
 * (resolves after the handshake; a first connection that fails rejects; EBUSY, without a
 * connection, if this NIC is linked through that address already) and from then on
 * reconnects it whenever it drops without a goodbye, within the spec's `reconnect` bounds
 * (ReconnectPolicy; the RECONNECT_* defaults); "tcp-listen" resolves once listening and
 * attaches each peer that connects and proves the key, replacing a link that peer had. Both
 * need the spec's `key`; `log` gets every link event (nic-worker.ts sends them to the host).
 */
export async function attachTcpSpec(
  nic: TcpLinkHost,
  spec: unknown,
  log: TcpLinkLog = defaultLog,
): Promise<TcpLinkServer | TcpLink> {
  // Never the spec itself in a message: it holds the key.
  if (!isTcpLinkSpec(spec))
    throw new RangeError(`not a tcp link spec: kind ${JSON.stringify((spec as { kind?: unknown })?.kind)}`);
  const s = spec as Partial<{ host: unknown; port: unknown; timeoutMs: unknown }>;
  const key = checkKey((spec as { key?: unknown }).key, `tcp link (${spec.kind})`);
  if (s.host !== undefined && typeof s.host !== "string")
    throw new RangeError("tcp link: host must be a string");
  if (s.timeoutMs !== undefined && (!Number.isInteger(s.timeoutMs) || (s.timeoutMs as number) < 1))
    throw new RangeError("tcp link: timeoutMs must be a positive integer");
  const expected = (spec as { peerNic?: unknown }).peerNic;
  if (
    expected !== undefined &&
    (!Number.isInteger(expected) || (expected as number) < 0 || (expected as number) > 0xffffffff)
  )
    throw new RangeError("tcp link: peerNic must be a NIC id (an integer in 0..2^32-1)");
  if (spec.kind === "tcp") {
    const policy = checkReconnectPolicy((spec as { reconnect?: unknown }).reconnect);
    const host = spec.host ?? "127.0.0.1";
    const where = `${host}:${spec.port}`;
    const dials = dialsOf(nic);
    // Another attach or a reconnection is dialing this address: its outcome first (two
    // connections would make the peer's listener drop the first for the second).
    for (let d = dials.get(where); d !== undefined; d = dials.get(where)) await d.catch(() => undefined);
    for (const r of reconnectorsOf(nic).values())
      if (r.host === host && r.port === spec.port && r.link !== null && nic.hasLink(r.peerNic))
        throw new NicError("EBUSY", `a link to NIC ${r.peerNic} through ${where} is already attached`);
    const run = dialAndAttach(
      nic,
      host,
      spec.port,
      spec.timeoutMs,
      key,
      log,
      expected as number | undefined,
      policy,
    );
    dials.set(where, run);
    try {
      return await run;
    } finally {
      if (dials.get(where) === run) dials.delete(where);
    }
  }
  /** Attaches a link the listener took; `replacing`: the peer's old link did not answer. */
  const take = (link: TcpLink, replacing: boolean): void => {
    nic.attachLink(link, true);
    log(
      `tcp-link nic ${nic.nicId} <- nic ${link.peerNic}: link up${replacing ? " (replaces the previous connection)" : ""}`,
      { level: "info", peerNic: link.peerNic },
    );
    link.onClose((reason) => {
      nic.linkLost(link, false);
      if (nic.hasLink(link.peerNic)) return;
      log(`tcp-link nic ${nic.nicId} <- nic ${link.peerNic}: link down (${reason})`, {
        peerNic: link.peerNic,
        reason,
      });
    });
  };
  /**
   * take(), or the link refused without a goodbye (its dialer may try again later). A refusal
   * for the NIC's bounds is counted by the NIC (links_refused) and said once per address, not
   * per attempt (link-bound.ts): a key holder dialing in a loop must not flood the log.
   */
  const sayRefused = (e: unknown, peerNic: number, remote: string): void => {
    if (e instanceof LinkBoundError && !e.say) return;
    const why = (e as Error).message;
    log(
      `tcp-link nic ${nic.nicId}: refused a link from NIC ${peerNic} at ${remote}: ${why}${e instanceof LinkBoundError ? "; further links refused for this are counted (links_refused), not logged" : ""}`,
      { remote, reason: why, peerNic },
    );
  };
  const takeOrRefuse = (link: TcpLink, replacing: boolean): void => {
    try {
      take(link, replacing);
    } catch (e) {
      link.abort((e as Error).message);
      sayRefused(e, link.peerNic, link.remote);
    }
  };
  return listenTcpLinks({
    nicId: nic.nicId,
    host: spec.host,
    port: spec.port,
    key,
    log,
    // The bounds first, in the handshake: the dialer is told (EMLINK) instead of getting a
    // link that is dropped at once (which it would redial). A link that gets through while
    // others take the last places is still refused by takeOrRefuse.
    admit: (peerNic, address, remote) => {
      try {
        nic.checkLinkBound(peerNic, address);
        return null;
      } catch (e) {
        if (!(e instanceof LinkBoundError)) throw e;
        sayRefused(e, peerNic, remote);
        return {
          code: e.bound === "address" ? REFUSED_LINKS_PER_ADDRESS : REFUSED_LINKS,
          reason: e.message.replace(/^EMLINK: /, ""),
        };
      }
    },
    onLink: (link) => {
      // Only a peer that proved the cluster key gets here; the id it claims is its word. A
      // NIC that connects again (it restarted, or its old connection died unnoticed) replaces
      // its old link once that link fails to answer; while it answers, the newcomer is
      // refused. The newcomer's frames wait meanwhile.
      if (!nic.hasLink(link.peerNic)) {
        takeOrRefuse(link, false);
        return;
      }
      link.hold();
      void liveLink(nic, link.peerNic).then((alive) => {
        if (link.isClosed) return;
        if (!alive) {
          // Attached first, so the frames that came with its handshake find the NIC's callbacks.
          takeOrRefuse(link, nic.hasLink(link.peerNic));
          link.release();
          return;
        }
        const why = `it claims NIC ${link.peerNic}, whose link is attached and answers`;
        link.abort(why);
        tcpLinkStats.handshakesRejected++;
        log(`tcp-link nic ${nic.nicId}: refused a connection from ${link.remote}: ${why}`, {
          remote: link.remote,
          reason: why,
          peerNic: link.peerNic,
        });
      });
    },
  });
}

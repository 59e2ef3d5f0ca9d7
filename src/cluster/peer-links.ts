/**
 * This host's NIC links to other hosts' NICs: links a job's hosts on a launcher's request
 * (only the lower NIC id of a pair connects, so two hosts asked at once never make two
 * links), and keeps a link to each `--peers` host, retrying until it works and relinking
 * when it drops, however long that takes (the NIC itself gives a dropped link up an hour
 * after the drop, tcp-attach.ts RECONNECT_GIVE_UP_MS: a peer that is not kept here is linked
 * again by the next job that needs it). Both sides prove the cluster key (tcp-link.ts on the
 * NIC, auth.ts here). Requests for the same peer share one wait only if they name the same
 * address, and each gives up at its own deadline; a client's reply never quotes what a peer
 * that is not a MyriXen NIC sent (the host's log does).
 */

import type { Host } from "../host/host.js";
import { detailOf } from "../nic/status.js";
import type { ClusterKey } from "./auth.js";
import { formatAddress, type HostAddress, type HostEntry } from "./hostfile.js";
import { isWildcard, plainAddress } from "./listen.js";
import type { Logger } from "./log.js";
import { RemoteHost } from "./remote.js";
import type { LinkPeer } from "./wire.js";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

/** Sleeps `ms`, or less if `signal` aborts first. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise<void>((r) => {
    const t = setTimeout(done, ms);
    t.unref();
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      r();
    }
  });
}

export interface PeerLinksOptions {
  host: Host;
  key: ClusterKey;
  log: Logger;
  /** How this host names itself to its peers. */
  hostname: string;
  control: HostAddress;
  /** Where this host's NIC accepts links (none: it links nowhere by itself). */
  linkAddress: HostAddress | undefined;
  /**
   * The most peer NICs one request may name: the NIC's own bound on the NICs it links to
   * (maxLinks), past which such a request could never succeed.
   */
  maxPeers: number;
  /** True once the host stops: loops end, attempts give up. */
  stopped: () => boolean;
}

/** One peer NIC being linked, shared by every request that names it at the same address. */
interface LinkWait {
  run: Promise<void>;
  /** Ends the wait once no request wants it any more. */
  abort: AbortController;
  users: number;
  /** When it gives up: the deadline of the request that started it. */
  deadline: number;
  /** Why its last dial failed, as a client may read it (no byte the peer sent: status.ts DetailedError). */
  last: string;
}

/** How often the one shared look at the NIC's links runs while a request waits for a peer to dial in. */
const LINK_LOOK_MS = 50;
/** Between two dials of a peer this NIC connects to. */
const REDIAL_MS = 200;

/** Thrown to a request whose client went (its AbortSignal): the wait ends with it. */
export class LinkRequestCancelled extends Error {}

const cancelled = () => Promise.reject(new LinkRequestCancelled("the client went"));

export class PeerLinks {
  /** The waits, by waitKey. */
  private readonly linking = new Map<string, LinkWait>();
  /** Peers that dial us, waited for by one shared look at the NIC's links: NIC id → wake. */
  private readonly awaited = new Map<number, (linked: boolean) => void>();
  private looking = false;
  /** The NICs linked at the last look (the answer when the NIC cannot be asked). */
  linkedNics: number[] = [];

  constructor(private readonly opts: PeerLinksOptions) {}

  private get nicId(): number {
    return this.opts.host.nicId;
  }

  /**
   * The wait a request for `p` shares. Where this NIC dials, the address is part of it: a
   * request naming NIC N at one address must never wait on a dial to another (a key holder
   * could name a dead address, or its own, for the NIC an honest launcher asks for). Where the
   * peer dials in, nothing is dialed and the NIC id alone says what is awaited.
   */
  private waitKey(p: LinkPeer): string {
    return this.nicId > p.nicId ? `${p.nicId}` : `${p.nicId} at ${formatAddress(p)}`;
  }

  /** Peer NICs being linked now for some request (each wait once, however many requests share it). */
  get activeWaits(): number {
    return this.linking.size;
  }

  /** The NIC ids this NIC is linked to now. */
  async links(): Promise<number[]> {
    this.linkedNics = (await this.opts.host.nicInfo()).links;
    return this.linkedNics;
  }

  /**
   * Makes sure this NIC is linked to every peer's NIC. Only one side of a pair connects (the
   * lower NIC id, to the higher), so two hosts asked at once never make two links; the other
   * side waits for the link to appear. Rejects naming every peer not linked within timeoutMs.
   * A request naming more peers than the NIC links to (opts.maxPeers) is refused whole. When
   * `signal` aborts (the client that asked went), the request rejects with
   * LinkRequestCancelled and its waits end, unless another request still wants a peer.
   */
  async ensureLinks(peers: LinkPeer[], timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (peers.length > this.opts.maxPeers)
      throw new Error(
        `the request names ${peers.length} peer NICs, and this host's NIC links to at most ${this.opts.maxPeers} (myrixen host --max-links N, maxLinks in the config)`,
      );
    const deadline = Date.now() + timeoutMs;
    // One listener for the request, however many peers it names.
    const leave: Array<() => void> = [];
    const onAbort = () => {
      for (const l of leave) l();
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    let results: PromiseSettledResult<void>[];
    try {
      results = await Promise.allSettled(
        peers.map((p) => (signal?.aborted ? cancelled() : this.join(p, deadline, timeoutMs, leave))),
      );
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    if (signal?.aborted) throw new LinkRequestCancelled("the client that asked for the links went");
    const problems = results.flatMap((r) => (r.status === "rejected" ? [(r.reason as Error).message] : []));
    if (problems.length > 0) throw new Error(problems.join("; "));
  }

  /**
   * This request's share of the wait for one peer: it leaves (the call it adds to `leave`)
   * when its client goes, and gives up at its own deadline whatever the wait it shares does.
   * Two waits for one NIC id at different addresses may both run; the NIC keeps one link per
   * peer NIC id and never replaces a live one (tcp-attach.ts), so the first link made, through
   * either address, is the link to that NIC id, and both waits see it and succeed.
   */
  private join(p: LinkPeer, deadline: number, timeoutMs: number, leave: Array<() => void>): Promise<void> {
    if (p.nicId === this.nicId)
      return Promise.reject(
        new Error(`host ${p.label} has this host's own NIC id ${p.nicId}; give one of them another --nic-id`),
      );
    const key = this.waitKey(p);
    let w = this.linking.get(key);
    // A wait its last client left is ending (a dial in progress runs out first): this request
    // starts its own rather than share that one's cancellation.
    if (!w || w.abort.signal.aborted) {
      const wait: LinkWait = {
        abort: new AbortController(),
        users: 0,
        deadline,
        last: "",
        run: Promise.resolve(),
      };
      wait.run = this.linkTo(p, wait, timeoutMs).finally(() => {
        if (this.linking.get(key) === wait) this.linking.delete(key);
      });
      this.linking.set(key, wait);
      w = wait;
    }
    const shared = w;
    // A wait an earlier request started gives up at that request's deadline: if it fails
    // before ours, this request waits on, in a wait of its own.
    const shorter = shared.deadline < deadline;
    shared.users++;
    return new Promise<void>((resolve, reject) => {
      let left = false;
      const quit = () => {
        if (left) return false;
        left = true;
        clearTimeout(timer);
        if (--shared.users === 0) shared.abort.abort();
        return true;
      };
      // This request's own deadline: a wait an earlier request started may run far longer.
      const timer = setTimeout(
        () => {
          if (!quit()) return;
          void this.links()
            .catch(() => this.linkedNics)
            .then((links) =>
              links.includes(p.nicId)
                ? resolve()
                : reject(new Error(this.failure(p, timeoutMs, shared.last))),
            );
        },
        Math.max(0, deadline - Date.now()),
      );
      timer.unref();
      leave.push(() => {
        if (quit()) reject(new LinkRequestCancelled("the client went"));
      });
      shared.run.then(
        () => {
          if (quit()) resolve();
        },
        (e: unknown) => {
          if (!quit()) return;
          if (
            shorter &&
            Date.now() < deadline &&
            !(e instanceof LinkRequestCancelled) &&
            !this.opts.stopped()
          )
            resolve(this.join(p, deadline, timeoutMs, leave));
          else reject(e);
        },
      );
    });
  }

  /** Why a request for `p` got no link within its `timeoutMs`; `last`: why the last dial failed. */
  private failure(p: LinkPeer, timeoutMs: number, last: string): string {
    const where = `host ${p.label} (NIC ${p.nicId}, link ${formatAddress(p)})`;
    return this.nicId < p.nicId
      ? `no NIC link to ${where} within ${timeoutMs} ms: ${last || "unreachable"}`
      : `${where} did not link to this host's NIC within ${timeoutMs} ms (the lower NIC id connects)`;
  }

  /** Runs `wait` until the NIC is linked to `p`, the wait's deadline, or its abort. */
  private linkTo(p: LinkPeer, wait: LinkWait, timeoutMs: number): Promise<void> {
    const { deadline } = wait;
    const signal = wait.abort.signal;
    return (async () => {
      let told = false;
      if (this.nicId > p.nicId) {
        // The peer dials: one look at the NIC's links, shared by every such wait, sees it come.
        if (await this.dialledIn(p.nicId, deadline, signal)) return;
      } else {
        while (Date.now() < deadline && !this.opts.stopped() && !signal.aborted) {
          if ((await this.links()).includes(p.nicId)) return;
          const left = Math.max(1, Math.min(3000, deadline - Date.now()));
          try {
            await this.opts.host.nic.attachLink({
              kind: "tcp",
              host: p.host,
              port: p.port,
              peerNic: p.nicId,
              timeoutMs: left,
              key: this.opts.key.bytes,
            });
            this.opts.log.info("NIC linked", { peer: p.label, peerNic: p.nicId });
            return;
          } catch (e) {
            // An attempt the deadline cut short says only that time ran out: an earlier one's
            // reason (refused, not a MyriXen link) says more.
            if (wait.last === "" || Date.now() < deadline) wait.last = (e as Error).message;
            const detail = detailOf(e);
            this.opts.log.debug("NIC link attempt failed", { peer: p.label, error: detail });
            // What the peer sent is for this log, never the client's reply: once a wait.
            if (detail !== wait.last && !told) {
              told = true;
              this.opts.log.warn("a link address did not answer as a MyriXen NIC", {
                peer: p.label,
                peerNic: p.nicId,
                error: detail,
              });
            }
          }
          await pause(REDIAL_MS, signal);
        }
      }
      if (signal.aborted) throw new LinkRequestCancelled("no request wants this link any more");
      if ((await this.links().catch((): number[] => [])).includes(p.nicId)) return;
      throw new Error(this.failure(p, timeoutMs, wait.last));
    })();
  }

  /** True once the NIC is linked to `peerNic`; false at the deadline, on abort, or when the host stops. */
  private dialledIn(peerNic: number, deadline: number, signal: AbortSignal): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const done = (linked: boolean) => {
        if (this.awaited.get(peerNic) !== done) return;
        this.awaited.delete(peerNic);
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        resolve(linked);
      };
      const onAbort = () => done(false);
      const timer = setTimeout(() => done(false), Math.max(0, deadline - Date.now()));
      timer.unref();
      signal.addEventListener("abort", onAbort, { once: true });
      this.awaited.set(peerNic, done);
      void this.look();
    });
  }

  /** The one look at the NIC's links every LINK_LOOK_MS while any peer is awaited. */
  private async look(): Promise<void> {
    if (this.looking) return;
    this.looking = true;
    try {
      while (this.awaited.size > 0 && !this.opts.stopped()) {
        const links = await this.links().catch(() => this.linkedNics);
        for (const id of links) this.awaited.get(id)?.(true);
        if (this.awaited.size > 0) await sleep(LINK_LOOK_MS);
      }
    } finally {
      this.looking = false;
      if (this.opts.stopped()) for (const done of [...this.awaited.values()]) done(false);
    }
  }

  /** Links to one `--peers` host, keeps retrying until it works, and relinks when the link drops. */
  async peerLoop(peer: HostEntry): Promise<void> {
    let delay = 500;
    let failures = 0;
    while (!this.opts.stopped()) {
      let rh: RemoteHost | undefined;
      try {
        rh = await RemoteHost.connect(peer, {
          role: "peer",
          name: `${this.opts.hostname}:${this.opts.control.port}`,
          key: this.opts.key,
        });
        if (rh.nicId === this.nicId)
          throw new Error(`it has this host's NIC id ${this.nicId}; give one of them another --nic-id`);
        const link = this.opts.linkAddress!;
        const me: LinkPeer = {
          nicId: this.nicId,
          host: isWildcard(link.host) ? plainAddress(rh.localAddress) : link.host,
          port: link.port,
          label: formatAddress({ host: this.opts.hostname, port: this.opts.control.port }),
        };
        if (!rh.linkAddress)
          throw new Error(
            `it takes no links: it serves inspection only (${rh.observeOnly ?? "no link address"})`,
          );
        const them: LinkPeer = { nicId: rh.nicId, ...rh.linkAddress, label: peer.label };
        await Promise.all([rh.link([me], 10_000), this.ensureLinks([them], 10_000)]);
        rh.close();
        this.opts.log.info("linked to peer", { peer: peer.label, peerNic: them.nicId });
        delay = 500;
        failures = 0;
        while (!this.opts.stopped() && (await this.links()).includes(them.nicId)) await sleep(2000);
        if (!this.opts.stopped())
          this.opts.log.warn("the link to a peer dropped: relinking", { peer: peer.label });
      } catch (e) {
        rh?.close();
        if (this.opts.stopped()) return;
        const fields = { peer: peer.label, error: (e as Error).message, retryMs: delay };
        if (failures++ === 0) this.opts.log.warn("cannot link to peer yet: retrying", fields);
        else this.opts.log.debug("cannot link to peer yet: retrying", fields);
        await sleep(delay);
        delay = Math.min(delay * 2, 10_000);
      }
    }
  }
}

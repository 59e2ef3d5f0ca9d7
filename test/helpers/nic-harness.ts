/**
 * What tests that drive a NIC directly share: a free loopback port to listen on, the control
 * channel a NIC device's driver endpoint answers on (as myrback holds it), and an endpoint's
 * owner that posts descriptors and reads events through its window, and a fake peer NIC.
 */
import assert from "node:assert/strict";
import net from "node:net";
import type { NicControlRequest, OpenEndpointReply } from "../../src/nic/control.js";
import type { NicDevice } from "../../src/nic/device.js";
import type { TcpLink } from "../../src/nic/tcp-link.js";
import { listenTcpLinks, type TcpLinkServer } from "../../src/nic/tcp-link-setup.js";
import {
  ANY_ENDPOINT,
  DESC_WORDS,
  E_TYPE,
  EQ_ENTRIES,
  EQ_OFFSET,
  EVENT_WORDS,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_EQ_CONS,
  W_EQ_PROD,
  W_NIC_SLEEPING,
  W_SQ_CONS,
  W_SQ_PROD,
} from "../../src/nic/window.js";
import { SyncCallClient } from "../../src/xen/sync-call.js";
import { LINK_KEY } from "./link-key.js";
import { until } from "./until.js";

/** The loopback address the tests' links and listeners use. */
export const HOST = "127.0.0.1";

/** A TCP port free on HOST a moment ago (listened on, then closed). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, HOST, r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** The NIC's control channel, as its driver domain calls it. */
export function control(nic: NicDevice): SyncCallClient<NicControlRequest> {
  const ep = nic.driverEndpoint();
  return new SyncCallClient<NicControlRequest>(ep.port, ep.replyWord);
}

/** Opens an endpoint on the NIC behind `ctl` for `owner`, with any free id. */
export function openEndpoint(
  ctl: SyncCallClient<NicControlRequest>,
  owner: string,
  key = 0,
  /** Its QoS share group (myrback passes the domain's id): absent, a share of its own. */
  group?: number,
): OpenEndpointReply {
  return ctl.call<OpenEndpointReply>({ op: "open_endpoint", owner, endpointId: ANY_ENDPOINT, key, group });
}

/**
 * This thread as an endpoint's owner, as a guest's library is: posts descriptors into the
 * window's send queue and reads its event queue. What an event means is the subclass's
 * (onEvent); answers land in `byCookie`.
 */
export abstract class WindowOwner {
  readonly w: Int32Array;
  prod = 0;
  eqCons = 0;
  /** Answers seen, by cookie: their status. */
  readonly byCookie = new Map<number, number>();
  constructor(
    readonly ctl: SyncCallClient<NicControlRequest>,
    readonly ep: OpenEndpointReply,
  ) {
    this.w = new Int32Array(ep.window);
  }
  get id(): number {
    return this.ep.endpointId;
  }
  get session(): number {
    return this.ep.session;
  }
  close(): void {
    this.ctl.call({ op: "close_endpoint", endpointId: this.id });
  }
  /** Posts one descriptor: its words by index (the rest 0). */
  protected postDesc(words: Record<number, number>): void {
    assert.ok(this.prod - Atomics.load(this.w, W_SQ_CONS) < SQ_ENTRIES, "send-queue room");
    const base = SQ_OFFSET / 4 + (this.prod % SQ_ENTRIES) * DESC_WORDS;
    for (let i = 0; i < DESC_WORDS; i++) this.w[base + i] = 0;
    for (const [i, v] of Object.entries(words)) this.w[base + Number(i)] = v;
    this.prod++;
    Atomics.store(this.w, W_SQ_PROD, this.prod);
    this.poke();
  }
  poke(): void {
    if (Atomics.load(this.w, W_NIC_SLEEPING) === 1) Atomics.notify(this.w, W_SQ_PROD);
  }
  /** Descriptors the NIC has not taken yet. */
  get queued(): number {
    return this.prod - Atomics.load(this.w, W_SQ_CONS);
  }
  /** An event of `type` (its whole type word) at word `base`: true if it is one this owner counts. */
  protected abstract onEvent(type: number, base: number): boolean;
  /** Reads every event there is; returns how many onEvent counted. */
  drain(): number {
    let n = 0;
    while (Atomics.load(this.w, W_EQ_PROD) !== this.eqCons) {
      const base = EQ_OFFSET / 4 + (this.eqCons % EQ_ENTRIES) * EVENT_WORDS;
      if (this.onEvent(this.w[base + E_TYPE] >>> 0, base)) n++;
      this.eqCons++;
      Atomics.store(this.w, W_EQ_CONS, this.eqCons);
      this.poke();
    }
    return n;
  }
  /** Waits for the answer to `cookie`; returns its status. */
  async answer(cookie: number, what: string, timeoutMs = 5000): Promise<number> {
    await until(
      () => {
        this.drain();
        return this.byCookie.has(cookie);
      },
      what,
      timeoutMs,
    );
    return this.byCookie.get(cookie)!;
  }
}

/**
 * A fake peer NIC `nicId` in this thread: a TCP link listener holding the cluster key. Every
 * frame of every link it accepts goes to `onFrame`; `links` lists them in the order they came.
 */
export async function listenAsPeer(
  nicId: number,
  onFrame: (frame: Uint8Array, link: TcpLink) => void,
): Promise<{ server: TcpLinkServer; links: TcpLink[] }> {
  const links: TcpLink[] = [];
  const server = await listenTcpLinks({
    nicId,
    key: LINK_KEY,
    port: 0,
    host: HOST,
    log: () => {},
    onLink: (l) => {
      links.push(l);
      l.onFrame((f) => onFrame(f, l));
    },
  });
  return { server, links };
}

/**
 * The host's handle on an emulated NIC: starts the NIC thread (nic-worker.ts), creates
 * control channels for drivers (the driver domain's backend, or a native process), reads the
 * NIC's counters straight from shared memory, attaches links, and stops it.
 */
import type { EventLoopUtilization } from "node:perf_hooks";
import { MessageChannel, Worker } from "node:worker_threads";
import { bundledScript } from "../xen/bundles.js";
import type { NicDriverEndpoint } from "./control.js";
import { allocNicCounters, type NicCounterSnapshot, readNicCounters } from "./counters.js";
import type { LinkSpec } from "./link.js";
import { checkNicOptions } from "./nic.js";
import type { NicHostMessage, NicWorkerData, NicWorkerMessage } from "./nic-worker.js";
import { DetailedError } from "./status.js";
import type { TcpLinkLogFields } from "./tcp-link.js";

export interface NicDeviceOptions {
  nicId: number;
  /** Endpoint contexts (default 32, at most 256). */
  maxEndpoints?: number;
  /** TPT entries (default and at most 65536). */
  maxRegions?: number;
  /** Peer NIC ids linked or kept, in all and per remote address (link-bound.ts; defaults 1024 and 32). */
  maxLinks?: number;
  maxLinksPerAddress?: number;
}

/** The NIC thread's script: its bundle when fresh (xen/bundles.ts). */
const WORKER_MODULES = new URL("./nic-worker.js", import.meta.url);

export class NicDevice {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private exited = false;
  private markGone!: () => void;
  /** Resolves when the NIC thread has ended (stopped, or died). */
  readonly gone = new Promise<void>((r) => {
    this.markGone = r;
  });
  private logCb: ((message: string, fields: TcpLinkLogFields) => void) | undefined;

  private constructor(
    readonly nicId: number,
    readonly maxEndpoints: number,
    private readonly worker: Worker,
    private readonly countersBuffer: SharedArrayBuffer,
  ) {
    worker.on("message", (m: NicWorkerMessage) => {
      if (m.type === "log") {
        if (this.logCb) this.logCb(m.message, m.fields ?? {});
        else console.warn(m.message);
        return;
      }
      if (m.type !== "reply") return;
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve();
      else p.reject(m.detail === undefined ? new Error(m.message) : new DetailedError(m.message, m.detail));
    });
    worker.on("exit", () => {
      this.exited = true;
      for (const p of this.pending.values()) p.reject(new Error(`NIC ${nicId} stopped`));
      this.pending.clear();
      this.markGone();
    });
  }

  /** Spawns the NIC thread; resolves when it serves. Rejects with a clear error on bad options. */
  static async start(options: NicDeviceOptions): Promise<NicDevice> {
    const { nic, ready } = NicDevice.launch(options);
    await ready;
    return nic;
  }

  /**
   * Spawns the NIC thread and hands back its handle at once, with `ready`: resolves when the
   * thread serves, rejects (the thread stopped) with a clear error if it could not start. What
   * is asked of it before then (a driver endpoint, its first control calls) waits in its
   * queue, so a host boots its driver domain meanwhile. Throws on bad options.
   */
  static launch(options: NicDeviceOptions): { nic: NicDevice; ready: Promise<void> } {
    const { nicId, maxEndpoints, maxRegions, maxLinks, maxLinksPerAddress } = checkNicOptions(options);
    const counters = allocNicCounters(maxEndpoints);
    const workerData: NicWorkerData = {
      nicId,
      maxEndpoints,
      maxRegions,
      maxLinks,
      maxLinksPerAddress,
      counters,
    };
    const worker = new Worker(bundledScript("nic-worker", WORKER_MODULES), {
      workerData,
      name: `nic${nicId}`,
    });
    const ready = new Promise<void>((resolve, reject) => {
      const done = (e?: Error) => {
        worker.off("error", onError);
        worker.off("exit", onExit);
        worker.off("message", onMessage);
        if (e === undefined) return resolve();
        void worker.terminate();
        reject(e);
      };
      const onError = (e: Error) => done(new Error(`NIC ${nicId} failed to start: ${e.message}`));
      const onExit = (code: number) => done(new Error(`NIC ${nicId} exited during start (code ${code})`));
      // Log lines may come first (the handle prints them); the first other message says ready.
      const onMessage = (m: NicWorkerMessage) => {
        if (m.type === "log") return;
        done(m.type === "ready" ? undefined : new Error(`NIC ${nicId}: unexpected first message ${m.type}`));
      };
      worker.on("error", onError);
      worker.on("exit", onExit);
      worker.on("message", onMessage);
    });
    return { nic: new NicDevice(nicId, maxEndpoints, worker, counters), ready };
  }

  /**
   * A new control channel. Hand `port` (in a transferList) and `replyWord` to the thread that
   * drives the NIC; it builds `new SyncCallClient<NicControlRequest>(port, replyWord)`.
   */
  driverEndpoint(): NicDriverEndpoint {
    if (this.exited) throw new Error(`NIC ${this.nicId} is stopped`);
    const { port1, port2 } = new MessageChannel();
    const replyWord = new SharedArrayBuffer(8);
    const msg: NicHostMessage = { type: "driver", port: port2, replyWord };
    this.worker.postMessage(msg, [port2]);
    return { port: port1, replyWord };
  }

  /** Where the NIC's link events go (default: console.warn), e.g. a host's structured logger. */
  onLog(cb: (message: string, fields: TcpLinkLogFields) => void): void {
    this.logCb = cb;
  }

  /** Every counter, read from shared memory now (the NIC is not asked). */
  counters(): NicCounterSnapshot {
    return readNicCounters(this.countersBuffer);
  }

  /** How busy the NIC thread's event loop was (it idles there while it sleeps). */
  eventLoopUtilization(since?: EventLoopUtilization): EventLoopUtilization {
    return this.worker.performance.eventLoopUtilization(since);
  }

  /**
   * Attaches a link (see link.ts). A loopback link makes this NIC's own SENDs travel as frames.
   * A "tcp" link resolves once connected and from then on reconnects by itself whenever its
   * connection drops, until detachLink(peerNic) or, a while without a link, it gives the peer
   * up (tcp-attach.ts RECONNECT_GIVE_UP_MS, the spec's `reconnect`).
   */
  attachLink(spec: LinkSpec): Promise<void> {
    return this.request({ type: "attach_link", id: this.nextId++, spec });
  }

  detachLink(peerNic: number): Promise<void> {
    return this.request({ type: "detach_link", id: this.nextId++, peerNic });
  }

  /**
   * Starts stamping traced messages into `ring` (a TraceBuffer's memory: trace-ring.ts), or
   * stops (undefined). Resolves once the NIC thread has it.
   */
  setTrace(ring: SharedArrayBuffer | undefined): Promise<void> {
    return this.request({ type: "trace", id: this.nextId++, ring });
  }

  private request(msg: Extract<NicHostMessage, { id: number }>): Promise<void> {
    if (this.exited) return Promise.reject(new Error(`NIC ${this.nicId} is stopped`));
    return new Promise((resolve, reject) => {
      this.pending.set(msg.id, { resolve, reject });
      this.worker.postMessage(msg);
    });
  }

  /**
   * Terminates the NIC thread at once, as a crash or a pulled plug would: no goodbye on its
   * links, so peers see the connection drop and keep trying to reconnect.
   */
  async kill(): Promise<void> {
    if (this.exited) return;
    await this.worker.terminate();
  }

  /** Stops the NIC: its links say goodbye, then the thread ends; its endpoints, regions and links go with it. */
  async stop(): Promise<void> {
    if (this.exited) return;
    // A clean stop first (links send their goodbye, so peers do not keep reconnecting), bounded.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.request({ type: "shutdown", id: this.nextId++ }).catch(() => undefined),
      new Promise<void>((r) => {
        timer = setTimeout(r, 500);
      }),
    ]);
    clearTimeout(timer);
    await this.worker.terminate();
  }
}

/**
 * A domain as the host sees it (Domain: state, exit, messages, counters), what createDomain
 * takes (DomainConfig, checked by checkConfig) and what a guest's worker is started with.
 * Its own file because it is the hypervisor's public face: host code holds Domain objects,
 * never the records behind them (domain-record.ts).
 */

import { EventEmitter } from "node:events";
import { pathToFileURL } from "node:url";
import type { MessagePort, TransferListItem, Worker } from "node:worker_threads";
import type { DomId } from "../abi.js";
import { type CounterSnapshot, readCounters } from "../counters.js";
import { DEFAULT_GRANT_ENTRIES } from "../grant-table.js";
import type { GuestImage } from "../guest/loader.js";
import type { HostLinkCredit } from "../host-link.js";
import type { Hypervisor } from "../hypervisor.js";

export type DomainState = "booting" | "running" | "shutdown" | "crashed" | "destroyed";

/** What a guest may hold in ArrayBuffers and typed arrays outside its heap by default, MiB. */
export const DEFAULT_MAX_BUFFER_MB = 2048;

export interface DomainConfig {
  /**
   * The guest program: a path or file URL of a TypeScript or JavaScript module whose default
   * export is `main(guest)`. It runs sandboxed (guest/sandbox.ts), reaching only the guest
   * object and the library, except in the privileged domain (the host's own driver domain).
   */
  module: string | URL;
  name?: string;
  /** Guest-physical memory in 4 KiB pages (default 256 = 1 MiB). */
  pages?: number;
  /** V8 old-generation heap limit of the domain's isolate, in MiB (default 256). */
  maxHeapMb?: number;
  /**
   * ArrayBuffers and typed arrays a guest may hold outside that heap, in MiB (default
   * DEFAULT_MAX_BUFFER_MB): the hypervisor meters them (buffer-watch.ts) and stops a guest that
   * holds more. Its RAM (`pages`) does not count. Not metered in the privileged domain.
   */
  maxBufferMb?: number;
  /** The privileged driver domain: gets domid 0 and may map and copy any guest's granted frames in place. */
  privileged?: boolean;
  /**
   * The privileged domain only: the worker script to start instead of guest/runtime.ts, one
   * that runs the domain thread with `module`'s program compiled in (runDomainThread(main):
   * the host's driver domain as one bundle, xen/bundles.ts). `module` still names it.
   */
  script?: URL;
  /** Passed to the guest's main as `guest.args` (structured-cloned). */
  args?: unknown;
  grantEntries?: number;
  /** Extra shared pages the domain may register for mapping by other domains (default: as many as RAM). */
  maxSharedPages?: number;
  /**
   * Objects in `args` to transfer rather than clone (MessagePorts handed to the privileged
   * domain). A sandboxed guest takes none: it is handed data, never a Node object.
   */
  transfer?: TransferListItem[];
  /**
   * A native process rather than a VM: a thread of the driver domain's OS, with its own
   * memory and no Xen devices (the reference point the bypass path is measured against).
   */
  native?: boolean;
  /** "pipe": the guest's stdout/stderr become the streams `domain.worker.stdout`/`.stderr` (a launcher reads them line by line); "inherit" (default) goes to the host's own. */
  output?: "inherit" | "pipe";
  /** What the guest program sees as `process.env` (default: nothing; a guest has no host environment). */
  env?: Record<string, string>;
  /**
   * Created paused (`xl create -p`): the program is loaded, and its main runs once
   * `domain.unpause()` is called. The toolstack (Host.startGuest) makes the domain's devices in
   * between, so no program sees (or writes into) its device directories before they exist.
   */
  paused?: boolean;
}

export interface DomainExit {
  state: "shutdown" | "crashed" | "destroyed";
  result?: unknown;
  error?: Error;
}

/** What the worker is started with (guest/runtime.ts reads it). */
export interface GuestBootData {
  domid: DomId;
  name: string;
  privileged: boolean;
  native: boolean;
  ram: SharedArrayBuffer;
  nrPages: number;
  grantTable: SharedArrayBuffer;
  counters: SharedArrayBuffer;
  replyWord: SharedArrayBuffer;
  /** The credit window on what the guest sends its host (host-link.ts). */
  hostLink: SharedArrayBuffer;
  /** The credit on its XenStore watch events (xenstore/port-credit.ts), written by the guest's runtime. */
  xsCredit: SharedArrayBuffer;
  hcPort: MessagePort;
  asyncPort: MessagePort;
  moduleUrl: string;
  /** The program compiled for the sandbox (guest/loader.ts); absent for the privileged domain, which runs unsandboxed. */
  image?: GuestImage;
  /** V8's code cache of SES's script for the sandbox's lockdown (guest/ses-cache.ts): this guest's own copy. */
  sesCache?: Uint8Array;
  /** The sandboxed program's `process.env` (DomainConfig.env). */
  env?: Record<string, string>;
  args: unknown;
  /** DomainConfig.paused: main waits for the hypervisor's "unpause". */
  paused: boolean;
}

/** Control messages from the guest runtime to the hypervisor, on the worker's parentPort. */
export type GuestControlMessage =
  | { type: "running" }
  | { type: "exit"; result: unknown }
  | { type: "crash"; error: { name: string; message: string; stack?: string } }
  /** `cost`: what the message counts against the host link's window (host-link.ts). */
  | { type: "user"; data: unknown; cost: number }
  /** What the guest wrote to its stdout/stderr (guest/runtime.ts routeStdio). */
  | { type: "output"; stream: "stdout" | "stderr"; text: string; cost: number };

/** A running (or stopped) domain, as the host sees it. */
export class Domain extends EventEmitter {
  state: DomainState = "booting";
  error?: Error;
  result?: unknown;
  readonly exited: Promise<DomainExit>;
  private resolveExit!: (e: DomainExit) => void;

  constructor(
    readonly domid: DomId,
    readonly name: string,
    readonly privileged: boolean,
    readonly pages: number,
    private readonly hv: Hypervisor,
    readonly worker: Worker,
    private readonly counterBuffer: SharedArrayBuffer,
    private readonly hypCounters: ArrayBuffer,
    private readonly credit: HostLinkCredit,
    readonly native = false,
  ) {
    super();
    this.exited = new Promise((r) => {
      this.resolveExit = r;
    });
    this.on("newListener", (event) => {
      if (event === "message" && this.early.length > 0) {
        this.flushing = false;
        queueMicrotask(() => this.scheduleFlush());
      }
    });
  }

  /** Counters of hypervisor work done by or for this domain (the hypervisor's part from its private block). */
  counters(): CounterSnapshot {
    return readCounters(this.counterBuffer, this.hypCounters);
  }

  private readonly early: { data: unknown; cost: number }[] = [];
  private flushing = false;

  /**
   * @internal Emits a guest's message, or keeps it until someone listens: a message sent
   * while the host was still setting the domain up is not lost. A message is taken in (its
   * cost given back to the guest's window) when a listener got it, so what waits here for a
   * listener is bounded by the window: the guest queues the rest in its own memory.
   */
  deliver(data: unknown, cost: number): void {
    if (this.listenerCount("message") > 0 && this.early.length === 0) {
      this.credit.take(cost);
      this.emit("message", data);
    } else {
      this.early.push({ data, cost });
      this.scheduleFlush();
    }
  }

  private scheduleFlush(): void {
    if (this.flushing || this.listenerCount("message") === 0) return;
    this.flushing = true;
    queueMicrotask(() => {
      this.flushing = false;
      while (this.early.length > 0 && this.listenerCount("message") > 0) {
        const m = this.early.shift()!;
        this.credit.take(m.cost);
        this.emit("message", m.data);
      }
    });
  }

  /** Lets a domain created paused run its main (once; nothing for one that was not paused or has ended). */
  unpause(): void {
    if (this.state === "running" || this.state === "booting") this.worker.postMessage({ type: "unpause" });
  }

  /** Sends a message to the guest (guest.onMessage). */
  send(data: unknown): void {
    if (this.state === "running" || this.state === "booting") this.worker.postMessage({ type: "host", data });
  }

  /** Stops the domain if it still runs and releases its memory, grants, channels and XenStore entries. */
  async destroy(): Promise<void> {
    await this.hv.destroyDomainObject(this);
  }

  /**
   * @internal The domain's thread is gone: nothing more can come from it, so the listeners go.
   * A host keeps its last stopped domains for lookups (hypervisor.ts KEEP_STOPPED_DOMAINS), and
   * a listener holds what its caller closed over (a launcher session: its job, its rows), ~20 KB
   * each, for as long as the domain is kept. Messages no listener took yet stay for a late one.
   */
  threadEnded(): void {
    for (const event of ["message", "running", "exit"]) this.removeAllListeners(event);
  }

  /** @internal */
  settle(state: "shutdown" | "crashed" | "destroyed", detail: { result?: unknown; error?: Error }): boolean {
    if (this.state === "shutdown" || this.state === "crashed" || this.state === "destroyed") {
      if (state === "destroyed") this.state = "destroyed";
      return false;
    }
    this.state = state;
    this.error = detail.error;
    this.result = detail.result;
    this.resolveExit({ state, ...detail });
    this.emit("exit", { state, ...detail });
    return true;
  }
}

export function toModuleUrl(module: string | URL): string {
  if (module instanceof URL) return module.href;
  if (typeof module !== "string" || module.length === 0)
    throw new TypeError("createDomain: `module` must be a path or URL of the guest program");
  if (/^(file|data):/.test(module)) return module;
  return pathToFileURL(module).href;
}

/** A guest's environment: string names and values only (anything else is left out). */
export function envOf(env: unknown): Record<string, string> | undefined {
  if (env === null || typeof env !== "object") return undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (typeof v === "string") out[k] = v;
  return out;
}

/** Validates a createDomain config; throws a TypeError/RangeError naming the bad field. */
export function checkConfig(c: DomainConfig): Required<
  Omit<DomainConfig, "args" | "name" | "output" | "env" | "script">
> & {
  name?: string;
  script?: URL;
  args: unknown;
  pipe: boolean;
} {
  if (c === null || typeof c !== "object") throw new TypeError("createDomain: config must be an object");
  const int = (field: string, v: unknown, def: number, min: number, max: number): number => {
    if (v === undefined) return def;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max)
      throw new RangeError(
        `createDomain: \`${field}\` must be an integer in ${min}..${max}, got ${String(v)}`,
      );
    return v;
  };
  if (c.name !== undefined && (typeof c.name !== "string" || !/^[A-Za-z0-9_.-]{1,64}$/.test(c.name)))
    throw new TypeError(
      `createDomain: \`name\` must be 1-64 characters of [A-Za-z0-9_.-], got ${JSON.stringify(c.name)}`,
    );
  const pages = int("pages", c.pages, 256, 1, 1 << 20);
  if (c.script !== undefined && (c.privileged !== true || !(c.script instanceof URL)))
    throw new TypeError(
      "createDomain: `script` (a worker script with the program compiled in) is for the privileged domain only, as a URL; a guest's program runs from its sandbox image",
    );
  return {
    module: c.module,
    name: c.name,
    script: c.script,
    pages,
    maxHeapMb: int("maxHeapMb", c.maxHeapMb, 256, 16, 16384),
    maxBufferMb: int("maxBufferMb", c.maxBufferMb, DEFAULT_MAX_BUFFER_MB, 16, 1 << 20),
    privileged: c.privileged === true,
    args: c.args,
    // Enough for every page to be granted once (memory registration grants page by page).
    grantEntries: int(
      "grantEntries",
      c.grantEntries,
      Math.max(DEFAULT_GRANT_ENTRIES, pages + 1024),
      16,
      1 << 21,
    ),
    maxSharedPages: int("maxSharedPages", c.maxSharedPages, Math.max(pages, 1024), 0, 1 << 20),
    transfer: Array.isArray(c.transfer) ? c.transfer : [],
    native: c.native === true,
    paused: c.paused === true,
    pipe: c.output === "pipe",
  };
}

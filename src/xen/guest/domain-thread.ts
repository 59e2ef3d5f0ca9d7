/**
 * The life of a domain's worker thread: boots the guest's kernel side (memory, grant table,
 * event channels, XenStore, hypercall channel), loads the guest program, runs its
 * `main(guest)` and reports how it ended. `runtime.ts` is the worker script of every domain;
 * a privileged domain whose program is compiled into its own script (the host's driver
 * domain: host/driver-domain-thread.ts, bundled by scripts/bundle.mjs) calls
 * runDomainThread with that program instead.
 *
 * A guest's program runs in the sandbox (sandbox.ts) from the image the hypervisor compiled
 * for it (loader.ts); only the privileged domain (the host's own driver domain, trusted code
 * that holds the NIC's port) is imported as is. This file is trusted code: the program never
 * holds `workerData`, the ports or anything else defined here.
 */
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { cloneCost, HostLinkSender, MESSAGE_BASE_UNITS, MESSAGE_VALUES_MAX } from "../host-link.js";
import type { GuestBootData, GuestControlMessage } from "../hypervisor.js";
import { prepareReclaim } from "../reclaim.js";
import { Guest } from "./guest.js";
import { programMain } from "./reach.js";
import { type BundledLibrary, type GuestMain, guestCrash, loadSandboxedProgram } from "./sandbox.js";

export type { GuestMain };

const TS_MODULE = /\.(c|m)?tsx?$/;

/** The privileged domain's program: trusted, loaded by Node (TypeScript through tsx's CommonJS hook). */
async function loadTrustedProgram(url: string): Promise<GuestMain> {
  let mod: Record<string, unknown>;
  if (url.startsWith("file:") && TS_MODULE.test(url)) {
    // Node 20 cannot install ESM loader hooks inside a worker; tsx's CommonJS hook works there.
    const { register } = await import("tsx/cjs/api");
    register();
    const require = createRequire(import.meta.url);
    mod = require(fileURLToPath(url)) as Record<string, unknown>;
  } else mod = (await import(url)) as Record<string, unknown>;
  return programMain<GuestMain>(url, mod);
}

/**
 * The host stops the worker on "exit": let what the guest printed and sent reach the host
 * first (within the window, as the host takes it in; what is still queued after a while goes
 * anyway — a last burst bounded by this domain's heap, not a stream).
 */
async function flushOutput(link: HostLinkSender): Promise<void> {
  await link.drained(FLUSH_MS);
  link.flushAll();
}
const FLUSH_MS = 1000;

function describe(e: unknown): { name: string; message: string; stack?: string } {
  try {
    if (e instanceof Error) {
      const said = {
        name: String(e.name),
        message: String(e.message),
        stack: String(e.stack) + causeLines(e),
      };
      // A sandboxed guest's crash as its user reads it: the stack through their own files.
      return cutCrash(guestCrash(e, said) ?? said);
    }
    return cutCrash({ name: "Error", message: `guest threw a non-Error value: ${String(e)}` });
  } catch {
    return { name: "Error", message: "guest threw a value that cannot be described" };
  }
}

/**
 * Characters of a crash's name, message and stack that go to the host, at most: its thread
 * takes them in whole (a guest's 400 Mi-character stack landed there as 400 MB).
 */
const CRASH_TEXT_CHARS = 64 * 1024;

function cutCrash(d: { name: string; message: string; stack?: string }): {
  name: string;
  message: string;
  stack?: string;
} {
  const cut = (t: string) => (t.length > CRASH_TEXT_CHARS ? `${t.slice(0, CRASH_TEXT_CHARS)} …` : t);
  return d.stack === undefined
    ? { name: cut(d.name), message: cut(d.message) }
    : { name: cut(d.name), message: cut(d.message), stack: cut(d.stack) };
}

/** Causes shown at most under a crash's stack (a longer chain ends in "…"), and characters of each as printed. */
const MAX_CAUSES = 8;
const CAUSE_CHARS = 8192;

/**
 * `e`'s causes under its stack, as Node prints them: `[cause]: ` and the cause's stack, each
 * cause indented two spaces more than the error it caused (a value not an Error as JSON).
 */
function causeLines(e: Error): string {
  let out = "";
  let at: unknown = e;
  const seen = new Set<unknown>([e]);
  for (let depth = 1; ; depth++) {
    const pad = "  ".repeat(depth);
    try {
      if (!(at instanceof Error) || !("cause" in at) || at.cause === undefined) return out;
      const c: unknown = at.cause;
      if (depth > MAX_CAUSES) return `${out}\n${pad}[cause]: …`;
      if (seen.has(c)) return `${out}\n${pad}[cause]: [Circular]`;
      seen.add(c);
      const text = c instanceof Error ? String(c.stack ?? `${c.name}: ${c.message}`) : valueText(c);
      out += `\n${pad}[cause]: ${text.slice(0, CAUSE_CHARS).split("\n").join(`\n${pad}`)}`.slice(
        0,
        CAUSE_CHARS,
      );
      at = c;
    } catch {
      // A getter or a proxy that throws: the error itself is still reported.
      return `${out}\n${pad}[cause]: (cannot be shown)`;
    }
  }
}

/** A thrown value that is not an Error, in a line. */
function valueText(v: unknown): string {
  try {
    return (JSON.stringify(v) ?? String(v)).slice(0, 1024);
  } catch {
    return "(a value that cannot be shown)";
  }
}

/** A native process's link to the driver domain's native service, taken out of its args (the program never sees the port). */
function takeNativeLink(boot: GuestBootData): {
  args: unknown;
  native?: { port: MessagePort; replyWord: SharedArrayBuffer };
} {
  const args = boot.args as { myrixen?: { port: MessagePort; replyWord: SharedArrayBuffer } } | undefined;
  if (!boot.native || !args?.myrixen) return { args };
  const { myrixen, ...rest } = args;
  return { args: rest, native: myrixen };
}

/*BODY*/
/**
 * A `guest.send` message as it goes: a structured clone of the guest's data (plain data: a
 * getter ran once, here, so what is counted is what is sent; what cannot be cloned throws
 * here, in the guest's send()), and its cost, counted on that clone.
 */
function userMessage(data: unknown): { data: unknown; cost: number } {
  const copy = structuredClone(data);
  const { bytes, values } = cloneCost(copy);
  if (values > MESSAGE_VALUES_MAX)
    throw new RangeError(
      `guest.send: this message holds ${values} values; at most ${MESSAGE_VALUES_MAX} go in one (send numbers as a typed array, or the data in parts)`,
    );
  return { data: copy, cost: MESSAGE_BASE_UNITS + bytes };
}

/**
 * What main() returned, as it goes to the host: a structured clone (a getter ran once, here),
 * held to guest.send's bound on values, since the host's thread decodes it whole as it does a
 * message (a returned array of a million small objects held it for a second). Bytes in bulk
 * go as they are: a typed array or a string is one value.
 */
function exitResult(result: unknown): unknown {
  let copy: unknown;
  try {
    copy = structuredClone(result);
  } catch (e) {
    throw new TypeError(`main() returned a value the host cannot receive (${(e as Error).message})`);
  }
  const { values } = cloneCost(copy);
  if (values > MESSAGE_VALUES_MAX)
    throw new RangeError(
      `main() returned a value of ${values} values; at most ${MESSAGE_VALUES_MAX} go to the host (return numbers as a typed array, or send the data in parts with guest.send)`,
    );
  return copy;
}

/** Characters of printed text per output message at most. */
const OUTPUT_PIECE_CHARS = 64 * 1024;

const isHighSurrogate = (c: number) => c >= 0xd800 && c <= 0xdbff;

/**
 * The worker's stdout/stderr as control messages, each posted when written. Node's own worker
 * stdio posts one chunk and holds the rest until the host acknowledges it on the worker's event
 * loop, so a guest that prints three lines and then blocks in a synchronous wait would show one
 * (and lose two if it is then stopped). A posted message is queued at once, and it precedes the
 * domain's exit or crash message on the same port, so no line is held back or lost.
 */
function routeStdio(stream: NodeJS.WriteStream, name: "stdout" | "stderr", link: HostLinkSender): void {
  const decoder = new TextDecoder();
  stream.write = ((chunk: unknown, encoding?: unknown, cb?: unknown) => {
    const done = typeof encoding === "function" ? encoding : cb;
    const text =
      typeof chunk === "string"
        ? chunk
        : chunk instanceof Uint8Array
          ? decoder.decode(chunk, { stream: true })
          : String(chunk);
    // In pieces, each within the credit window: one huge line (a guest printing a 500 MB
    // string) then waits here, in the guest's memory, instead of landing in the host at once.
    for (let at = 0; at < text.length; ) {
      let end = Math.min(text.length, at + OUTPUT_PIECE_CHARS);
      // Never between the halves of a surrogate pair: the host encodes each piece as UTF-8.
      if (end < text.length && end - at > 1 && isHighSurrogate(text.charCodeAt(end - 1))) end--;
      const piece = at === 0 && end === text.length ? text : text.slice(at, end);
      const cost = MESSAGE_BASE_UNITS + piece.length;
      link.send({ type: "output", stream: name, text: piece, cost } satisfies GuestControlMessage, cost);
      at = end;
    }
    if (typeof done === "function") queueMicrotask(() => (done as () => void)());
    return true;
  }) as NodeJS.WriteStream["write"];
}
/**
 * Runs this worker as the domain its boot data describes, to the end of its main. `compiledIn`:
 * the privileged domain's program, already loaded with this script (its `moduleUrl` then only
 * names it); every other domain's program is loaded from its image or module. `bundled`: the
 * library modules this script holds (the guest bundle), for a guest's program to import.
 */
export async function runDomainThread(compiledIn?: GuestMain, bundled?: BundledLibrary): Promise<void> {
  const port = parentPort!;
  const boot = workerData as GuestBootData;
  const post = (m: GuestControlMessage) => port.postMessage(m);
  /** What the guest prints and sends goes through the host link's window (host-link.ts). */
  const link = new HostLinkSender(boot.hostLink, (m) => port.postMessage(m));
  routeStdio(process.stdout, "stdout", link);
  routeStdio(process.stderr, "stderr", link);
  const { args, native } = takeNativeLink(boot);
  // The privileged domain outlives guests and holds their memory: it collects after each
  // teardown (reclaim.ts). Decided here, from the hypervisor's boot data, before any program.
  if (boot.privileged) prepareReclaim();
  const guest = new Guest(
    { ...boot, args },
    {
      toHost: (m) => {
        const { data, cost } = userMessage((m as { data?: unknown }).data);
        link.send({ ...(m as object), data, cost }, cost);
      },
      native,
    },
  );
  /** A domain created paused runs its main once the hypervisor says so (Domain.unpause). */
  let unpause: () => void = () => {};
  const unpaused = boot.paused ? new Promise<void>((r) => (unpause = r)) : undefined;
  port.on("message", (m: { type: string; data?: unknown; domid?: number }) => {
    if (m?.type === "host") guest.deliverHostMessage(m.data);
    else if (m?.type === "unpause") unpause();
    // A domain died: the privileged domain's view of it goes. It gave back a segment: the view
    // lets go of the segments' buffers (it already stopped resolving it: guest.ts ForeignView).
    else if (m?.type === "domain-gone" && typeof m.domid === "number") guest.dropForeign(m.domid);
    else if (m?.type === "foreign-stale" && typeof m.domid === "number") guest.forgetForeignSegments(m.domid);
  });

  // What the program throws where nothing catches it (a timer, a rejection no one handles)
  // ends the domain here, described by this runtime: left to Node, the value is serialized
  // with util.inspect and its custom inspect hooks on, which hands a guest Node's real
  // inspect (withheld by the sandbox), and reaches the hypervisor in whatever shape the guest
  // gave it.
  const crashed = (e: unknown) => {
    void flushOutput(link).finally(() => {
      post({ type: "crash", error: describe(e) });
      process.exit(1);
    });
  };
  process.on("uncaughtException", crashed);
  process.on("unhandledRejection", crashed);

  try {
    // The code cache is read once, at lockdown: no need to keep the guest's copy after it.
    const sesCache = boot.sesCache;
    boot.sesCache = undefined;
    const main = boot.image
      ? await loadSandboxedProgram(boot.image, (code) => process.exit(code), boot.env, sesCache, bundled)
      : boot.privileged && compiledIn
        ? compiledIn
        : await loadTrustedProgram(boot.moduleUrl);
    post({ type: "running" });
    guest.holdEventLoop(true);
    if (unpaused !== undefined) await unpaused;
    const result = await main(guest);
    await flushOutput(link);
    guest.holdEventLoop(false);
    post({ type: "exit", result: exitResult(result) });
  } catch (e) {
    await flushOutput(link);
    post({ type: "crash", error: describe(e) });
  }
}

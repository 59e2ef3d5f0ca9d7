/**
 * What a guest program may reach, in one place for the loader (host side) and the sandbox
 * (worker side): which library modules, which of the package's exports, and the wording of
 * every refusal.
 */
import { builtinModules } from "node:module";

export const NOT_IN_GUEST =
  "is not available in a guest: a guest reaches the host only through the guest object";

/**
 * The library modules a guest may import (paths under src/, without extension): the
 * guest-side layers (MX, MPI, the front ends, the hypervisor's guest interface) and pure
 * helpers. Everything else under src/ is host-side code that holds Node's powers (the
 * hypervisor, the NIC, backends, the launcher, the CLI, benchmarks' file output).
 */
const GUEST_LIBRARY = new Set([
  "index",
  "guest-api",
  "xen/abi",
  "xen/counters",
  "xen/event-channel",
  "xen/grant-table",
  "xen/hypercall",
  "xen/memory",
  "xen/ring",
  "xen/wait",
  "xen/xenbus",
  "xen/xenbus-sync",
  "xen/xenbus/frontend",
  "xen/xenbus/state",
  "xen/xenstore",
  "xen/xenstore/client",
  "xen/xenstore/errors",
  "xen/xenstore/paths",
  "xen/xenstore/wire",
  "xen/io/netif",
  "xen/units",
  "xen/io/mxoe",
  "xen/guest/guest",
  "mx/*",
  "mpi/*",
  "myrixen/front",
  "myrixen/protocol",
  "netfront/netfront",
  "nic/status",
  "nic/window",
  "cluster/protocol",
  "programs/rows",
  "myrixen/driver-abi",
  "myrixen/channel-abi",
  "nic/clock",
]);

export function guestMayImport(libraryModule: string): boolean {
  const dir = libraryModule.slice(0, libraryModule.lastIndexOf("/") + 1);
  return GUEST_LIBRARY.has(libraryModule) || (dir !== "" && GUEST_LIBRARY.has(`${dir}*`));
}

/** Names the package's index exports that are host-side: a guest that uses one gets a clear error. */
export const HOST_SIDE_EXPORTS: readonly string[] = ["Host", "Job", "Hypervisor", "Domain"];

const BUILTINS = new Set(builtinModules);

/** `node:NAME` if `spec` names a Node built-in module (any `node:` name does), else undefined. */
export function builtinName(spec: string): string | undefined {
  const bare = spec.startsWith("node:") ? spec.slice(5) : spec;
  return spec.startsWith("node:") || BUILTINS.has(bare) ? `node:${bare}` : undefined;
}

/**
 * A program's message when its module exports no function main(guest): `url` names it (the
 * launcher reads the message, NO_MAIN, as a usage mistake and says it in one line).
 */
export const NO_MAIN = /^guest program (\S+) must export a function `main\(guest\)` \([^)]*\); (.*)$/;

/** The program's main(guest): its default export, else its export named main, if a function. */
export function programMain<F>(url: string, exports: { default?: unknown; main?: unknown }): F {
  const { default: first, main } = exports;
  if (typeof first === "function") return first as F;
  if (typeof main === "function") return main as F;
  const what =
    first !== undefined
      ? `its default export is ${kind(first)}`
      : main !== undefined
        ? `its main is ${kind(main)}`
        : "it exports neither";
  throw new TypeError(
    `guest program ${url} must export a function \`main(guest)\` (as default export or named \`main\`); ${what}`,
  );
}

function kind(x: unknown): string {
  if (x === null) return "null";
  const t = typeof x;
  return `${/^[aeiou]/.test(t) ? "an" : "a"} ${t}`;
}

/**
 * Where a stack frame line ("at fn (LOCATION:L:C)" or "at LOCATION:L:C") points: the location
 * and its ":line:col", or undefined for a frame without one (native, <anonymous>). A location
 * may hold spaces and parentheses (a file URL keeps them: ".../p%20(copy)/lib.ts").
 */
export function frameLocation(frame: string): { where: string; at: string } | undefined {
  const m = /^at (?:async )?[^(]*\(((.*):\d+:\d+)\)$|^at (?:async )?((\S.*):\d+:\d+)$/.exec(frame.trim());
  if (!m) return undefined;
  return m[1] !== undefined ? { where: m[2], at: m[1] } : { where: m[4], at: m[3] };
}

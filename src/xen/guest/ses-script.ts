/**
 * SES (Hardened JavaScript) as a guest's worker loads it: the package's one-file build, a plain
 * script that installs `lockdown`, `repairIntrinsics`, `hardenIntrinsics`, `harden` and
 * `Compartment` on the realm's global, compiled with `node:vm` and, when the host has one, V8's
 * code cache of it (ses-cache.ts).
 *
 * `import("ses")` loaded the same shim as 60 ES modules: 50–80 ms of a guest's start on a
 * 2-core VM, a third of the whole start of a small guest. As one script it takes 30–40 ms, and
 * with the code cache 13–19 ms, and the repairs that follow run already compiled. Trusted code:
 * it runs before the guest's program is loaded, and the cache it takes comes from the host.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import vm from "node:vm";

/** The options every guest's realm is repaired with (sandbox.ts says why each). */
export const SES_REPAIR_OPTIONS = {
  errorTaming: "unsafe",
  stackFiltering: "verbose",
  consoleTaming: "unsafe",
  errorTrapping: "none",
  unhandledRejectionTrapping: "none",
  overrideTaming: "min",
  reporting: "none",
} as const;

/** The one-file build of the `ses` package this one depends on. */
export function sesScriptPath(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve("ses/package.json")), "dist", "ses.cjs");
}

/**
 * Runs SES's script in this realm. `cache`: V8's code cache of it (ignored by V8 if it does not
 * fit this source and this V8). Returns the script (its createCachedData() is the cache).
 */
export function runSesScript(cache?: Uint8Array): vm.Script {
  const path = sesScriptPath();
  const script = new vm.Script(readFileSync(path, "utf8"), { filename: path, cachedData: cache });
  script.runInThisContext();
  return script;
}

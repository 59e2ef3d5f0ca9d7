/**
 * An observer's snapshot (the dashboard, `myrixen top`) while ranks run must not keep those
 * ranks. The host's Inspector remembered each Domain it showed (host/inspect.ts `seen`, keyed
 * by the Domain) until the next snapshot, to report the ones that had gone: on a host observed
 * once, never, so every ended rank's Domain and what it returned stayed for good (4 ranks
 * returning 32 MiB: 128 MiB held). Now it keeps plain snapshots by its own serial, and lets go
 * of a domain's the moment the hypervisor forgets the domain.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { randomClusterKey } from "../src/cluster/auth.js";
import { Job } from "../src/cluster/job.js";
import { RemoteHost } from "../src/cluster/remote.js";
import { startLocalDaemon } from "./helpers/daemon.js";
import { until } from "./helpers/until.js";

const key = randomClusterKey();
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}.js`, import.meta.url));

test("one snapshot while ranks run keeps neither their domains nor what they returned once they are gone", async () => {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  setFlagsFromString("--no-expose-gc");
  const d = await startLocalDaemon(key);
  const hv = d.host.hypervisor;
  const guests = () => hv.domains().filter((x) => !x.privileged);
  const rh = await RemoteHost.connect({ host: "127.0.0.1", port: d.control.port }, { key });
  try {
    const run = new Job(rh, {
      n: 2,
      path: "bypass",
      program: fixture("rank-waits-returns"),
      argv: ["16"],
      output: () => {},
    }).run();
    await until(
      () => guests().filter((x) => x.state === "running").length === 2,
      "both ranks running",
      30_000,
    );
    // Counted as they are collected (a FinalizationRegistry: a WeakRef's deref would keep them
    // for the rest of the turn). Domains are touched in plain functions only: a suspended
    // async function may keep one in a register.
    let collected = 0;
    const registry = new FinalizationRegistry(() => collected++);
    const watch = () => {
      for (const x of guests()) registry.register(x, x.domid);
    };
    const release = () => {
      for (const x of guests()) x.send("return now");
    };
    watch();
    // An observer looks once while they run, and never again.
    const s = await d.snapshot();
    assert.equal(s.domains.filter((x) => x.kind === "guest" && x.state === "running").length, 2);
    release();
    const res = await run;
    assert.equal(res.exitCode, 0);
    assert.equal((res.ranks[0].result as unknown) ?? undefined, undefined, "16 MiB is not sent back");
    await until(() => guests().length === 0, "the ended ranks' domains destroyed", 30_000);

    // Nothing holds them now: the collector takes both domains, and the bytes they returned.
    for (let i = 0; i < 20 && collected < 2; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(
      collected,
      2,
      `${2 - collected} of the ranks' Domain objects (and what they returned) are still held`,
    );
    // And the inspector keeps a view only of what is listed (dom0).
    assert.equal(d.inspector.seenCount, hv.domains().length);

    // The next snapshot still shows them, as gone, with how they ended.
    const after = await d.snapshot();
    const gone = after.domains.filter((x) => x.kind === "guest");
    assert.equal(gone.length, 2);
    for (const g of gone) {
      assert.notEqual(g.endedAt, undefined);
      assert.match(g.state, /^(shutdown|destroyed)$/);
    }
  } finally {
    rh.close();
    await d.stop();
  }
});

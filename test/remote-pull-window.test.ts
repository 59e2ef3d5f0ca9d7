/**
 * A window of large rendezvous messages between two hosts: every pull of it completes. The
 * serving NIC's link rounds (nic/remote-pull.ts serveJobs) used to begin where the scan began,
 * so a source's first pull job took every round until it ended and its siblings got nothing;
 * the requesting NIC fails a pull without progress for WIRE_TIMEOUT_MS (1.5 s), so every pull
 * queued behind more than that of its siblings ended ENDPOINT_UNREACHABLE (28 of 32 here).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Job } from "../src/cluster/job.js";
import { type LocalCluster, startLocalCluster } from "../src/cluster/local-cluster.js";

// Every link read buffer given back is poisoned in the NIC threads started below (tcp-read-pool.ts):
// a frame kept past its turn would show here as garbage.
process.env.MYRIXEN_POISON_READS = "1";

const WINDOW = new URL("./fixtures/guests/big-window.js", import.meta.url);

let cluster: LocalCluster;
before(async () => {
  cluster = await startLocalCluster(2, 2);
});
after(() => cluster.stop());

test("32 rendezvous receives of 32 MiB from one peer on another host all complete", {
  timeout: 120_000,
}, async () => {
  const lines: string[] = [];
  const res = await new Job(cluster.targets, {
    n: 2,
    path: "bypass",
    program: WINDOW,
    argv: ["32", String(32 << 20)],
    pages: 16384,
    output: (rank, stream, line) => lines.push(`[${rank} ${stream}] ${line}`),
  }).run();
  const codes = res.ranks.map((r) => r.result as number[] | undefined);
  assert.equal(res.exitCode, 0, `${res.failed?.error?.message}\n${lines.join("\n")}`);
  assert.deepEqual(
    codes[0],
    new Array(32).fill(0),
    `rank 0's receives ended with MX status codes ${codes[0]?.join(",")} (9: ENDPOINT_UNREACHABLE)`,
  );
});

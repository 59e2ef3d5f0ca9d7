/**
 * A guest of one job cannot keep the jobs after it from starting by leaving the NIC's free
 * endpoint ids locked out for wrong keys.
 *
 * A connect lockout belongs to the requester's endpoint id (all a refusing NIC sees of it),
 * and a closed id keeps it. A guest holding one endpoint at a time opened each free id by
 * number, got it locked out (wrong keys to its own endpoint are wrong keys too) and closed it,
 * until every id was locked: the next job's ranks got locked ids and their first connect
 * failed MX_BUSY ("refuses connections from endpoint N for ... ms more"). Now an owner that
 * left TAINTED_IDS_PER_OWNER ids locked opens no other id by number (nic/endpoints.ts).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Job } from "../src/cluster/job.js";
import { Host } from "../src/host/host.js";
import { nextMessage } from "./helpers/messages.js";

const POISONER = new URL("./fixtures/guests/id-poisoner.js", import.meta.url);
const VICTIM = new URL("./fixtures/guests/mpi-neighbour.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

test("a guest that leaves the free endpoint ids locked out does not keep the next job from starting", async () => {
  const attacker = await host.startGuest({
    module: POISONER,
    // 6 s of doubling lockouts: each id locked for seconds at a time when the job starts.
    args: { key: 0xbad1d, maxEndpoints: host.limits.maxEndpoints, escalateMs: 6_000, holdMs: 60_000 },
  });
  const [ready] = (await nextMessage(attacker)) as [{ lockouts: number[]; wrongKeys: number }];
  const lines: string[] = [];
  const res = await new Job(host, {
    n: 2,
    path: "bypass",
    program: VICTIM,
    argv: ["1"],
    output: (rank, stream, line) => lines.push(`[${rank} ${stream}] ${line}`),
  }).run();
  await attacker.destroy();
  assert.equal(
    res.exitCode,
    0,
    `the honest job failed: ${res.failed?.error?.message}\n` +
      `(the attacker had made ${ready.wrongKeys} wrong keys; lockouts per id, ms: ${ready.lockouts.join(",")})\n${lines.join("\n")}`,
  );
});

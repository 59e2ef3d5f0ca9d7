/**
 * Parts of `myrixen host` on their own: listening (listen.ts), the inspection answers on a
 * real Host (host-inspection.ts), and a client's jobs (client-jobs.ts): refusing a bad start
 * request before any rank is made, and stopping the ranks of a launcher that went away while
 * they started. The whole daemon is tested end to end in cluster-auth and multihost.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { HostCapacity } from "../src/cluster/capacity.js";
import { ClientJobs, type JobClient } from "../src/cluster/client-jobs.js";
import { HostInspection } from "../src/cluster/host-inspection.js";
import { newJobKey } from "../src/cluster/job.js";
import { freePort, isWildcard, listen, plainAddress } from "../src/cluster/listen.js";
import { createLogger } from "../src/cluster/log.js";
import type { HostMessage, StartMessage } from "../src/cluster/wire.js";
import { Host } from "../src/host/host.js";
import { Inspector } from "../src/host/inspect.js";
import { until } from "./helpers/until.js";

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 77 });
});
after(() => host.stop());

const close = (s: net.Server) => new Promise<void>((r) => s.close(() => r()));

test("listen: the bound port, a port in use named with what to do; freePort gives a port that can be bound", async () => {
  const a = net.createServer();
  const port = await listen(a, { host: "127.0.0.1", port: 0 });
  assert.ok(port > 0);
  const b = net.createServer();
  await assert.rejects(listen(b, { host: "127.0.0.1", port }), {
    message: `127.0.0.1:${port} is already in use (another myrixen host? choose another port)`,
  });
  await close(a);
  const free = await freePort("127.0.0.1");
  const c = net.createServer();
  assert.equal(await listen(c, { host: "127.0.0.1", port: free }), free);
  await close(c);
});

test("addresses: wildcard listeners, IPv4-mapped peers written as plain IPv4", () => {
  for (const w of ["0.0.0.0", "::", ""]) assert.ok(isWildcard(w), w);
  assert.ok(!isWildcard("127.0.0.1"));
  assert.equal(plainAddress("::ffff:10.1.2.3"), "10.1.2.3");
  assert.equal(plainAddress("::1"), "::1");
  assert.equal(plainAddress(undefined), "");
});

test("inspection: clients asking together share one snapshot; XenStore cut to maxNodes; a missing path is an answer, not a throw", async () => {
  const answers = new HostInspection(host, new Inspector(host, { name: "parts" }));
  const [s1, s2] = await Promise.all([answers.snapshot(), answers.snapshot()]);
  assert.equal(s1, s2);
  const cut = answers.xenstore("/", 2);
  assert.ok(cut.ok);
  assert.ok(cut.nodes <= 2 && cut.truncated, JSON.stringify(cut));
  const missing = answers.xenstore("/no/such/node");
  assert.equal(missing.ok, false);
  assert.match(missing.ok ? "" : missing.error, /does not exist/);
  const st = answers.status(9, [5], []);
  assert.deepEqual(st, { type: "status", id: 9, nicId: 77, guests: 0, links: [5], jobs: [] });
});

test("a client's jobs: a start whose ranks do not fit the job is refused with a reply; unknown jobs are no-ops", async () => {
  const sent: HostMessage[] = [];
  const lines: string[] = [];
  const client: JobClient = {
    who: "launcher test (127.0.0.1:1)",
    isClosed: false,
    send: (m) => {
      sent.push(m);
      return true;
    },
  };
  const jobs = new ClientJobs(
    host,
    client,
    createLogger({ level: "debug", write: (l) => lines.push(l) }),
    new HostCapacity(8, 1024),
  );
  const start = (id: number, ranks: number[]): StartMessage => ({
    type: "start",
    id,
    job: `j${id}`,
    size: 2,
    path: "bypass",
    program: "nas-ep",
    argv: [],
    ranks,
    key: 1,
  });
  await jobs.start(start(1, [0, 2]));
  await jobs.start(start(2, [1, 1]));
  assert.deepEqual(
    sent.map((m) => m.type === "reply" && [m.id, m.ok, m.code, m.error]),
    [
      [1, false, "refused", "ranks [0,2] do not fit a job of size 2"],
      [2, false, "refused", "ranks [1,1] do not fit a job of size 2"],
    ],
  );
  assert.deepEqual(jobs.all(), []);
  assert.deepEqual(jobs.states("j1"), []);
  jobs.stop("j1");
  jobs.peers("j1", []);
  assert.ok(lines.some((l) => l.includes("peers for a job this client has not started here")));
  assert.deepEqual(jobs.status(), []);
});

test("a client's jobs: a launcher gone while its ranks start leaves none of them running", async () => {
  const sent: HostMessage[] = [];
  const client: JobClient = {
    who: "launcher test (127.0.0.1:2)",
    isClosed: false,
    send: (m) => {
      sent.push(m);
      return true;
    },
  };
  const capacity = new HostCapacity(8, 1024);
  const jobs = new ClientJobs(host, client, createLogger({ level: "error", write: () => {} }), capacity);
  const guests = () => host.hypervisor.domains().filter((d) => !d.privileged && d.state !== "destroyed");
  // Ranks that wait in MPI.init for a peer list: without a launcher, for ever.
  const started = jobs.start({
    type: "start",
    id: 1,
    job: "gone-while-starting",
    size: 3,
    path: "bypass",
    program: fileURLToPath(new URL("./fixtures/mh-mpi.js", import.meta.url)),
    argv: [],
    ranks: [0, 1, 2],
    key: newJobKey(),
    pages: 256,
  });
  // The connection closes while the first rank is still being made (no rank is live yet).
  jobs.launcherGone();
  await started;
  const reply = sent.find((m) => m.type === "reply");
  assert.ok(reply?.type === "reply" && !reply.ok, `the start was stopped: ${JSON.stringify(reply)}`);
  await until(() => guests().length === 0, "the job's ranks to go", 15_000);
  await until(() => jobs.all().length === 0, "the job to be forgotten", 15_000);
  // What the stopped start held of the host's capacity came back.
  assert.deepEqual(capacity.used, { ranks: 0, guestMb: 0 });
});

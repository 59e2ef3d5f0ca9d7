/**
 * Attaching a TCP link to a peer this NIC is linked to already (src/nic/tcp-attach.ts). A
 * NIC's listener replaces the link of a peer that connects again, so a second connection cost
 * the working one at the peer's end; the dialing end then refused its new one (EBUSY) and
 * closed it: neither end had a link, nothing reconnected, and whatever was in flight failed.
 * An operator's retry or two jobs starting at once (each sees no link yet, both dial) did it.
 * Now an attach through an address already linked is refused without dialing, one to an
 * address being dialed waits for that dial, and a connection that reaches a peer linked
 * another way is refused at both ends while the old link answers (a live link keeps its peer,
 * tcp-attach.ts), so both keep the old link.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Job } from "../src/cluster/job.js";
import { startLocalCluster } from "../src/cluster/local-cluster.js";
import { NicDevice } from "../src/nic/device.js";
import { fixture } from "./helpers/hosts.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { control, freePort, HOST } from "./helpers/nic-harness.js";
import { until } from "./helpers/until.js";

const nics: NicDevice[] = [];
after(async () => {
  await Promise.all(nics.map((n) => n.stop()));
});

async function twoNics(a: number, b: number): Promise<[NicDevice, NicDevice, number]> {
  const [x, y] = await Promise.all([NicDevice.start({ nicId: a }), NicDevice.start({ nicId: b })]);
  nics.push(x, y);
  const port = await freePort();
  await y.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
  return [x, y, port];
}

const links = (nic: NicDevice) => control(nic).call<{ links: number[] }>({ op: "info" }).links;
/** Links this NIC lost or had replaced so far. */
const churn = (nic: NicDevice) => {
  const g = nic.counters().global;
  return g.link_losses + g.link_reconnects;
};
/** Time for a goodbye or a replacement to cross loopback (what the old code did took ~1 ms). */
const settle = () => new Promise((r) => setTimeout(r, 300));

test("an attach through an address already linked is refused (EBUSY) without a second connection; the link stays up", async () => {
  const [n1, n2, port] = await twoNics(1, 2);
  const spec = { kind: "tcp", host: HOST, port, timeoutMs: 2000, key: LINK_KEY } as const;
  await n1.attachLink(spec);
  await until(() => links(n2).includes(1), "NIC 2 attached the accepted link");
  await assert.rejects(
    n1.attachLink(spec),
    /^Error: EBUSY: a link to NIC 2 through 127\.0\.0\.1:\d+ is already attached/,
  );
  const again = await Promise.allSettled([n1.attachLink(spec), n1.attachLink(spec)]);
  assert.deepEqual(
    again.map((r) => r.status),
    ["rejected", "rejected"],
  );
  await settle();
  assert.deepEqual([links(n1), links(n2)], [[2], [1]]);
  assert.deepEqual([churn(n1), churn(n2)], [0, 0], "no link was lost or replaced at either end");
});

test("two attaches at once to a peer not linked yet: one connection, one link; the other waits for it and is refused", async () => {
  const [n3, n4, port] = await twoNics(3, 4);
  const spec = { kind: "tcp", host: HOST, port, timeoutMs: 2000, key: LINK_KEY } as const;
  const both = await Promise.allSettled([n3.attachLink(spec), n3.attachLink(spec)]);
  assert.deepEqual(
    both.map((r) => r.status),
    ["fulfilled", "rejected"],
  );
  assert.match(String((both[1] as PromiseRejectedResult).reason), /EBUSY/);
  await until(() => links(n4).includes(3), "NIC 4 attached the link");
  await settle();
  assert.deepEqual([links(n3), links(n4)], [[4], [3]]);
  assert.deepEqual([churn(n3), churn(n4)], [0, 0]);
});

test("a connection that reaches a peer linked another way is refused at both ends while the old link answers: both keep it", async () => {
  const [n5, n6, port6] = await twoNics(5, 6);
  const port5 = await freePort();
  await n5.attachLink({ kind: "tcp-listen", host: HOST, port: port5, key: LINK_KEY });
  // NIC 5 dials NIC 6; then NIC 6 dials NIC 5's listener (it has a link to 5, not through that address).
  await n5.attachLink({ kind: "tcp", host: HOST, port: port6, timeoutMs: 2000, key: LINK_KEY });
  await until(() => links(n6).includes(5), "NIC 6 attached NIC 5's connection");
  await assert.rejects(
    n6.attachLink({ kind: "tcp", host: HOST, port: port5, timeoutMs: 2000, key: LINK_KEY }),
    /^Error: EBUSY: a link to NIC 5 is attached already, and it answers/,
  );
  await settle();
  assert.deepEqual([links(n5), links(n6)], [[6], [5]], "both ends keep the link that answers");
  assert.deepEqual([churn(n5), churn(n6)], [0, 0], "no link was lost or replaced at either end");
});

test("two jobs started at once on a fresh two-host cluster both link and both run", {
  timeout: 60_000,
}, async () => {
  const cluster = await startLocalCluster(2, 2);
  try {
    const job = () =>
      new Job(cluster.targets, {
        n: 2,
        path: "native",
        program: fixture("mh-mpi"),
        linkTimeoutMs: 5000,
        output: () => {},
      }).run();
    const results = await Promise.all([job(), job()]);
    assert.deepEqual(
      results.map((r) => r.exitCode),
      [0, 0],
    );
    assert.deepEqual((await cluster.hosts[0].nicInfo()).links, [cluster.hosts[1].nicId]);
  } finally {
    await cluster.stop();
  }
});

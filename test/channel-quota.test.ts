/**
 * What the driver domain holds for co-resident channels (src/myrixen/back/shared-memory.ts).
 * Each channel is a buffer of dom0's (CHANNEL_BYTES), granted to both members, reused for the pair's
 * next channel once neither maps it. Members that never unmap (a guest owns its kernel) and
 * reconnect in a loop made dom0 hold 16 buffers per pair of them: a guest colluding with a
 * few others held 16 per peer, and six such guests filled dom0's grant table, so that no
 * guest on the host could open an endpoint. Now a domain is a member of at most
 * CHANNELS_PER_DOMAIN buffers and channels take at most CHANNEL_GRANT_SHARE of the table;
 * beyond, the pair talks through the NIC, which loses nothing. (The second test gives dom0 a
 * small grant table, so that a few guests reach the table's share as sixteen would reach it
 * in the default one.)
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import {
  CHANNEL_GRANT_SHARE,
  CHANNELS_PER_DOMAIN,
  CHANNELS_PER_PAIR,
} from "../src/myrixen/back/shared-memory.js";
import { CHANNEL_BYTES } from "../src/myrixen/channel-abi.js";
import { PAGE_SIZE } from "../src/xen/abi.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { nextMessage } from "./helpers/messages.js";

const HOG = new URL("./fixtures/guests/channel-hog.js", import.meta.url);
const PEERS = 3;

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

/** Starts a channel-hog guest on `h`. */
function startHog(h: Host, role: string, i = 0) {
  return h.startGuest({
    module: HOG,
    args: { role, rounds: CHANNELS_PER_PAIR + 2 },
    name: `hog-${role}${i}`,
    pages: 1024,
  });
}

/** A hog and PEERS peers on `h`: the hog churns through its channels with each; its report. */
async function hogRun(h: Host): Promise<{ intact: number; errors: string[] }> {
  const peers = await Promise.all(Array.from({ length: PEERS }, (_, i) => startHog(h, "peer", i)));
  const addrs = await Promise.all(peers.map((p) => next(p)));
  const hog = await startHog(h, "hog");
  await next(hog);
  hog.send(addrs);
  const end = await hog.exited;
  if (end.result === undefined) throw new Error(`the hog ${end.state}: ${end.error?.message}`);
  const out = end.result as { intact: number; errors: string[] };
  for (const p of peers) p.send("stop");
  await Promise.all(peers.map((p) => p.exited));
  return out;
}

/** Two honest guests open their endpoints on `h` (and stop): their addresses. */
async function honestEndpoints(h: Host): Promise<{ nic: number; endpoint: number }[]> {
  const honest = await Promise.all([startHog(h, "peer", 10), startHog(h, "peer", 11)]);
  const addrs = await Promise.all(honest.map((d) => next<{ nic: number; endpoint: number }>(d)));
  for (const d of honest) d.send("stop");
  await Promise.all(honest.map((d) => d.exited));
  return addrs;
}

function dom0SharedPages(): number {
  const c = host.hypervisor.counters(0);
  return c.mem_shared_alloc - (c.mem_shared_release ?? 0);
}

async function next<T>(d: Domain): Promise<T> {
  const [m] = await nextMessage(d);
  return m as T;
}

test("guests that keep every channel mapped and reconnect in a loop hold at most their quota of dom0's buffers; their messages still arrive", async () => {
  // More buffers than a domain's quota if each pair could hold its own 16.
  assert.ok(PEERS * CHANNELS_PER_PAIR > CHANNELS_PER_DOMAIN);
  const idle = dom0SharedPages();
  const out = await hogRun(host);
  const rounds = PEERS * (CHANNELS_PER_PAIR + 3);
  assert.deepEqual(out.errors, [], "every connect worked (through the NIC beyond the quota)");
  assert.equal(out.intact, rounds, "every echo came back intact");
  // dom0's memory: the quota's buffers and four endpoints' windows, not 16 buffers a pair.
  const channelPages = CHANNEL_BYTES / PAGE_SIZE;
  const more = dom0SharedPages() - idle;
  assert.ok(
    more < (CHANNELS_PER_DOMAIN + 8) * channelPages,
    `dom0 shares ${more} more pages (${channelPages} a buffer)`,
  );
  const s = host.backendStats();
  assert.ok(s.channelsRefused > 0, "channels beyond the quota were refused");
  assert.ok(
    s.channelBuffers <= CHANNELS_PER_DOMAIN,
    `dom0 held ${s.channelBuffers} channel buffers for the hog's pairs (quota ${CHANNELS_PER_DOMAIN})`,
  );
  // Honest guests still open endpoints.
  for (const a of await honestEndpoints(host)) assert.ok(a.endpoint >= 0);
});

test("channels take at most their share of dom0's grant table: guests still open endpoints when it is reached", async () => {
  const small = await Host.start({ nicId: 7, dom0GrantEntries: 4096 });
  try {
    const out = await hogRun(small);
    assert.deepEqual(out.errors, [], "every connect worked");
    assert.equal(out.intact, PEERS * (CHANNELS_PER_PAIR + 3), "every echo came back intact");
    const s = small.backendStats();
    const perBuffer = 2 * (CHANNEL_BYTES / PAGE_SIZE + 1);
    assert.ok(
      s.channelBuffers * perBuffer <= 4096 * CHANNEL_GRANT_SHARE && s.channelsRefused > 0,
      `${s.channelBuffers} channel buffers (${s.channelBuffers * perBuffer} grants of 4096), ${s.channelsRefused} refused`,
    );
    for (const a of await honestEndpoints(small)) assert.ok(a.endpoint >= 0);
  } finally {
    await small.stop();
  }
});

test("two guests that keep their channels and reconnect leave the host channels for others: an honest pair still gets one", async () => {
  // With lanes of a MiB and a domain's quota still 32, two such guests (a reviewer's PoC) took
  // every channel a default host holds, and every other pair talked through the NIC.
  const peers = await Promise.all(Array.from({ length: 4 }, (_, i) => startHog(host, "peer", 20 + i)));
  const addrs = await Promise.all(peers.map((p) => next<{ nic: number; endpoint: number }>(p)));
  const hogs: Domain[] = [];
  for (const i of [0, 1]) {
    const hog = await host.startGuest({
      module: HOG,
      args: { role: "hog", rounds: CHANNELS_PER_PAIR + 2, stay: true },
      name: `hog-staying${i}`,
      pages: 1024,
    });
    await next(hog);
    hog.send(addrs.slice(2 * i, 2 * i + 2));
    hogs.push(hog);
  }
  for (const out of await Promise.all(hogs.map((h) => next<{ intact: number; errors: string[] }>(h))))
    assert.deepEqual(out.errors, [], "every connect of the hogs worked (through the NIC beyond the quota)");
  const held = host.backendStats().channelBuffers;
  // An honest pair connects once and echoes once.
  const honestPeer = await startHog(host, "peer", 30);
  const honestAddr = await next<{ nic: number; endpoint: number }>(honestPeer);
  const honest = await host.startGuest({
    module: HOG,
    args: { role: "hog", rounds: 0, stay: true },
    name: "honest",
    pages: 1024,
  });
  const { endpoint } = await next<{ nic: number; endpoint: number }>(honest);
  honest.send([honestAddr]);
  const out = await next<{ intact: number; errors: string[] }>(honest);
  const mine = (await host.backendEndpoints()).find((e) => e.endpointId === endpoint);
  for (const d of [...hogs, honest, ...peers, honestPeer]) d.send("stop");
  await Promise.all([...hogs, honest, ...peers, honestPeer].map((d) => d.exited));
  assert.ok(held <= 2 * CHANNELS_PER_DOMAIN, `the two hogs' pairs hold ${held} channel buffers`);
  assert.equal(out.intact, 1, "the honest pair's echo came back");
  assert.equal(mine?.channels.length, 1, "the honest pair has a channel of its own");
});

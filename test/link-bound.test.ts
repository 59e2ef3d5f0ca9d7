/**
 * How many links a NIC keeps (src/nic/link-bound.ts), played by the attacker: a key holder of
 * the cluster. The key proves membership, not identity, so it links under as many NIC ids as it
 * likes; nothing bounded the links, and every fake id was a requester of its own to the refusal
 * throttles (free wrong endpoint keys for each of its endpoint ids) and cost the NIC about
 * 170 KiB (500 links from one process: 84 MiB, and 2,000 looked-at wrong keys for one endpoint
 * where one requester gets 4). Now a NIC keeps at most MAX_LINKS_PER_ADDRESS peer ids per
 * remote address and MAX_LINKS in all, counting ids linked within the throttles' forget time;
 * the excess is refused, counted, and said once. The attacker dials from 127.0.0.2, the
 * cluster's hosts from 127.0.0.1: real NIC threads, and raw links made with the handshake.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { NicInfo } from "../src/nic/control.js";
import { NicDevice } from "../src/nic/device.js";
import { LinkBound, LinkBoundError, MAX_LINKS_PER_ADDRESS } from "../src/nic/link-bound.js";
import type { ReconnectPolicy } from "../src/nic/tcp-attach.js";
import {
  Handshake,
  type HandshakeError,
  type HandshakeResult,
  LANE_BULK,
  LANE_MAIN,
} from "../src/nic/tcp-handshake.js";
import { TcpLink } from "../src/nic/tcp-link.js";
import { listenTcpLinks } from "../src/nic/tcp-link-setup.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { control, freePort, HOST } from "./helpers/nic-harness.js";
import { until } from "./helpers/until.js";

const nics: NicDevice[] = [];
const raw: TcpLink[] = [];
after(async () => {
  for (const l of raw) l.abort("the test ends");
  await Promise.all(nics.map((n) => n.stop()));
});

const quiet = () => {};

/** A link to the listener on `port` as NIC `nicId`, dialed from `local` (both connections, each proving the key). */
async function dialFrom(local: string, port: number, nicId: number): Promise<TcpLink> {
  const dial = (lane: number, bind?: Buffer) =>
    new Promise<{ socket: net.Socket; h: HandshakeResult }>((resolve, reject) => {
      const socket = net.connect({ host: HOST, port, localAddress: local });
      socket.once("error", reject);
      socket.once("connect", () => {
        const hs = new Handshake(socket, "dial", nicId, Buffer.from(LINK_KEY), 2000, 2000, lane, bind);
        hs.done.then((h) => resolve({ socket, h }), reject);
      });
    });
  const main = await dial(LANE_MAIN);
  const bulk = await dial(LANE_BULK, main.h.peerNonce);
  const link = new TcpLink(
    main.socket,
    nicId,
    main.h.peer,
    main.h.rest,
    { log: quiet },
    bulk.socket,
    bulk.h.rest,
  );
  link.onFrame(() => {});
  raw.push(link);
  return link;
}

/**
 * Links as NICs `ids` from `local`; resolves with the links the listener kept and the ids it
 * refused (each link's nicId is the id it claimed). The listener refuses in the handshake (the
 * dial fails with its EMLINK refusal), or, for a link that got through while others took the
 * last places, closes it at once after the handshake.
 */
async function linkAll(
  local: string,
  port: number,
  ids: number[],
): Promise<{ kept: TcpLink[]; refused: number[] }> {
  const links: TcpLink[] = [];
  const refused: number[] = [];
  const tryDial = (id: number) =>
    dialFrom(local, port, id).then(
      (l) => links.push(l),
      (e: HandshakeError) => {
        assert.ok(e.refusal, `refused by the listener, not failed: ${e}`);
        assert.match(e.message, /refused the link: .*at most \d+/);
        refused.push(id);
      },
    );
  for (let i = 0; i < ids.length; i += 8) await Promise.all(ids.slice(i, i + 8).map(tryDial));
  // A refused link is closed at once after its handshake; a kept one stays up.
  await sleep(300);
  for (const l of links.filter((l) => l.isClosed)) {
    assert.equal(l.goodbye, false, "a refused link gets no goodbye (its dialer may come back)");
    refused.push(l.nicId);
  }
  return {
    kept: links.filter((l) => !l.isClosed),
    refused: refused.sort((a, b) => ids.indexOf(a) - ids.indexOf(b)),
  };
}

type Bounds = { maxLinks?: number; maxLinksPerAddress?: number };

/** A NIC (stopped after the tests) and the log lines it says. */
async function loggedNic(nicId: number, opts: Bounds = {}) {
  const nic = await NicDevice.start({ nicId, ...opts });
  nics.push(nic);
  const logs: string[] = [];
  nic.onLog((m) => logs.push(m));
  return { nic, logs };
}

/** `nic` links to the NIC `peerNic` listening on `port` (reconnecting as `reconnect` says, if given). */
function dial(nic: NicDevice, port: number, peerNic: number, reconnect?: ReconnectPolicy) {
  return nic.attachLink({
    kind: "tcp",
    host: HOST,
    port,
    peerNic,
    timeoutMs: 2000,
    key: LINK_KEY,
    reconnect,
  });
}

async function listener(nicId: number, opts: Bounds = {}) {
  const { nic, logs } = await loggedNic(nicId, opts);
  const port = await freePort();
  await nic.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
  const ctl = control(nic);
  const links = () => ctl.call<NicInfo>({ op: "info" }).links;
  return { nic, logs, port, links };
}

test("a key holder linking under more NIC ids than its address's share gets the excess refused, counted and said once; the cluster's hosts still link, and ids given up keep their places", async () => {
  const { nic, logs, port, links } = await listener(1);
  const SHARE = MAX_LINKS_PER_ADDRESS;
  const fake = Array.from({ length: SHARE + 8 }, (_, i) => 5000 + i);
  const { kept, refused } = await linkAll("127.0.0.2", port, fake);
  assert.equal(
    links().length,
    SHARE,
    `NIC 1 keeps ${links().length} links from one key holder's address, under ${fake.length} NIC ids`,
  );
  assert.equal(kept.length, SHARE);
  assert.equal(refused.length, 8);
  assert.equal(nic.counters().global.links_refused, 8, "counted");
  const said = () => logs.filter((m) => /refused a link from NIC \d+ at 127\.0\.0\.2:\d+: EMLINK/.test(m));
  assert.equal(said().length, 1, `said once, not per attempt:\n${said().join("\n")}`);
  assert.match(
    said()[0],
    /127\.0\.0\.2 has 32 NIC ids linked, or linked within the last 10 min: at most 32 per address/,
  );

  // The cluster's own host, from another address, links while the attacker holds its share.
  const { nic: honest } = await loggedNic(2);
  await dial(honest, port, 1);
  await until(() => links().includes(2), "NIC 1 linked to the honest NIC 2");
  await sleep(200);
  assert.ok(links().includes(2), "the honest link stays");
  assert.deepEqual(control(honest).call<NicInfo>({ op: "info" }).links, [1]);

  // Given up, the attacker's ids keep their places while their refusals may be on record: new
  // ids buy it nothing (it would start over with fresh records), an old one comes back.
  for (const l of kept) l.close();
  await until(() => links().length === 1, "the attacker's links gone");
  const again = await linkAll("127.0.0.2", port, [9999, 9998, 5000]);
  assert.deepEqual(again.refused, [9999, 9998], "new ids from that address are refused");
  assert.deepEqual(
    again.kept.map((l) => l.nicId),
    [5000],
    "an id that was linked from there comes back",
  );
  assert.deepEqual(links(), [2, 5000]);
  assert.equal(nic.counters().global.links_refused, 10);
  assert.equal(said().length, 1, "still said once");
});

test("the NIC's total bound (an option), over addresses and for the links it dials; the same peer relinks", async () => {
  const { nic, logs, port, links } = await listener(11, { maxLinks: 4, maxLinksPerAddress: 2 });
  const a = await linkAll("127.0.0.2", port, [7001, 7002, 7003]);
  // Dialled at once: which two get the places is the order their handshakes finish in.
  assert.equal(a.refused.length, 1, "the address's share (2)");
  assert.deepEqual([...a.kept.map((l) => l.nicId), ...a.refused].sort(), [7001, 7002, 7003]);
  const b = await linkAll("127.0.0.3", port, [7101, 7102]);
  assert.deepEqual(b.refused, [], "another address has its own share");
  const c = await linkAll("127.0.0.4", port, [7201]);
  assert.deepEqual(c.refused, [7201], "the total (4)");
  assert.equal(links().length, 4);
  assert.equal(
    logs.filter((m) =>
      /EMLINK: this NIC has 4 NIC ids linked, or linked within the last 10 min: at most 4 \(maxLinks\)/.test(
        m,
      ),
    ).length,
    1,
    logs.join("\n"),
  );

  // A link this NIC dials counts too: refused (EMLINK) to the one who asked.
  const peer = await listener(12);
  await assert.rejects(dial(nic, peer.port, 12), /EMLINK: this NIC has 4 NIC ids linked/);
  assert.equal(nic.counters().global.links_refused, 3);

  // A peer whose link dropped keeps its place: it relinks though the NIC is full.
  const blip = a.kept[0];
  blip.abort("a network blip");
  await until(() => !links().includes(blip.nicId), "the link dropped");
  const back = await linkAll("127.0.0.2", port, [blip.nicId]);
  assert.deepEqual(back.refused, []);
  assert.equal(links().length, 4);

  await assert.rejects(NicDevice.start({ nicId: 13, maxLinks: 0 }), /maxLinks must be an integer in 1\.\./);
});

test("a NIC dialing a listener at its bound is refused in the handshake: its attach rejects with EMLINK naming the listener's bound, and nothing redials", async () => {
  const { nic, logs, port, links } = await listener(21, { maxLinksPerAddress: 1 });
  const { nic: first } = await loggedNic(22);
  await dial(first, port, 21);
  const { nic: late, logs: lateLogs } = await loggedNic(23);
  // Before, the attach resolved ("the link is up"), the listener dropped the link, and the
  // dialer redialled it as fast as the handshakes went.
  await assert.rejects(
    dial(late, port, 21),
    /EMLINK: .*the listener refused the link: 127\.0\.0\.1 has 1 NIC ids linked.*at most 1 per address \(maxLinksPerAddress\); `myrixen host --max-links-per-address` on that host/,
  );
  await sleep(1000);
  assert.equal(nic.counters().global.links_refused, 1, "one refusal, counted; no redial");
  assert.deepEqual(links(), [22]);
  assert.deepEqual(control(late).call<NicInfo>({ op: "info" }).links, []);
  assert.equal(late.counters().global.link_reconnects, 0);
  assert.equal(lateLogs.length, 0, lateLogs.join("\n"));
  assert.equal(
    logs.filter((m) => /refused a link from NIC 23 at 127\.0\.0\.1:\d+: EMLINK/.test(m)).length,
    1,
    logs.join("\n"),
  );
});

test("a reconnecting dialer refused at relink backs off and gives up, instead of spinning", async () => {
  // The link's listener (NIC 31) is killed; a new NIC 31 on its port keeps one NIC id per
  // address and has linked one from 127.0.0.1 already (a link it dialed counts too).
  const RECONNECT = { fastForMs: 2000, slowEveryMs: 1000, giveUpAfterMs: 4000 };
  const port = await freePort();
  const { nic: first } = await loggedNic(31);
  await first.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
  const { nic: dialer, logs: dialerLogs } = await loggedNic(33);
  await dial(dialer, port, 31, RECONNECT);
  const other = await listener(34);
  const { nic: second, logs: secondLogs } = await loggedNic(31, { maxLinksPerAddress: 1 });
  await dial(second, other.port, 34);
  await first.kill();
  await second.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
  await until(() => second.counters().global.links_refused > 0, "the dialer redials and is refused");
  await sleep(3000);
  const refused = second.counters().global.links_refused;
  // About one attempt a second by then (the old code: about 18 a second, and never gave up).
  assert.ok(refused <= 8, `${refused} refused relinks in about 3 s:\n${dialerLogs.join("\n")}`);
  assert.equal(dialer.counters().global.link_reconnects, 0, "never linked again");
  await until(() => dialer.counters().global.links_given_up === 1, "the dialer gives up", 10_000);
  assert.ok(
    dialerLogs.some((m) =>
      /reconnection attempt \d+ failed \(EMLINK: .*the listener refused the link/.test(m),
    ),
    dialerLogs.join("\n"),
  );
  assert.ok(dialerLogs.length <= 12, `${dialerLogs.length} log lines:\n${dialerLogs.join("\n")}`);
  assert.equal(secondLogs.filter((m) => /refused a link from NIC 33/.test(m)).length, 1, "said once");
});

test("a reconnecting dialer whose peer drops each new link right after the handshake backs off and gives up too", async () => {
  // A peer (raw links) keeps the first link, then drops it, and drops every later one at once.
  const RECONNECT = { fastForMs: 2000, slowEveryMs: 1000, giveUpAfterMs: 4000 };
  const taken: TcpLink[] = [];
  const server = await listenTcpLinks({
    nicId: 41,
    port: 0,
    host: HOST,
    key: LINK_KEY,
    log: quiet,
    onLink: (link) => {
      link.onFrame(() => {});
      taken.push(link);
      if (taken.length > 1) link.abort("dropped at once");
    },
  });
  try {
    const { nic: dialer, logs: dialerLogs } = await loggedNic(43);
    await dial(dialer, server.port, 41, RECONNECT);
    taken[0].abort("a network blip");
    await sleep(3000);
    // About one attempt a second by then (the old code: about 18 a second, and never gave up).
    assert.ok(taken.length <= 9, `${taken.length - 1} relinks in 3 s:\n${dialerLogs.join("\n")}`);
    await until(() => dialer.counters().global.links_given_up === 1, "the dialer gives up", 10_000);
    assert.ok(dialerLogs.length <= 20, `${dialerLogs.length} log lines:\n${dialerLogs.join("\n")}`);
  } finally {
    for (const l of taken) l.abort("the test ends");
    await server.close();
  }
});

test("an IPv6 key holder's /64 is one address: ids linked from many addresses of the block share one address's share", () => {
  const bound = new LinkBound(1024, 4);
  let refused = 0;
  for (let i = 1; i <= 40; i++)
    try {
      bound.admit(5000 + i, `2001:db8:7:7::${i.toString(16)}`, 0);
    } catch (e) {
      assert.ok(e instanceof LinkBoundError, String(e));
      assert.match(e.message, /^EMLINK: 2001:db8:7:7::\/64 has 4 NIC ids linked/);
      refused++;
    }
  assert.equal(refused, 36, "40 addresses of one /64 hold 4 places, not 40");
  // Another block, an IPv4 peer and its IPv4-mapped form count on their own.
  bound.admit(6001, "2001:db8:7:8::1", 0);
  bound.admit(6002, "192.0.2.7", 0);
  bound.admit(6002, "::ffff:192.0.2.7", 0);
});

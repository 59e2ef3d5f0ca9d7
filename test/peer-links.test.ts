/**
 * A launcher's link requests on a real HostDaemon, over TCP: each peer the request names is
 * waited for (dialled, or watched for if the peer dials) until the link is up or the request's
 * deadline. Nothing tied those waits to the client: one request naming 1,024 peer NIC ids with
 * a deadline of 600 s, its client gone at once, kept 1,024 loops asking the NIC for its links
 * every 50 ms for 10 minutes (7,400 look-ups a second through dom0, the host's main thread
 * 99% of a core; an honest job took 6.1 s instead of 0.6 s). Now a request's waits end when
 * its client goes, a client's open requests name at most as many peers as the NIC links to
 * (maxLinks), and the peers that dial in are watched for by one shared look at the NIC.
 * Requests for one NIC id share a wait only if they name the same address, each gives up at
 * its own deadline, and a reply never quotes the bytes of a service that is not a MyriXen NIC.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { randomClusterKey } from "../src/cluster/auth.js";
import { LINK_REQUESTS_OPEN } from "../src/cluster/control-connection.js";
import type { HostDaemon, HostDaemonOptions } from "../src/cluster/host-daemon.js";
import { createLogger } from "../src/cluster/log.js";
import { RemoteHost } from "../src/cluster/remote.js";
import type { LinkPeer } from "../src/cluster/wire.js";
import { startLocalDaemon } from "./helpers/daemon.js";
import { until } from "./helpers/until.js";

const key = randomClusterKey();

function startDaemon(opts: Partial<HostDaemonOptions>): Promise<HostDaemon> {
  return startLocalDaemon(key, { slots: 1, ...opts });
}

/** `n` peers from NIC id `first` on, at a port where nothing listens. */
const nowhere = (first: number, n: number): LinkPeer[] =>
  Array.from({ length: n }, (_, i) => ({
    nicId: first + i,
    host: "127.0.0.1",
    port: 9,
    label: `nowhere ${i}`,
  }));

const connect = (d: HostDaemon) => RemoteHost.connect({ host: "127.0.0.1", port: d.control.port }, { key });

test("a client that asks for links and goes leaves no wait running, whichever side dials", async () => {
  // A high NIC id: every peer named dials us, so the host waits for it. A low one: the host dials each.
  for (const [nicId, first] of [
    [0xfffffff0, 1],
    [1, 1000],
  ]) {
    const d = await startDaemon({ nicId, maxLinks: 64 });
    try {
      const rh = await connect(d);
      const asked = rh.link(nowhere(first, 64), 600_000).catch((e: Error) => e);
      await until(() => d.activeLinkWaits === 64, "the host to wait for the 64 peers");
      rh.close();
      assert.ok((await asked) instanceof Error);
      await until(() => d.activeLinkWaits === 0, `every wait to end once the client went (NIC id ${nicId})`);
      // Another client asking for the same peers later starts afresh, and goes the same way.
      const again = await connect(d);
      const asked2 = again.link(nowhere(first, 8), 600_000).catch((e: Error) => e);
      await until(() => d.activeLinkWaits === 8, "the second client's waits");
      again.close();
      await asked2;
      await until(() => d.activeLinkWaits === 0, "the second client's waits to end");
    } finally {
      await d.stop();
    }
  }
});

test("a link request naming more peers than the NIC links to is refused, and so are a client's requests past that together", async () => {
  const d = await startDaemon({ nicId: 0xfffffff0, maxLinks: 16 });
  try {
    const rh = await connect(d);
    await assert.rejects(
      rh.link(nowhere(1, 17), 5_000),
      /names 17 peer NICs; this host's NIC links to at most 16 \(myrixen host --max-links N\)/,
    );
    assert.equal(d.activeLinkWaits, 0, "nothing was started for the refused request");
    const first = rh.link(nowhere(1, 10), 600_000).catch((e: Error) => e);
    await until(() => d.activeLinkWaits === 10, "the first request's waits");
    // The same peers again count once; 7 new ones (11 to 17) would make 17.
    await assert.rejects(
      rh.link(nowhere(4, 14), 5_000),
      /one client may have at most 16 being linked at once/,
    );
    assert.equal(d.activeLinkWaits, 10);
    const second = rh.link(nowhere(5, 12), 600_000).catch((e: Error) => e);
    await until(() => d.activeLinkWaits === 16, "the second request's new waits");
    rh.close();
    await Promise.all([first, second]);
    await until(() => d.activeLinkWaits === 0, "every wait to end once the client went");
  } finally {
    await d.stop();
  }
});

test("one client's link requests name at most as many NIC id and address pairs as the NIC links to", async () => {
  const d = await startDaemon({ nicId: 1, maxLinks: 16 });
  try {
    const rh = await connect(d);
    // One NIC id at 16 addresses: each pair is a wait of its own, so each counts.
    const at = (port: number): LinkPeer => ({ nicId: 5000, host: "127.0.0.1", port, label: `port ${port}` });
    const open = Array.from({ length: 16 }, (_, i) => rh.link([at(i + 1)], 600_000).catch((e: Error) => e));
    await until(() => d.activeLinkWaits === 16, "a wait per address");
    await assert.rejects(rh.link([at(17)], 5_000), /one client may have at most 16 being linked at once/);
    assert.equal(d.activeLinkWaits, 16);
    rh.close();
    await Promise.all(open);
    await until(() => d.activeLinkWaits === 0, "every wait to end once the client went");
  } finally {
    await d.stop();
  }
});

/**
 * A peer that accepts TCP and never answers (a host's dial to it stays in progress): the
 * LinkPeer naming it, the sockets it accepted, and close() for both.
 */
async function silentPeer(): Promise<{ peer: LinkPeer; sockets: net.Socket[]; close(): void }> {
  const sockets: net.Socket[] = [];
  const server = net.createServer((s) => sockets.push(s));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const peer: LinkPeer = {
    nicId: 1000,
    host: "127.0.0.1",
    port: (server.address() as net.AddressInfo).port,
    label: "silent",
  };
  return {
    peer,
    sockets,
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

test("a request for a peer whose last asker just went gets a wait of its own, not that one's cancellation", async () => {
  const silent = await silentPeer();
  const { peer, sockets } = silent;
  const d = await startDaemon({ nicId: 1 }); // the lower id: this host dials
  try {
    const first = await connect(d);
    const asked = first.link([peer], 600_000).catch((e: Error) => e);
    await until(() => sockets.length === 1, "the host to dial the silent peer");
    first.close();
    await asked;
    // At once, while that dial still runs: a second launcher asks for the same peer.
    const second = await connect(d);
    try {
      const e = await second.link([peer], 1_500).then(
        () => undefined,
        (err: Error) => err,
      );
      assert.ok(e instanceof Error, "the silent peer never links");
      assert.doesNotMatch(e.message, /no request wants this link/);
      assert.match(e.message, /no NIC link to host silent .* within 1500 ms/);
    } finally {
      second.close();
    }
    await until(() => d.activeLinkWaits === 0, "every wait to end");
  } finally {
    await d.stop();
    silent.close();
  }
});

test("a request that joins an earlier, shorter wait for a peer waits its own time", async () => {
  const silent = await silentPeer();
  const { peer } = silent;
  const d = await startDaemon({ nicId: 1 });
  const [short, long] = [await connect(d), await connect(d)];
  try {
    const first = short.link([peer], 1_000).catch((e: Error) => e);
    await until(() => d.activeLinkWaits === 1, "the first request's wait");
    const second = long.link([peer], 3_000).catch((e: Error) => e);
    const [e1, e2] = await Promise.all([first, second]);
    assert.match(String(e1), /within 1000 ms/);
    // The shared wait gave up at the first request's deadline; the second waited for its own.
    assert.match(String(e2), /no NIC link to host silent .* within 3000 ms/);
    await until(() => d.activeLinkWaits === 0, "every wait to end");
  } finally {
    short.close();
    long.close();
    await d.stop();
    silent.close();
  }
});

test("an honest pair of hosts still links through a launcher's requests, and no wait is left after", async () => {
  const a = await startDaemon({ nicId: 101 });
  const b = await startDaemon({ nicId: 102 });
  try {
    const [ra, rb] = await Promise.all([connect(a), connect(b)]);
    const peerOf = (d: HostDaemon, label: string): LinkPeer => ({
      nicId: d.nicId,
      host: d.linkAddress!.host,
      port: d.linkAddress!.port,
      label,
    });
    await Promise.all([ra.link([peerOf(b, "b")], 10_000), rb.link([peerOf(a, "a")], 10_000)]);
    assert.equal(a.activeLinkWaits, 0);
    assert.equal(b.activeLinkWaits, 0);
    assert.deepEqual((await ra.status()).links, [102], "A is linked to B");
    ra.close();
    rb.close();
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

/** Resolves with what `p` settles to, or rejects naming `what` if it is still pending after `ms` (a liveness bound). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} was still pending after ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

const linkOf = (d: HostDaemon, label: string): LinkPeer => ({
  nicId: d.nicId,
  host: d.linkAddress!.host,
  port: d.linkAddress!.port,
  label,
});

test("a key holder's wait for a NIC id at its own address does not capture an honest request for that NIC at the real one", async () => {
  const silent = await silentPeer();
  const a = await startDaemon({ nicId: 1 }); // the lower id: A dials
  const b = await startDaemon({ nicId: 200 });
  const [attacker, honest] = [await connect(a), await connect(a)];
  try {
    // The key holder names NIC 200 at an address that takes the connection and never answers.
    const bogus = { ...silent.peer, nicId: b.nicId, label: "nowhere" };
    const hijack = attacker.link([bogus], 600_000).then(
      () => undefined,
      (e: Error) => e,
    );
    await until(() => silent.sockets.length >= 1, "A to dial the key holder's address");
    // Before the fix this joined the key holder's wait: it dialled the silent address and failed
    // only at the key holder's deadline, 600 s on.
    await within(honest.link([linkOf(b, "b")], 10_000), 30_000, "the honest link request");
    assert.deepEqual((await honest.status()).links, [200], "A is linked to B, the real NIC 200");
    // The NIC keeps one link per peer NIC id: the key holder's wait sees NIC 200 linked and ends.
    assert.equal(await within(hijack, 30_000, "the key holder's request"), undefined);
    await until(() => a.activeLinkWaits === 0, "every wait to end");
  } finally {
    attacker.close();
    honest.close();
    await Promise.all([a.stop(), b.stop()]);
    silent.close();
  }
});

test("a request that joins a longer wait for a peer gives up at its own deadline, whichever side dials", async () => {
  // NIC id 1: this host dials the silent peer (NIC 1000); 0xfffffff0: it waits for NIC 1000 to dial in.
  for (const nicId of [1, 0xfffffff0]) {
    const silent = await silentPeer();
    const d = await startDaemon({ nicId });
    const [attacker, honest] = [await connect(d), await connect(d)];
    try {
      const long = attacker.link([silent.peer], 600_000).catch((e: Error) => e);
      await until(() => d.activeLinkWaits === 1, "the key holder's wait");
      // The same peer at the same address: this request shares the wait, not its deadline.
      const e = await within(
        honest.link([silent.peer], 1_500).then(
          () => undefined,
          (err: Error) => err,
        ),
        30_000,
        `the request with a 1500 ms timeout (NIC id ${nicId})`,
      );
      assert.ok(e instanceof Error, "the silent peer never links");
      assert.match(
        e.message,
        nicId < silent.peer.nicId
          ? /no NIC link to host silent .* within 1500 ms/
          : /host silent .* did not link to this host's NIC within 1500 ms/,
      );
      assert.equal(d.activeLinkWaits, 1, "the key holder's own wait runs on");
      attacker.close();
      await long;
      await until(() => d.activeLinkWaits === 0, "every wait to end once the key holder went");
    } finally {
      attacker.close();
      honest.close();
      await d.stop();
      silent.close();
    }
  }
});

test("a link request does not read another service's first bytes back to the client: the host's log has them", async () => {
  const lines: string[] = [];
  const d = await startDaemon({
    nicId: 1,
    log: createLogger({ level: "warn", write: (l) => lines.push(l) }),
  });
  // An internal service that greets first (as SSH does), one that sends a few bytes and closes,
  // and a port where nothing listens.
  // (The host may reset a connection it gave up on: the services ignore that.)
  const serve = (greeting: string) =>
    net.createServer((s) => {
      s.on("error", () => {});
      s.end(greeting);
    });
  const banner = serve("SSH-2.0-OpenSSH_9.6\r\n");
  const short = serve("SSH");
  await Promise.all([banner, short].map((srv) => new Promise<void>((r) => srv.listen(0, "127.0.0.1", r))));
  const closed = net.createServer();
  await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
  const closedPort = (closed.address() as net.AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  const rh = await connect(d);
  const at = (port: number, label: string): LinkPeer => ({ nicId: 200, host: "127.0.0.1", port, label });
  const reason = (peer: LinkPeer) =>
    rh.link([peer], 1_500).then(
      () => assert.fail(`${peer.label} linked`),
      (e: Error) => e.message,
    );
  try {
    for (const srv of [banner, short]) {
      const port = (srv.address() as net.AddressInfo).port;
      const why = await reason(at(port, "service"));
      assert.match(why, /not a MyriXen link: the handshake failed/);
      // Before the fix: "handshake failed: bad magic 0x2d485353 ...", the banner's first bytes.
      assert.doesNotMatch(why, /magic|0x|hello bytes|SSH/i);
    }
    // The user still learns that nothing listens there.
    assert.match(await reason(at(closedPort, "closed")), /ECONNREFUSED/);
    const logged = lines.join("");
    assert.match(logged, /bad magic 0x2d485353/, "the host's log says what the service sent");
    assert.match(logged, /connection closed during the handshake \(after 3 of 48 hello bytes\)/);
  } finally {
    rh.close();
    await d.stop();
    banner.close();
    short.close();
  }
});

test("a client's open link requests are bounded in number, and a peer named many times in one request is one wait", async () => {
  // Each peer a request names is a wait with its own promise and timer in the host's memory:
  // 800 requests naming one dead peer 1,024 times each (counted as one pair) filled a 768 MiB heap.
  const d = await startDaemon({ nicId: 0xfffffff0, maxLinks: 1024 });
  try {
    const rh = await connect(d);
    const [peer] = nowhere(1, 1);
    const many = Array.from({ length: 1024 }, () => peer);
    // Named 1,024 times, waited for once: its failure names it once.
    const e = await rh.link(many, 300).then(
      () => undefined,
      (err: Error) => err,
    );
    assert.ok(e instanceof Error, "the peer never dials in");
    assert.equal(e.message.split("did not link to this host's NIC").length - 1, 1, e.message.slice(0, 300));
    const open = Array.from({ length: LINK_REQUESTS_OPEN }, () =>
      rh.link(many, 600_000).catch((err: Error) => err),
    );
    await until(() => d.activeLinkWaits === 1, "one wait for all of them");
    await assert.rejects(
      rh.link([peer], 5_000),
      new RegExp(
        `this client has ${LINK_REQUESTS_OPEN} link requests open; one client may have at most ${LINK_REQUESTS_OPEN}`,
      ),
    );
    rh.close();
    await Promise.all(open);
    await until(() => d.activeLinkWaits === 0, "every wait to end once the client went");
  } finally {
    await d.stop();
  }
});

/**
 * The control port as an attacker uses it, through a real HostDaemon serving a real Host and a
 * real client (RemoteHost) over TCP:
 *  - a guest that fills its XenStore subtree with multi-byte text: the host cut the
 *    `xenstore-ls` answer by UTF-16 characters, so a reply under MAX_LINE_BYTES characters was
 *    up to three times that in bytes, and the client (myrixen xenstore-ls) dropped the host as
 *    "sent garbage: a line longer than 1048576 bytes" instead of getting a cut tree;
 *  - a client that proves the key and then says nothing: the idle limit was armed only by its
 *    first request, so it held one of the host's maxConnections slots for ever;
 *  - a flood of idle connections to the dashboard's port: Node bounds none, so every one was
 *    held until its 30 s idle timeout (and a slow trickle of requests keeps one for ever).
 */
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { randomClusterKey } from "../src/cluster/auth.js";
import { HostDaemon } from "../src/cluster/host-daemon.js";
import { silentLogger } from "../src/cluster/log.js";
import { RemoteHost } from "../src/cluster/remote.js";
import { MAX_LINE_BYTES } from "../src/cluster/wire.js";
import { Dashboard, MAX_HTTP_CONNECTIONS } from "../src/dashboard/server.js";
import { Host } from "../src/host/host.js";
import { DEVICE_TEXT_MAX, MAX_DEVICES } from "../src/host/snapshot.js";
import { startAgent } from "./helpers/agent.js";
import { until } from "./helpers/until.js";

const key = randomClusterKey();
let host: Host;
before(async () => {
  host = await Host.start({ nicId: 91 });
});
after(() => host.stop());

/**
 * A guest (an agent the test drives) on a host served on a control port, and an observer
 * connected to that port: `body` writes through the guest and asks through the observer; the
 * observer must still be connected at the end.
 */
async function observedGuest(
  name: string,
  body: (g: Awaited<ReturnType<typeof startAgent>>, observer: RemoteHost) => Promise<void>,
): Promise<void> {
  const daemon = await HostDaemon.serve(host, {
    listen: { host: "127.0.0.1", port: 0 },
    key,
    log: silentLogger,
    observeOnly: "audit",
  });
  const g = await startAgent(host.hypervisor);
  try {
    const rh = await RemoteHost.connect(
      { host: "127.0.0.1", port: daemon.control.port },
      { key, role: "observer", name },
    );
    let lost: string | undefined;
    rh.onLost((why) => {
      lost = why;
    });
    try {
      await body(g, rh);
      assert.equal(lost, undefined, "the observer kept the host");
    } finally {
      rh.close();
    }
  } finally {
    await g.dom.destroy();
    await daemon.stop();
  }
}

test("a guest's multi-byte XenStore values: xenstore-ls gets a tree cut to one line's bytes, and the host stays connected", async () => {
  await observedGuest("audit xenstore-ls", async (g, rh) => {
    // 400 nodes of 4095 bytes each (1365 "€", 3 bytes apiece), within the guest's quota of
    // nodes and XENSTORE_VALUE_MAX: about 0.55 M characters of JSON, 1.6 MB of UTF-8.
    const value = "€".repeat(1365);
    assert.ok(Buffer.byteLength(value) <= 4096);
    for (let i = 0; i < 400; i++)
      assert.equal(await g.rpc({ op: "xsWrite", path: `data/n${i}`, value }), true);
    const path = `/local/domain/${g.dom.domid}/data`;
    const t = await rh.xenstore(path);
    assert.equal(t.truncated, true, "the tree is cut to fit one line");
    assert.ok(t.nodes > 0 && t.nodes < 401, `nodes ${t.nodes}`);
    assert.ok(Buffer.byteLength(JSON.stringify(t.tree)) < MAX_LINE_BYTES);
    // The connection still serves.
    const again = await rh.xenstore(path, 3);
    assert.equal(again.nodes, 3);
  });
});

test("a guest's own device directory cannot make remote observers refuse its host's snapshot", async () => {
  // What a guest writes under /local/domain/<it>/device went into the snapshot as written: a
  // MAC or device type longer than the wire check allows, or more devices, and every remote
  // observer (list, top, the dashboard) refused the whole snapshot and dropped the host.
  await observedGuest("audit snapshot", async (g, rh) => {
    assert.equal(await g.rpc({ op: "xsWrite", path: "device/vif/0/mac", value: "m".repeat(57) }), true);
    for (let i = 0; i < MAX_DEVICES + 6; i++)
      assert.equal(
        await g.rpc({ op: "xsWrite", path: `device/${"t".repeat(40)}${i}/0/state`, value: "1" }),
        true,
      );
    const snap = await rh.snapshot();
    const mine = snap.domains.find((d) => d.domid === g.dom.domid);
    assert.ok(mine, "the guest's domain is in the snapshot");
    assert.equal(mine.devices.length, MAX_DEVICES);
    for (const d of mine.devices) {
      assert.ok(d.type.length <= DEVICE_TEXT_MAX, d.type);
      assert.ok((d.mac ?? "").length <= DEVICE_TEXT_MAX, d.mac);
    }
    await rh.snapshot();
  });
});

test("a client that proves the key and then stays silent is dropped after idleTimeoutMs", async () => {
  const IDLE_MS = 300;
  const daemon = await HostDaemon.serve(host, {
    listen: { host: "127.0.0.1", port: 0 },
    key,
    log: silentLogger,
    observeOnly: "audit",
    idleTimeoutMs: IDLE_MS,
  });
  try {
    // A real client that never pings (as one whose machine vanished right after the handshake).
    const rh = await RemoteHost.connect(
      { host: "127.0.0.1", port: daemon.control.port },
      { key, role: "observer", name: "audit silent", pingMs: 600_000, deadAfterMs: 600_000 },
    );
    let lost: string | undefined;
    rh.onLost((why) => {
      lost = why;
    });
    // A liveness bound far above the limit the host was given.
    await until(() => lost !== undefined, "the host to drop its silent client", IDLE_MS * 20);
    assert.match(lost ?? "", new RegExp(`silent for ${IDLE_MS} ms`));
    rh.close();
  } finally {
    await daemon.stop();
  }
});

test("the dashboard port: a flood of idle connections is bounded, the oldest go; a WebSocket client and a new request are served", async () => {
  const d = await Dashboard.start({ host: "127.0.0.1", port: 0, sources: [], log: silentLogger });
  const socks: net.Socket[] = [];
  try {
    const ws = new WebSocket(`ws://127.0.0.1:${d.port}/ws`);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    let wsClosed = false;
    ws.on("close", () => {
      wsClosed = true;
    });
    const EXTRA = 200;
    let closed = 0;
    for (let i = 0; i < MAX_HTTP_CONNECTIONS + EXTRA; i++) {
      const s = net.connect({ host: "127.0.0.1", port: d.port });
      s.on("error", () => {});
      s.on("close", () => closed++);
      socks.push(s);
    }
    // Without a bound they all stay until the 30 s idle timeout; the bound closes them on arrival.
    await until(() => closed >= EXTRA, `${EXTRA} of the flood's connections closed by the dashboard`, 10_000);
    const r = await fetch(`http://127.0.0.1:${d.port}/auth/state`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { required: false, ok: true });
    assert.equal(wsClosed, false, "the WebSocket client is not one of the evicted");
    assert.equal(d.clientCount, 1);
    ws.close();
  } finally {
    for (const s of socks) s.destroy();
    await d.stop();
  }
});

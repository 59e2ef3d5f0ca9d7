/**
 * A client that asks and never reads its answers: the host stops reading its requests while
 * its answers wait, so what the host keeps for it stays bounded, and once it reads, every
 * answer comes, in order. Before, the host kept answering into its own memory (64 MiB a
 * connection, 256 connections): a key holder's unread snapshots filled the host's heap and
 * the host, with every tenant's jobs, ended.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import net from "node:net";
import { after, before, test } from "node:test";
import { randomClusterKey } from "../src/cluster/auth.js";
import { INSPECTIONS_IN_FLIGHT } from "../src/cluster/control-connection.js";
import { HostDaemon } from "../src/cluster/host-daemon.js";
import { silentLogger } from "../src/cluster/log.js";
import { RemoteHost } from "../src/cluster/remote.js";
import { ANSWERS_QUEUED_MAX, LineChannel } from "../src/cluster/wire.js";
import { Host } from "../src/host/host.js";
import { until } from "./helpers/until.js";

const ANSWER = "a".repeat(64 * 1024);

test("a channel that answers stops reading while its answers wait unread, and goes on, in order, when they are read", async () => {
  const REQUESTS = 2000; // 128 MiB of answers if all were answered at once
  let answered = 0;
  let server: LineChannel | undefined;
  const listener = net.createServer((sock) => {
    server = new LineChannel(
      sock,
      {
        line: (v) => {
          answered++;
          server?.send({ n: (v as { n: number }).n, answer: ANSWER });
        },
        garbage: () => {},
        close: () => {},
      },
      ANSWERS_QUEUED_MAX,
    );
  });
  listener.listen(0, "127.0.0.1");
  await once(listener, "listening");
  const { port } = listener.address() as net.AddressInfo;
  const client = net.connect(port, "127.0.0.1");
  await once(client, "connect");
  client.pause(); // asks, and reads nothing
  client.write(Array.from({ length: REQUESTS }, (_, n) => `${JSON.stringify({ n })}\n`).join(""));
  try {
    await until(
      () => server !== undefined && (server.readingPaused || server.isClosed || answered === REQUESTS),
      "the server to stop reading or to answer everything",
      30_000,
    );
    const s = server as LineChannel;
    assert.equal(s.isClosed, false, `the server dropped its client: ${s.closeReason}`);
    assert.ok(s.readingPaused, `the server answered ${answered} requests into its own memory`);
    assert.ok(answered < REQUESTS, "some requests wait unread");
    // What waits in the server's memory: its mark and the answer that passed it.
    assert.ok(
      s.queuedBytes <= ANSWERS_QUEUED_MAX + ANSWER.length + 1024,
      `${s.queuedBytes} bytes of answers queued`,
    );

    // The client reads: every answer comes, in order.
    let got = 0;
    let buf = "";
    client.setEncoding("utf8");
    client.on("data", (d: string) => {
      buf += d;
      let nl = buf.indexOf("\n");
      while (nl >= 0) {
        const m = JSON.parse(buf.slice(0, nl)) as { n: number };
        assert.equal(m.n, got, "answers in the order asked");
        got++;
        buf = buf.slice(nl + 1);
        nl = buf.indexOf("\n");
      }
    });
    client.resume();
    await until(() => got === REQUESTS, `all ${REQUESTS} answers (got ${got})`, 60_000);
  } finally {
    client.destroy();
    listener.close();
  }
});

const key = randomClusterKey();
let host: Host;
before(async () => {
  host = await Host.start({ nicId: 93 });
});
after(() => host.stop());

test("a key holder asking for status and snapshots without reading them: the host keeps a bounded few, then reads on when they are read", async () => {
  const daemon = await HostDaemon.serve(host, {
    listen: { host: "127.0.0.1", port: 0 },
    key,
    log: silentLogger,
    observeOnly: "audit",
  });
  try {
    const rh = await RemoteHost.connect(
      { host: "127.0.0.1", port: daemon.control.port },
      { key, role: "observer", name: "never reads", pingMs: 600_000, deadAfterMs: 600_000 },
    );
    const conn = [...(daemon as unknown as { conns: Set<{ channel: LineChannel }> }).conns][0];
    const sock = (rh as unknown as { channel: LineChannel }).channel.socket;
    sock.pause();
    const ASKS = 4000;
    const answers = Array.from({ length: ASKS }, (_, i) =>
      i % 2 === 0 ? rh.status() : rh.snapshot(600_000),
    );
    await until(
      () => conn.channel.readingPaused || conn.channel.isClosed,
      "the host to stop reading the client's requests",
      60_000,
    );
    // What the host keeps for this client: its answers' mark and at most
    // INSPECTIONS_IN_FLIGHT answers beyond it (a snapshot of this host is a few KiB).
    const bound = ANSWERS_QUEUED_MAX + INSPECTIONS_IN_FLIGHT * 64 * 1024;
    for (let i = 0; i < 20; i++) {
      assert.ok(conn.channel.queuedBytes <= bound, `${conn.channel.queuedBytes} bytes queued for the client`);
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(conn.channel.isClosed, false);
    sock.resume();
    const got = await Promise.all(answers);
    assert.equal(got.length, ASKS, "every request answered once the client read");
    rh.close();
  } finally {
    await daemon.stop();
  }
});

/**
 * A host's control-port slots against a key holder that takes them to keep: a real HostDaemon
 * (host-daemon.ts admit, accept) and real clients over TCP. Before, the host had one cap on
 * authenticated connections (maxConnections) and none per address or role, so one key holder
 * connected only as an observer, holding maxConnections connections and pinging, made the host
 * refuse every other tenant's launcher ("the host serves 256 clients already"); and the
 * handshake cap dropped the oldest connection in the handshake whoever's it was, so one
 * address opening connections fast dropped a launcher's handshake.
 *
 * Every client here is on loopback. The launcher comes from 127.0.0.1; an attacker that must
 * be another address comes from 127.0.0.2 (all of 127/8 is loopback on Linux).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { controlProof, randomClusterKey } from "../src/cluster/auth.js";
import type { HostDaemon, HostDaemonOptions } from "../src/cluster/host-daemon.js";
import { Job } from "../src/cluster/job.js";
import { RemoteHost } from "../src/cluster/remote.js";
import { WIRE_VERSION } from "../src/cluster/wire.js";
import { startLocalDaemon } from "./helpers/daemon.js";
import { until } from "./helpers/until.js";

const key = randomClusterKey();
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}.js`, import.meta.url));

async function withHost(
  opts: Partial<HostDaemonOptions>,
  body: (d: HostDaemon, at: { host: string; port: number }) => Promise<void>,
): Promise<void> {
  const d = await startLocalDaemon(key, opts);
  try {
    await body(d, { host: "127.0.0.1", port: d.control.port });
  } finally {
    await d.stop();
  }
}

/** A launcher's job of one rank on the host; its exit code. */
async function runJob(rh: RemoteHost): Promise<number> {
  const lines: string[] = [];
  const res = await new Job(rh, {
    n: 1,
    path: "bypass",
    program: fixture("mh-hello"),
    output: (_r, _s, line) => lines.push(line),
  }).run();
  assert.ok(
    lines.some((l) => /^hello rank 0 size 1/.test(l)),
    lines.join("\n"),
  );
  return res.exitCode;
}

/** A raw control client from `localAddress`: its lines, and what it sends. */
class RawClient {
  readonly lines: { type: string; nonce?: string; msg?: string }[] = [];
  private buf = "";
  closed = false;
  private constructor(readonly socket: net.Socket) {
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => {
      this.buf += d;
      for (let i = this.buf.indexOf("\n"); i >= 0; i = this.buf.indexOf("\n")) {
        this.lines.push(JSON.parse(this.buf.slice(0, i)) as RawClient["lines"][number]);
        this.buf = this.buf.slice(i + 1);
      }
    });
    socket.on("close", () => {
      this.closed = true;
    });
    socket.on("error", () => {});
  }

  static open(port: number, localAddress: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: "127.0.0.1", port, localAddress });
      s.once("error", reject);
      s.once("connect", () => {
        s.off("error", reject);
        resolve(new RawClient(s));
      });
    });
  }

  send(m: object): void {
    this.socket.write(`${JSON.stringify(m)}\n`);
  }

  async next(type: string): Promise<RawClient["lines"][number]> {
    await until(
      () => this.lines.some((l) => l.type === type || l.type === "error") || this.closed,
      `a "${type}"`,
    );
    const m = this.lines.find((l) => l.type === type || l.type === "error");
    if (!m || m.type !== type) throw new Error(`no "${type}": ${m?.msg ?? "closed"}`);
    return m;
  }

  /** hello, then the challenge; the hello sent. */
  async hello(role: string, name: string) {
    const h = { type: "hello", version: WIRE_VERSION, role, name, nonce: randomBytes(32).toString("hex") };
    this.send(h);
    return { h, challenge: await this.next("challenge") };
  }

  /** Proves the key for the hello and challenge; resolves with the host's hello or rejects with its error. */
  async auth(hc: Awaited<ReturnType<RawClient["hello"]>>): Promise<void> {
    this.send({ type: "auth", proof: controlProof(key, "client", hc.h, hc.challenge.nonce!) });
    await this.next("hello");
  }

  close(): void {
    this.socket.destroy();
  }
}

test("one address's many observers (authenticated, pinging) leave the host's launcher slots free: a launcher runs a job", async () => {
  // maxConnectionsPerAddress as high as maxConnections: on loopback the launcher shares the
  // attacker's address, so only the role cap is at work here (the next test plays the per-address one).
  await withHost({ maxConnections: 16, maxConnectionsPerAddress: 16 }, async (_d, at) => {
    const held: RemoteHost[] = [];
    const refusals: string[] = [];
    try {
      // The attacker asks for every slot; real RemoteHosts, so each pings once a second.
      for (let i = 0; i < 16; i++) {
        try {
          held.push(await RemoteHost.connect(at, { key, role: "observer", name: `hog ${i}` }));
        } catch (e) {
          refusals.push((e as Error).message);
        }
      }
      // Past a ping or two, the hog still holds what it got; a launcher is admitted and runs a job.
      await new Promise((r) => setTimeout(r, 1500));
      const launcher = await RemoteHost.connect(at, { key, role: "launcher", name: "honest" });
      try {
        assert.equal(await runJob(launcher), 0);
      } finally {
        launcher.close();
      }
      // The hog got half the slots, and was told which limit it met.
      assert.equal(held.length, 8, `observers admitted (half of 16): ${refusals.join("; ")}`);
      assert.equal(refusals.length, 8);
      for (const r of refusals)
        assert.match(r, /the host serves 8 observers already \(its limit for observers/);
    } finally {
      for (const h of held) h.close();
    }
  });
});

test("one address cannot take more than its share of the slots, whatever role it names: a launcher from another runs a job", async () => {
  // Defaults from maxConnections 16: 4 per address, 8 observers.
  await withHost({ maxConnections: 16 }, async (_d, at) => {
    const held: RawClient[] = [];
    const refusals: string[] = [];
    try {
      for (const role of ["observer", "launcher", "peer"])
        for (let i = 0; i < 6; i++) {
          const c = await RawClient.open(at.port, "127.0.0.2");
          try {
            await c.auth(await c.hello(role, `hog ${role} ${i}`));
            held.push(c);
          } catch (e) {
            refusals.push((e as Error).message);
            c.close();
          }
        }
      // A launcher from another address is admitted and runs a job.
      const launcher = await RemoteHost.connect(at, { key, role: "launcher", name: "honest" });
      try {
        assert.equal(await runJob(launcher), 0);
      } finally {
        launcher.close();
      }
      // The hog holds its share (a quarter), and was told which limit it met.
      assert.equal(held.length, 4, `connections admitted from 127.0.0.2: ${refusals.join("; ")}`);
      assert.ok(held.every((c) => !c.closed));
      for (const r of refusals)
        assert.match(r, /the host serves 4 clients from 127\.0\.0\.2 already \(its limit per address\)/);
    } finally {
      for (const c of held) c.close();
    }
  });
});

test("one address opening connections faster than they time out does not drop another address's handshake", async () => {
  await withHost({ maxPendingHandshakes: 4 }, async (_d, at) => {
    const flood: RawClient[] = [];
    try {
      // The launcher is mid-handshake (it has its challenge) ...
      const honest = await RawClient.open(at.port, "127.0.0.1");
      const hc = await honest.hello("launcher", "honest");
      // ... when one address opens twice the handshake slots, each said hello (so the host holds it).
      for (let i = 0; i < 8; i++) {
        const c = await RawClient.open(at.port, "127.0.0.2");
        flood.push(c);
        await c.hello("launcher", `flood ${i}`);
      }
      await honest.auth(hc);
      assert.ok(!honest.closed, "the launcher is connected");
      honest.close();
      // The flood dropped its own: its five oldest are gone, its newest three still wait.
      await until(() => flood.filter((c) => c.closed).length === 5, "the flood's oldest dropped");
      assert.ok(flood.slice(5).every((c) => !c.closed));
    } finally {
      for (const c of flood) c.close();
    }
  });
});

test("an IPv6 key holder's /64 is one address: its connections from many addresses of the block share one address's slots", async () => {
  await withHost({ maxConnections: 16, maxConnectionsPerAddress: 4 }, async (d) => {
    // What admit() is handed once a client proved the key (its address as the socket says it).
    type Admitted = Parameters<HostDaemon["admit"]>[0];
    const admitted: Admitted[] = [];
    const admit = (address: string): string | undefined => {
      const c = { address, role: "launcher" } as unknown as Admitted;
      const why = d.admit(c);
      if (why === undefined) admitted.push(c);
      return why;
    };
    try {
      const refusals: string[] = [];
      for (let i = 1; i <= 8; i++) {
        const why = admit(`2001:db8:1:2::${i.toString(16)}`);
        if (why !== undefined) refusals.push(why);
      }
      assert.equal(refusals.length, 4, "8 addresses of one /64 hold 4 slots, not 8");
      assert.match(refusals[0], /clients from 2001:db8:1:2::\/64 already \(its limit per address\)/);
      // Another block, and IPv4 clients, are counted on their own.
      assert.equal(admit("2001:db8:1:3::1"), undefined);
      assert.equal(admit("::ffff:192.0.2.1"), undefined);
    } finally {
      // They are no real connections: the daemon must not try to close them.
      for (const c of admitted) d.forget(c);
    }
  });
});

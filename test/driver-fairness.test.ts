/**
 * Performance isolation in the driver domain and its NIC: one busy or hostile guest, or one
 * stalled peer, must not starve everyone else. Three real hosts: A (where the guests under test
 * live), B (reached through a TCP relay the test can stop reading, as a hung peer would) and C
 * (linked directly). A test starts a flood, then waits (with a generous bound, far above what
 * the operation takes unflooded) for a victim's operation to complete while the flood goes on;
 * without the fix it never completes while the flood lasts.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";
import { freePort } from "../src/cluster/listen.js";
import { Host } from "../src/host/host.js";
import type { Domain } from "../src/xen/hypervisor.js";
import type { FrameSummary } from "./fixtures/net-agent.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { nextMessage } from "./helpers/messages.js";
import { startNetAgent } from "./helpers/net-agent.js";

const FLOOD = new URL("./fixtures/guests/net-flood.js", import.meta.url);
const NIC_A = 61;
const NIC_B = 62;
const NIC_C = 63;
/** How long a victim may take while the flood goes on (unflooded: well under a second). */
const LIVENESS_MS = 25_000;

let A: Host;
let B: Host;
let C: Host;
/** A → B goes through this relay; `stall` stops it reading what A sends (B looks hung). */
let relay: { server: net.Server; fromA: net.Socket[]; stalled: boolean; stall(): void };

function startRelay(to: number): Promise<{ port: number; server: net.Server }> {
  const fromA: net.Socket[] = [];
  const server = net.createServer((a) => {
    const b = net.connect({ host: "127.0.0.1", port: to });
    fromA.push(a);
    a.on("error", () => b.destroy());
    b.on("error", () => a.destroy());
    a.on("close", () => b.destroy());
    b.on("close", () => a.destroy());
    b.pipe(a);
    if (!relay.stalled) a.pipe(b);
    else a.pause();
  });
  relay = {
    server,
    fromA,
    stalled: false,
    stall() {
      this.stalled = true;
      for (const s of fromA) {
        s.unpipe();
        s.pause();
      }
    },
  };
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({ port: (server.address() as net.AddressInfo).port, server }),
    ),
  );
}

before(async () => {
  [A, B, C] = await Promise.all([
    Host.start({ nicId: NIC_A }),
    Host.start({ nicId: NIC_B }),
    Host.start({ nicId: NIC_C }),
  ]);
  const [pb, pc] = [await freePort("127.0.0.1"), await freePort("127.0.0.1")];
  await B.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port: pb, key: LINK_KEY });
  await C.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port: pc, key: LINK_KEY });
  const r = await startRelay(pb);
  await A.nic.attachLink({ kind: "tcp", host: "127.0.0.1", port: r.port, timeoutMs: 5000, key: LINK_KEY });
  await A.nic.attachLink({ kind: "tcp", host: "127.0.0.1", port: pc, timeoutMs: 5000, key: LINK_KEY });
});

after(async () => {
  // The relay goes first: a link whose peer stopped reading closes with it.
  for (const s of relay?.fromA ?? []) s.destroy();
  relay?.server.close();
  await A?.nic.detachLink(NIC_B).catch(() => undefined);
  await A?.nic.detachLink(NIC_C).catch(() => undefined);
  await Promise.all([A?.stop(), B?.stop(), C?.stop()]);
});

/** Starts flooding guests on `host` and waits until each has its first frames out. */
async function flooders(host: Host, n: number, dst: string, len: number): Promise<Domain[]> {
  const doms = await Promise.all(
    Array.from({ length: n }, (_, i) =>
      host.startGuest({
        module: FLOOD,
        args: { dst, len },
        name: `flooder-${i}`,
        pages: 1024,
        fastPath: false,
      }),
    ),
  );
  await Promise.all(doms.map((d) => nextMessage(d)));
  return doms;
}

/** Frames netback took from these domains' TX rings so far. */
function txFrames(host: Host, doms: Domain[]): number {
  const ids = new Set(doms.map((d) => d.domid));
  return host
    .netStats()
    .vifs.filter((v) => ids.has(v.domid))
    .reduce((s, v) => s + v.txFrames, 0);
}

/** Whether the flood is still on: the flooders live and netback keeps taking their frames. */
async function assertStillFlooding(host: Host, doms: Domain[]): Promise<void> {
  const t0 = txFrames(host, doms);
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(txFrames(host, doms) > t0, "the flood was still going on when the victim got through");
}

const tagged = (frames: FrameSummary[], tag: number) => frames.some((f) => f.tag === tag);

test("a peer host that stopped reading its link does not hold up this host's Ethernet to every other host", async () => {
  const onB = await startNetAgent(B, "guest-on-b");
  const onC = await startNetAgent(C, "guest-on-c");
  const victim = await startNetAgent(A, "ether-victim");
  const doms: Domain[] = [onB.dom, onC.dom, victim.dom];
  try {
    // A's NIC and bridge learn where the guest on B lives; then B stops reading (hung).
    await onB.call({ op: "send", frames: [{ dst: "ff:ff:ff:ff:ff:ff", len: 64, tag: 1 }] });
    const heard = await victim.call<FrameSummary[]>({ op: "recv", timeoutMs: 10_000, expect: 1 });
    assert.ok(tagged(heard, 1), "the guest on B was heard on A before its link stalled");
    relay.stall();
    // A guest on A streams unicast to B until A's link to B pushes back for good.
    const flood = await flooders(A, 1, onB.mac, 9014);
    doms.push(...flood);
    // Until A's NIC finds that link full (the relay and the kernel buffers hold some MB first).
    const full = performance.now();
    while (A.nic.counters().global.link_backpressure === 0) {
      assert.ok(performance.now() - full < 10_000, "A's link to B pushes back once B stops reading");
      await new Promise((r) => setTimeout(r, 20));
    }
    // The victim talks to C, over another link, while the flood goes on.
    const t0 = performance.now();
    let through = false;
    for (let i = 0; !through && performance.now() - t0 < LIVENESS_MS; i++) {
      await victim.call({ op: "send", frames: [{ dst: onC.mac, len: 64, tag: 0x40 + (i & 0x3f) }] });
      const got = await onC.call<FrameSummary[]>({ op: "recv", timeoutMs: 250, expect: 1 });
      through = got.some((f) => f.src === victim.mac);
    }
    assert.ok(
      through,
      `A's guest reached host C within ${LIVENESS_MS} ms while A's link to B was stalled (A's NIC: link back-pressure ${A.nic.counters().global.link_backpressure}, Ethernet dropped ${A.nic.counters().global.ether_dropped})`,
    );
    await assertStillFlooding(A, flood);
  } finally {
    await Promise.all(doms.map((d) => d.destroy()));
  }
});

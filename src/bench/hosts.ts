/**
 * Two hosts in this process whose NICs are joined by a TCP link over loopback: the set-up of
 * the cross-host benchmarks. Each NIC is its own thread and the link is a real socket, so a
 * message between them takes the same wire as between two host processes (framing, kernel
 * TCP stack, the peer NIC's thread), without a second process to start and tear down.
 */
import { createServer } from "node:net";
import { Host } from "../host/host.js";

/** NIC ids of the two benchmark hosts (any two distinct ids would do). */
export const HOST_A_NIC = 1;
export const HOST_B_NIC = 2;

export interface LinkedHosts {
  a: Host;
  b: Host;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve, reject) => {
    s.once("error", reject);
    s.listen(0, "127.0.0.1", resolve);
  });
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Starts host A (NIC 1) and host B (NIC 2) and links them; resolves once both NICs see the link. */
export async function startLinkedHosts(timeoutMs = 10_000): Promise<LinkedHosts> {
  const a = await Host.start({ nicId: HOST_A_NIC });
  let b: Host | undefined;
  try {
    b = await Host.start({ nicId: HOST_B_NIC });
    // The port is free a moment ago; another process could take it in between, so retry once.
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      try {
        await b.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port });
        await a.nic.attachLink({ kind: "tcp", host: "127.0.0.1", port, timeoutMs: 5000 });
        break;
      } catch (e) {
        if (attempt >= 1) throw e;
      }
    }
    // The connecting side resolves after its handshake; the listening side attaches its end
    // when it has read the hello, a moment later. Wait for both before the first CONNECT.
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const [ia, ib] = await Promise.all([a.nicInfo(), b.nicInfo()]);
      if (ia.links.includes(HOST_B_NIC) && ib.links.includes(HOST_A_NIC)) break;
      if (Date.now() > deadline)
        throw new Error(
          `the benchmark hosts' NICs did not link within ${timeoutMs} ms (NIC ${HOST_A_NIC} links: ` +
            `${ia.links.join(",") || "none"}; NIC ${HOST_B_NIC}: ${ib.links.join(",") || "none"})`,
        );
      await new Promise((r) => setTimeout(r, 10));
    }
    const hosts = b;
    return {
      a,
      b: hosts,
      async stop() {
        await Promise.all([a.stop(), hosts.stop()]);
      },
    };
  } catch (e) {
    await Promise.all([a.stop(), b?.stop()]);
    throw e;
  }
}

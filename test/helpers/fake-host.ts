// Test helper: a control port that holds the cluster key, passes the handshake (hello,
// challenge, auth, the host's hello with its proof) and answers pings, and does with every
// other message what the test says: a host that is broken or hostile, against the real launcher
// and observers.
import net from "node:net";
import { type ClusterKey, controlProof } from "../../src/cluster/auth.js";
import { WIRE_VERSION } from "../../src/cluster/wire.js";

export type FakeHostMessage = {
  type: string;
  id?: number;
  nonce?: string;
  job?: string;
  version?: number;
  role?: string;
  name?: string;
};
export type Reply = (message: unknown) => void;

export interface FakeHostOptions {
  nicId: number;
  hostname?: string;
  slots?: number;
  paths?: string[];
  /** Sent right after the host's hello. */
  afterHello?: (reply: Reply) => void;
  /** Every message after the handshake but pings. */
  onMessage?: (m: FakeHostMessage, reply: Reply) => void;
}

export interface FakeHost {
  port: number;
  /** Every message it got, the handshake's included. */
  got: FakeHostMessage[];
  close(): void;
}

export async function fakeControlHost(key: ClusterKey, opts: FakeHostOptions): Promise<FakeHost> {
  const got: FakeHostMessage[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on("error", () => {});
    s.on("close", () => sockets.delete(s));
    let clientHello = { version: 0, role: "", name: "", nonce: "" };
    const hostNonce = "cd".repeat(32);
    let buf = "";
    const reply: Reply = (o) => s.write(`${JSON.stringify(o)}\n`);
    s.on("data", (b) => {
      buf += b.toString("utf8");
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const m = JSON.parse(buf.slice(0, nl)) as FakeHostMessage;
        buf = buf.slice(nl + 1);
        got.push(m);
        if (m.type === "hello") {
          clientHello = {
            version: m.version ?? 0,
            role: m.role ?? "",
            name: m.name ?? "",
            nonce: m.nonce ?? "",
          };
          reply({ type: "challenge", nonce: hostNonce });
        } else if (m.type === "auth") {
          reply({
            type: "hello",
            version: WIRE_VERSION,
            proof: controlProof(key, "host", clientHello, hostNonce),
            hostname: opts.hostname ?? "fake",
            nicId: opts.nicId,
            // A NIC that is nowhere: nothing listens on port 1.
            link: { host: "127.0.0.1", port: 1 },
            slots: opts.slots ?? 4,
            pid: 1,
            paths: opts.paths ?? ["native", "bypass", "split"],
          });
          opts.afterHello?.(reply);
        } else if (m.type === "ping") reply({ type: "pong" });
        else opts.onMessage?.(m, reply);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    got,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

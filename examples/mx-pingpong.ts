// mx-pingpong.ts — a guest program: MX ping-pong with a peer whose address the host relays.
// Started twice by host.ts (args: { role: "ping" | "pong", rounds }).
import { type Guest, Mx } from "myrixen";

const KEY = 0x1234; // the endpoint key both guests were given
const ALL = 0xffffffff; // match every bit

export default async function main(guest: Guest) {
  const { role, rounds } = guest.args as { role: "ping" | "pong"; rounds: number };
  const mx = Mx.init(guest); // myrifront in a guest: the bypass path
  const ep = mx.openEndpoint({ key: KEY }); // mx_open_endpoint
  guest.send({ nic: ep.nicId, endpoint: ep.endpointId }); // to the host, which relays it
  const peer = (await guest.nextMessage()) as { nic: number; endpoint: number };
  const addr = ep.connect(peer.nic, peer.endpoint, KEY); // mx_connect

  const buf = ep.alloc(8); // message memory in this guest's RAM
  const start = performance.now();
  for (let i = 0; i < rounds; i++) {
    if (role === "ping") {
      ep.wait(ep.isend(buf, addr, 0, i)); // match info (hi, lo) = (0, i)
      const st = ep.wait(ep.irecv(buf, 0, i, ALL, ALL), 5000); // 5 s at most; MX_INFINITE = 0
      if (st?.codeName !== "MX_STATUS_SUCCESS") throw new Error(`round ${i}: ${st?.codeName ?? "timed out"}`);
    } else {
      ep.wait(ep.irecv(buf, 0, i, ALL, ALL));
      ep.wait(ep.isend(buf, addr, 0, i));
    }
  }
  const us = ((performance.now() - start) * 1000) / rounds / 2;
  if (role === "ping")
    console.log(`${rounds} round trips of 8 B on the ${ep.path} path: ${us.toFixed(1)} µs one way`);
  mx.finalize();
  return rounds;
}

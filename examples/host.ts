// host.ts — a host script: starts a host (hypervisor, MX NIC, driver domain), two guests that
// ping-pong over MX, relays their addresses, and shows that the data path bypassed the backend.
// Run it with `npx myrixen exec host.ts [rounds]`.
import { Host } from "myrixen";

const rounds = Number(process.argv[2] ?? 10_000);
const host = await Host.start({}); // NIC 0, driver domain running myrback and netback
const program = new URL("./mx-pingpong.ts", import.meta.url);
const ping = await host.startGuest({ module: program, args: { role: "ping", rounds } });
const pong = await host.startGuest({ module: program, args: { role: "pong", rounds } });

// Each guest sends its endpoint's address; each gets the other's.
const [pingAddr, pongAddr] = await Promise.all(
  [ping, pong].map((d) => new Promise((r) => d.once("message", r))),
);
ping.send(pongAddr);
pong.send(pingAddr);

const exits = await Promise.all([ping.exited, pong.exited]);
console.log("guests:", exits.map((e) => `${e.state} (${e.result})`).join(", "));
// Set-up (open, connect, register) went through myrback; the messages went guest to guest.
console.log(`myrback served ${host.backendStats().requests} requests for ${2 * rounds} messages`);
await host.stop();

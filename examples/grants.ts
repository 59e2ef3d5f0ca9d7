// grants.ts — a host script on the hypervisor layer alone: two guests, an event channel and a
// granted page between them; the host only relays the port and the grant reference.
// Run it with `npx myrixen exec grants.ts`.
import { type Domain, Hypervisor } from "myrixen";

const nextMessage = (d: Domain) => new Promise<unknown>((resolve) => d.once("message", resolve));

const hv = new Hypervisor();
const ping = await hv.createDomain({ module: new URL("./ping.ts", import.meta.url), pages: 64 });
const pong = await hv.createDomain({ module: new URL("./pong.ts", import.meta.url), pages: 64 });
pong.send({ peer: ping.domid });
ping.send({ peer: pong.domid, ...((await nextMessage(pong)) as { port: number }) });
pong.send(await nextMessage(ping)); // { ref }

const [a, b] = await Promise.all([ping.exited, pong.exited]); // { state, result, error }
console.log(`ping: ${a.state}, read ${a.result}; pong: ${b.state}, ${b.result}`);
const c = hv.counters(pong.domid); // what the hypervisor counted for pong
console.log(
  `pong: ${c.hypercalls} hypercalls, ${c.grant_map} grant map, ${c.evtchn_send} event-channel send`,
);
await hv.shutdown();

// ping.ts — a guest program: binds its peer's event channel, grants it a page, and waits until
// the peer has written the page. Started by grants.ts beside pong.ts.
import type { Guest } from "myrixen";

export default async function main(guest: Guest) {
  const { peer, port } = (await guest.nextMessage()) as { peer: number; port: number };
  const ch = guest.evtchn.port(guest.evtchn.bindInterdomain(peer, port));
  const page = guest.allocShared(1, { audience: [peer] }); // a page only `peer` may map
  page.bytes[0] = 41;
  const ref = guest.grants.grantAccess(peer, page.pfn);
  guest.send({ ref }); // the host hands it to the peer
  ch.wait(); // spin ~20 µs, then Atomics.wait
  guest.grants.endAccess(ref);
  return page.bytes[0]; // 42: the peer wrote it
}

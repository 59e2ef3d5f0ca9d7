// pong.ts — a guest program: offers an event channel, maps the page its peer granted, writes
// it and notifies the peer. Started by grants.ts beside ping.ts.
import type { Guest } from "myrixen";

export default async function main(guest: Guest) {
  const { peer } = (await guest.nextMessage()) as { peer: number };
  const port = guest.evtchn.allocUnbound(peer); // an unbound port only `peer` may bind
  guest.send({ port }); // the host hands it to the peer
  const { ref } = (await guest.nextMessage()) as { ref: number }; // the peer has bound it by now
  const page = guest.grants.mapOrThrow(peer, ref); // validated against peer's grant table
  page.bytes[0] += 1; // the granter's page, written in place
  guest.grants.unmap(page); // a grant in use cannot be revoked: give it back first
  guest.evtchn.port(port).notify(); // wake the peer
  return "answered";
}

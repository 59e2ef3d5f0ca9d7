/**
 * What tests that drive a NIC directly share: a free loopback port to listen on, and the
 * control channel a NIC device's driver endpoint answers on (as myrback holds it).
 */
import net from "node:net";
import type { NicControlRequest } from "../../src/nic/control.js";
import type { NicDevice } from "../../src/nic/device.js";
import { SyncCallClient } from "../../src/xen/sync-call.js";

/** The loopback address the tests' links and listeners use. */
export const HOST = "127.0.0.1";

/** A TCP port free on HOST a moment ago (listened on, then closed). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, HOST, r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** The NIC's control channel, as its driver domain calls it. */
export function control(nic: NicDevice): SyncCallClient<NicControlRequest> {
  const ep = nic.driverEndpoint();
  return new SyncCallClient<NicControlRequest>(ep.port, ep.replyWord);
}

/**
 * The unit a host bounds per peer: the address block one party holds. An IPv4 address is one
 * machine's (an IPv4-mapped IPv6 address is its IPv4 address); an IPv6 address is the /64 it
 * lies in, the smallest block a site or a host is given — counted per /128, anyone with a /64
 * had 2^64 addresses, and a per-address bound (NIC links, link-bound.ts; control-port slots,
 * cluster/host-daemon.ts) bounded nothing.
 */
import { isIPv6 } from "node:net";

/** `ip` (as a socket reports it) as the block it is bounded by: "a.b.c.d", or "x:x:x:x::/64". */
export function addressBlock(ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) return mapped[1];
  if (!isIPv6(ip)) return ip;
  const [head, tail = ""] = ip.toLowerCase().split("%")[0].split("::");
  const left = head === "" ? [] : head.split(":");
  const right = ip.includes("::") ? (tail === "" ? [] : tail.split(":")) : [];
  // An embedded IPv4 tail (::a.b.c.d) is two groups; only the first four groups matter here.
  const groups = [...left, ...new Array(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => Number.parseInt(g, 16).toString(16))
    .join(":")}::/64`;
}

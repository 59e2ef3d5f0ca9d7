/**
 * The unit a host bounds per peer: the address block one party holds. An IPv4 address is one
 * machine's (an IPv4-mapped IPv6 address is its IPv4 address); an IPv6 address is the /64 it
 * lies in, the smallest block a site or a host is given — counted per /128, anyone with a /64
 * had 2^64 addresses, and a per-address bound (NIC links, link-bound.ts; control-port slots,
 * cluster/host-daemon.ts) bounded nothing.
 *
 * handshakeBlock is wider, for connections that have not proved the key (pending-handshakes.ts).
 */
import { isIPv6 } from "node:net";

const MAPPED = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i;

/** The eight groups of an IPv6 address (its zone dropped; an embedded IPv4 tail is not read). */
function ipv6Groups(ip: string): number[] {
  const [head, tail = ""] = ip.toLowerCase().split("%")[0].split("::");
  const left = head === "" ? [] : head.split(":");
  const right = ip.includes("::") ? (tail === "" ? [] : tail.split(":")) : [];
  const groups = [...left, ...new Array(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right];
  return groups.map((g) => Number.parseInt(g, 16));
}

/** `ip` (as a socket reports it) as the block it is bounded by: "a.b.c.d", or "x:x:x:x::/64". */
export function addressBlock(ip: string): string {
  const mapped = MAPPED.exec(ip);
  if (mapped) return mapped[1];
  if (!isIPv6(ip)) return ip;
  // An embedded IPv4 tail (::a.b.c.d) is two groups; only the first four groups matter here.
  return `${ipv6Groups(ip)
    .slice(0, 4)
    .map((g) => g.toString(16))
    .join(":")}::/64`;
}

/**
 * `ip` as the block a listener shares its handshake slots by: "loopback" for every address of
 * this machine (127/8, ::1), else an IPv4 /24 ("a.b.c.0/24") or an IPv6 /48 ("x:x:x::/48").
 * Anyone may connect without the key, from every address it holds: counted per address, one
 * machine spreading its connections over 127.0.x.y, or a party over the addresses of its /24
 * or its /48 (what a site is commonly given), counted as that many parties.
 */
export function handshakeBlock(ip: string): string {
  const v4 = MAPPED.exec(ip)?.[1] ?? ip;
  const octets = /^(\d+)\.(\d+)\.(\d+)\.\d+$/.exec(v4);
  if (octets) return octets[1] === "127" ? "loopback" : `${octets[1]}.${octets[2]}.${octets[3]}.0/24`;
  if (!isIPv6(ip)) return ip;
  const groups = ipv6Groups(ip);
  if (groups.slice(0, 7).every((g) => g === 0) && groups[7] === 1) return "loopback";
  return `${groups
    .slice(0, 3)
    .map((g) => g.toString(16))
    .join(":")}::/48`;
}

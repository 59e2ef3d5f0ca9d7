/**
 * Where a job's hosts come from, as text: `host[:port]` addresses, `--hosts` lists
 * (`a,b:7471,c*4`), hostfiles in Open MPI's format (`hostname slots=N [max_slots=M]`, `#`
 * comments, repeated hosts add up) and a Slurm allocation's environment (the compressed
 * node list `node[01-03,07],gpu5` and task counts `2(x3),1`). Everything here is user input:
 * every error says where (item, line) and what to write instead.
 */
import net from "node:net";

/** The control port `myrixen host` listens on unless told otherwise. */
export const DEFAULT_CONTROL_PORT = 7470;

/** At most this many hosts from one list, file or node list (a typo must not expand to millions). */
export const MAX_HOSTS = 65536;
const MAX_SLOTS = 4096;

export class HostListError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join("\n"));
  }
}

export interface HostAddress {
  host: string;
  port: number;
}

/** One host of a job, as the user listed it. */
export interface HostEntry extends HostAddress {
  /** How the user named it: `host:port` (IPv6 in brackets). */
  label: string;
  /** Ranks it may take (undefined: what the host itself reports). */
  slots?: number;
  /** The most ranks it may take with --oversubscribe (undefined: no limit). */
  maxSlots?: number;
}

const HOSTNAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})$/;
const ZONE = /%[A-Za-z0-9_.-]+$/;

/** A well-formed IPv6 literal (net.isIPv6: "::::" is not), optionally with a %zone. */
function isIPv6(s: string): boolean {
  return net.isIPv6(s) && (!s.includes("%") || ZONE.test(s));
}

export function formatAddress(a: HostAddress): string {
  return `${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}`;
}

function parsePort(s: string, allowZero: boolean): number | string {
  if (!/^\d{1,5}$/.test(s)) return `port "${s}" is not a number`;
  const p = Number(s);
  if (p > 65535 || (p === 0 && !allowZero)) return `port ${p} is outside ${allowZero ? 0 : 1}..65535`;
  return p;
}

/**
 * `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal. Returns the address or a
 * string saying what is wrong (callers add where the text came from).
 */
export function parseAddress(text: string, defaultPort: number, allowZeroPort = false): HostAddress | string {
  const s = text.trim();
  if (s === "") return "an empty host address";
  let host: string;
  let port = defaultPort;
  const bracket = /^\[([^\]]*)\](?::(.*))?$/.exec(s);
  if (bracket) {
    host = bracket[1];
    if (!isIPv6(host)) return `"${s}": "${host}" in brackets is not an IPv6 address`;
    if (bracket[2] !== undefined) {
      const p = parsePort(bracket[2], allowZeroPort);
      if (typeof p === "string") return `"${s}": ${p}`;
      port = p;
    }
    return { host, port };
  }
  const colons = s.split(":").length - 1;
  if (colons > 1) {
    // Several colons and no brackets: an IPv6 literal without a port.
    if (!isIPv6(s))
      return `"${s}" is not a host name, IPv4 or IPv6 address (write IPv6 with a port as [addr]:port)`;
    return { host: s, port };
  }
  if (colons === 1) {
    const i = s.indexOf(":");
    host = s.slice(0, i);
    const p = parsePort(s.slice(i + 1), allowZeroPort);
    if (typeof p === "string") return `"${s}": ${p}`;
    port = p;
  } else host = s;
  if (!HOSTNAME.test(host))
    return `"${host}" is not a valid host name (letters, digits, ".", "-", "_"; IPv6 in [brackets])`;
  return { host, port };
}

function entry(a: HostAddress, slots?: number, maxSlots?: number): HostEntry {
  return { ...a, label: formatAddress(a), slots, maxSlots };
}

function count(text: string, what: string, min: number): number | string {
  if (!/^\d+$/.test(text)) return `${what} must be a whole number, got "${text}"`;
  const n = Number(text);
  if (n < min || n > MAX_SLOTS) return `${what} must be in ${min}..${MAX_SLOTS}, got ${n}`;
  return n;
}

/**
 * `--hosts a,b:7471,c*4`: comma-separated `host[:port][*slots]`. Repeated hosts add up (see
 * mergeHosts). Throws HostListError naming each bad item.
 */
export function parseHostList(text: string, defaultPort = DEFAULT_CONTROL_PORT): HostEntry[] {
  const items = text.split(",");
  const problems: string[] = [];
  const out: HostEntry[] = [];
  items.forEach((raw, i) => {
    const item = raw.trim();
    const where = `--hosts item ${i + 1}`;
    if (item === "") {
      problems.push(`${where} is empty (write host[:port][*slots], separated by commas)`);
      return;
    }
    const star = item.lastIndexOf("*");
    let slots: number | undefined;
    let addrText = item;
    if (star >= 0) {
      const c = count(item.slice(star + 1), "the slot count after *", 1);
      if (typeof c === "string") {
        problems.push(`${where} "${item}": ${c}`);
        return;
      }
      slots = c;
      addrText = item.slice(0, star);
    }
    const a = parseAddress(addrText, defaultPort);
    if (typeof a === "string") problems.push(`${where}: ${a}`);
    else out.push(entry(a, slots));
  });
  if (problems.length > 0) throw new HostListError(problems);
  if (out.length > MAX_HOSTS)
    throw new HostListError([`--hosts lists ${out.length} hosts; at most ${MAX_HOSTS}`]);
  return mergeHosts(out);
}

/**
 * `myrixen host --peers a,b:7471` (and the config file's "peers"): comma-separated
 * `host[:port]`, each host once — a peer is linked, not given slots, so a repeat or a slot
 * count is a mistake, said as one. Throws HostListError naming each bad item.
 */
export function parsePeerList(
  text: string,
  what = "--peers",
  defaultPort = DEFAULT_CONTROL_PORT,
): HostEntry[] {
  const problems: string[] = [];
  const out: HostEntry[] = [];
  const first = new Map<string, number>();
  text.split(",").forEach((raw, i) => {
    const item = raw.trim();
    const where = `${what} item ${i + 1}`;
    if (item === "") {
      problems.push(`${where} is empty (write host[:port], separated by commas)`);
      return;
    }
    if (item.includes("*")) {
      problems.push(`${where} "${item}": a peer takes no slot count (write host[:port])`);
      return;
    }
    const a = parseAddress(item, defaultPort);
    if (typeof a === "string") {
      problems.push(`${where}: ${a}`);
      return;
    }
    const e = entry(a);
    const seen = first.get(e.label);
    if (seen !== undefined) {
      problems.push(`${what} names ${e.label} twice (items ${seen} and ${i + 1}); list each peer once`);
      return;
    }
    first.set(e.label, i + 1);
    out.push(e);
  });
  if (problems.length > 0) throw new HostListError(problems);
  if (out.length > MAX_HOSTS)
    throw new HostListError([`${what} lists ${out.length} hosts; at most ${MAX_HOSTS}`]);
  return out;
}

/**
 * An Open MPI hostfile: one host per line, `hostname[:port] [slots=N] [max_slots=M]`, `#`
 * starts a comment, blank lines are skipped, a host listed again adds its slots. Every bad
 * line is reported with its number.
 */
export function parseHostfile(
  text: string,
  file = "hostfile",
  defaultPort = DEFAULT_CONTROL_PORT,
): HostEntry[] {
  const problems: string[] = [];
  const out: HostEntry[] = [];
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const where = `${file}:${i + 1}`;
    const line = raw.replace(/#.*$/, "").trim();
    if (line === "") return;
    const [addrText, ...attrs] = line.split(/\s+/);
    const a = parseAddress(addrText, defaultPort);
    if (typeof a === "string") {
      problems.push(`${where}: ${a}`);
      return;
    }
    let slots: number | undefined;
    let maxSlots: number | undefined;
    let bad = false;
    for (const attr of attrs) {
      const m = /^([A-Za-z_-]+)=(.*)$/.exec(attr);
      const key = m?.[1].toLowerCase();
      if (!m || !key) {
        problems.push(`${where}: "${attr}" is not key=value (expected slots=N or max_slots=M)`);
        bad = true;
        continue;
      }
      if (key === "slots") {
        const c = count(m[2], "slots", 1);
        if (typeof c === "string") {
          problems.push(`${where}: ${c}`);
          bad = true;
        } else slots = c;
      } else if (key === "max_slots" || key === "max-slots" || key === "slots_max") {
        const c = count(m[2], "max_slots", 1);
        if (typeof c === "string") {
          problems.push(`${where}: ${c}`);
          bad = true;
        } else maxSlots = c;
      } else {
        problems.push(`${where}: unknown attribute "${m[1]}" (expected slots=N or max_slots=M)`);
        bad = true;
      }
    }
    if (bad) return;
    if (slots !== undefined && maxSlots !== undefined && maxSlots < slots) {
      problems.push(`${where}: max_slots=${maxSlots} is less than slots=${slots}`);
      return;
    }
    out.push(entry(a, slots, maxSlots));
  });
  if (problems.length > 0) throw new HostListError(problems);
  if (out.length === 0) throw new HostListError([`${file}: no hosts (every line is blank or a comment)`]);
  if (out.length > MAX_HOSTS)
    throw new HostListError([`${file} lists ${out.length} hosts; at most ${MAX_HOSTS}`]);
  return mergeHosts(out);
}

/**
 * One entry per host:port, in order of first appearance. Repeats add up, like Open MPI's
 * `--host a,a`: an entry without a slot count counts 1 when its host is listed more than
 * once; a host listed once without a count takes the slots its `myrixen host` reports.
 * max_slots survives only if every entry of the host gives it (summed).
 */
export function mergeHosts(entries: HostEntry[]): HostEntry[] {
  const groups = new Map<string, HostEntry[]>();
  for (const e of entries) {
    const g = groups.get(e.label);
    if (g) g.push(e);
    else groups.set(e.label, [e]);
  }
  return [...groups.values()].map((g) => {
    if (g.length === 1) return g[0];
    const slots = g.reduce((s, e) => s + (e.slots ?? 1), 0);
    const maxSlots = g.every((e) => e.maxSlots !== undefined)
      ? g.reduce((s, e) => s + (e.maxSlots ?? 0), 0)
      : undefined;
    return { ...g[0], slots, maxSlots };
  });
}

// ---- Slurm ---------------------------------------------------------------------------------

/** Splits at commas outside brackets; throws on unbalanced or nested brackets. */
function splitTopLevel(s: string, what: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "[") {
      if (depth > 0) throw new HostListError([`${what}: nested "[" at character ${i + 1} of "${s}"`]);
      depth++;
    } else if (c === "]") {
      if (depth === 0) throw new HostListError([`${what}: "]" without "[" at character ${i + 1} of "${s}"`]);
      depth--;
    } else if (c === "," && depth === 0) {
      parts.push(s.slice(start, i));
      start = i + 1;
    }
  }
  if (depth !== 0) throw new HostListError([`${what}: "[" is never closed in "${s}"`]);
  parts.push(s.slice(start));
  return parts;
}

/** The values of one bracket group, `01-03,07` → ["01","02","03","07"] (width of the lower bound kept). */
function expandRanges(inner: string, item: string, what: string): string[] {
  const out: string[] = [];
  for (const r of inner.split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(r.trim());
    if (!m) throw new HostListError([`${what}: "${r}" in "${item}" is not a number or a range like 01-03`]);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) throw new HostListError([`${what}: range "${r}" in "${item}" runs backwards`]);
    if (hi - lo + 1 + out.length > MAX_HOSTS)
      throw new HostListError([`${what}: "${item}" expands to more than ${MAX_HOSTS} hosts`]);
    const width = m[1].length;
    for (let v = lo; v <= hi; v++) out.push(String(v).padStart(width, "0"));
  }
  return out;
}

/**
 * Expands Slurm's compressed host list: `node[01-03,07],gpu5` → node01 node02 node03 node07
 * gpu5; several bracket groups in one name multiply (`r[1-2]n[1-2]` → r1n1 r1n2 r2n1 r2n2).
 */
export function expandSlurmNodelist(text: string, what = "SLURM_JOB_NODELIST"): string[] {
  const out: string[] = [];
  for (const raw of splitTopLevel(text.trim(), what)) {
    const item = raw.trim();
    if (item === "") throw new HostListError([`${what}: an empty name in "${text}"`]);
    let names = [""];
    const re = /([^[\]]*)(?:\[([^\]]*)\])?/g;
    let m: RegExpExecArray | null;
    while ((m = re.exec(item)) !== null && m[0] !== "") {
      const prefix = m[1];
      const values = m[2] === undefined ? [""] : expandRanges(m[2], item, what);
      const next: string[] = [];
      for (const n of names) for (const v of values) next.push(n + prefix + v);
      if (next.length > MAX_HOSTS)
        throw new HostListError([`${what}: "${item}" expands to more than ${MAX_HOSTS} hosts`]);
      names = next;
    }
    for (const n of names)
      if (!HOSTNAME.test(n))
        throw new HostListError([`${what}: "${n}" (from "${item}") is not a valid host name`]);
    out.push(...names);
    if (out.length > MAX_HOSTS) throw new HostListError([`${what} expands to more than ${MAX_HOSTS} hosts`]);
  }
  return out;
}

/** Slurm's SLURM_TASKS_PER_NODE: `2(x3),1` → [2, 2, 2, 1]. */
export function expandSlurmTasks(text: string, what = "SLURM_TASKS_PER_NODE"): number[] {
  const out: number[] = [];
  for (const raw of text.split(",")) {
    const m = /^(\d+)(?:\(x(\d+)\))?$/.exec(raw.trim());
    if (!m) throw new HostListError([`${what}: "${raw}" is not N or N(xK) in "${text}"`]);
    const n = Number(m[1]);
    const times = m[2] === undefined ? 1 : Number(m[2]);
    if (times < 1) throw new HostListError([`${what}: "${raw}" repeats 0 times`]);
    if (out.length + times > MAX_HOSTS)
      throw new HostListError([`${what} covers more than ${MAX_HOSTS} nodes`]);
    for (let i = 0; i < times; i++) out.push(n);
  }
  return out;
}

export interface SlurmAllocation {
  hosts: HostEntry[];
  /** SLURM_NTASKS (the default -n), if set. */
  ntasks?: number;
}

/**
 * The job's hosts inside a Slurm allocation (undefined outside one): the node list, each
 * node's task count as its slots, and SLURM_NTASKS. Each node is reached on `port`.
 */
export function hostsFromSlurm(
  env: NodeJS.ProcessEnv,
  port = DEFAULT_CONTROL_PORT,
): SlurmAllocation | undefined {
  const listVar = env.SLURM_JOB_NODELIST !== undefined ? "SLURM_JOB_NODELIST" : "SLURM_NODELIST";
  const list = env[listVar];
  if (list === undefined || list.trim() === "") return undefined;
  const nodes = expandSlurmNodelist(list, listVar);
  let slots: number[] | undefined;
  const tpn = env.SLURM_TASKS_PER_NODE;
  if (tpn !== undefined && tpn.trim() !== "") {
    slots = expandSlurmTasks(tpn);
    if (slots.length !== nodes.length)
      throw new HostListError([
        `SLURM_TASKS_PER_NODE="${tpn}" covers ${slots.length} nodes but ${listVar}="${list}" has ${nodes.length}`,
      ]);
  }
  let ntasks: number | undefined;
  const nt = env.SLURM_NTASKS ?? env.SLURM_NPROCS;
  if (nt !== undefined && nt.trim() !== "") {
    if (!/^\d+$/.test(nt.trim()) || Number(nt) < 1)
      throw new HostListError([`SLURM_NTASKS="${nt}" is not a positive whole number`]);
    ntasks = Number(nt);
  }
  const hosts = nodes.map((host, i) => entry({ host, port }, slots?.[i] === 0 ? undefined : slots?.[i]));
  return { hosts: mergeHosts(hosts), ntasks };
}

/**
 * What mx_open_endpoint and the calls after it are given, checked as given: the endpoint's
 * options, 32-bit words (match values, masks, ids), timeouts and spins. Nothing here runs the
 * caller's code (no valueOf, toString or getters: `shown` describes a value without them),
 * so what was checked is what is used; a refusal is MX_BAD_PARAM_VAL naming the argument.
 */
import { DEFAULT_RNDV_THRESHOLD, MX_ANY_ENDPOINT, MxError } from "./codes.js";
import { EtherHub } from "./ether.js";
import { DEFAULT_MAX_UNEXPECTED_BYTES } from "./matching.js";
import { DEFAULT_TRACE_RECORDS } from "./trace.js";

/** How long a blocking call spins on progress before it sleeps, µs (docs/design-notes.md, "Waits"). */
export const DEFAULT_SPIN_US = 20;

export interface EndpointOptions {
  /** MX_ANY_ENDPOINT (default) or a specific id. */
  endpointId?: number;
  key: number;
  /** Eager up to this many bytes; rendezvous above (default 32 KiB; through the NIC, 64 KiB). */
  rndvThreshold?: number;
  spinUs?: number;
  /**
   * Let the spin grow up to this many µs while waits end within it and the spinning thread is
   * not preempted (spin-budget.ts); default: spinUs, a fixed spin. MPI sets it when its ranks
   * have a core each.
   */
  spinMaxUs?: number;
  /** This domain's memory: buffers in it are registered in place; others are bounce-copied. */
  memory?: SharedArrayBuffer;
  /** Stamp each message's stages into a trace buffer (true, or its capacity in records). */
  trace?: boolean | number;
  /** The guest's MX-over-Ethernet hub (netfront): the split path, and the fallback. */
  ether?: EtherHub;
  /** Start on the split path (every peer over Ethernet). */
  split?: boolean;
  /**
   * Eager bytes kept for messages no receive was posted for, at most (default 64 MiB): past
   * it, the peer that sent the most of them is failed (matching.ts).
   */
  maxUnexpectedBytes?: number;
}

/** How a value the caller passed reads in an error message, without running any of its code (valueOf, toString, getters). */
export function shown(v: unknown): string {
  switch (typeof v) {
    case "number":
    case "boolean":
    case "undefined":
    case "symbol":
      return String(v);
    case "bigint":
      return `${v}n (a BigInt)`;
    case "string":
      return `${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)} (a string)`;
    case "function":
      return "a function";
    default:
      return v === null ? "null" : "an object";
  }
}

/**
 * A 32-bit word argument (a match value or mask word, an endpoint id) as given: a number that
 * is an integer in 0..2^32−1, or MX_BAD_PARAM_VAL naming `what`. No conversion runs (no
 * valueOf), so what was checked is what is used.
 */
export function u32Arg(v: unknown, what: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 0xffffffff)
    throw new MxError(
      "MX_BAD_PARAM_VAL",
      `${what} must be an integer in 0..2^32−1 (a number, not converted), got ${shown(v)}`,
    );
  return v >>> 0; // -0 → 0
}

/**
 * A timeout in ms as given (0 = MX_INFINITE; Infinity waits forever too), or MX_BAD_PARAM_VAL:
 * NaN, a negative number or a non-number would quietly mean "now" or "never".
 */
export function checkTimeout(ms: unknown, what = "timeout"): number {
  if (typeof ms !== "number" || Number.isNaN(ms) || ms < 0)
    throw new MxError(
      "MX_BAD_PARAM_VAL",
      `${what} must be a number of ms ≥ 0 (0 = MX_INFINITE), got ${shown(ms)}`,
    );
  return ms;
}

/** The longest spin a blocking call may be told to make, µs (spinUs, spinMaxUs): 1 s. */
export const MAX_SPIN_US = 1_000_000;

/** A spinUs or spinMaxUs as given, or MX_BAD_PARAM_VAL naming `what`. */
export function checkSpin(us: unknown, what: "spinUs" | "spinMaxUs"): number {
  if (typeof us !== "number" || !Number.isFinite(us) || us < 0 || us > MAX_SPIN_US)
    throw new MxError(
      "MX_BAD_PARAM_VAL",
      `${what} must be a number of µs ≥ 0 (at most ${MAX_SPIN_US}), got ${shown(us)}`,
    );
  return us;
}

/** A maxUnexpectedBytes as given (at least one eager message of 64 KiB), or MX_BAD_PARAM_VAL. */
export function checkMaxUnexpected(n: number): number {
  if (!Number.isSafeInteger(n) || n < 65536)
    throw new MxError("MX_BAD_PARAM_VAL", `maxUnexpectedBytes must be an integer ≥ 65536, got ${shown(n)}`);
  return n;
}

/** The largest trace buffer, in records (nic/trace-ring.ts). */
export const MAX_TRACE_RECORDS = 1 << 24;

/** A trace buffer's capacity as given, or MX_BAD_PARAM_VAL. */
export function checkTraceCapacity(n: unknown, what: string): number {
  if (typeof n !== "number" || !Number.isInteger(n) || n < 1 || n > MAX_TRACE_RECORDS)
    throw new MxError(
      "MX_BAD_PARAM_VAL",
      `${what} must be an integer in 1..${MAX_TRACE_RECORDS} (records), got ${shown(n)}`,
    );
  return n;
}

/** The open options checked before the driver opens anything: what they say, or MX_BAD_PARAM_VAL. */
export function checkOptions(opts: EndpointOptions) {
  if (typeof opts !== "object" || opts === null)
    throw new MxError("MX_BAD_PARAM_VAL", `endpoint options must be an object, got ${shown(opts)}`);
  if (!Number.isInteger(opts.key) || opts.key < 0 || opts.key > 0xffffffff)
    throw new MxError(
      "MX_BAD_PARAM_VAL",
      `endpoint key must be a 32-bit unsigned integer, got ${shown(opts.key)}`,
    );
  const endpointId = u32Arg(opts.endpointId ?? MX_ANY_ENDPOINT, "endpointId");
  const t = opts.rndvThreshold ?? DEFAULT_RNDV_THRESHOLD;
  if (!Number.isInteger(t) || t < 0 || t > 64 * 1024)
    throw new MxError("MX_BAD_PARAM_VAL", `rndvThreshold must be an integer in 0..65536, got ${shown(t)}`);
  const spinUs = checkSpin(opts.spinUs ?? DEFAULT_SPIN_US, "spinUs");
  const spinMaxUs = checkSpin(opts.spinMaxUs ?? spinUs, "spinMaxUs");
  const maxUnexpected = checkMaxUnexpected(opts.maxUnexpectedBytes ?? DEFAULT_MAX_UNEXPECTED_BYTES);
  const tr = opts.trace;
  const trace =
    tr === undefined || tr === false
      ? 0
      : tr === true
        ? DEFAULT_TRACE_RECORDS
        : checkTraceCapacity(tr, "trace (true, or the trace buffer's capacity)");
  if (opts.memory !== undefined && !(opts.memory instanceof SharedArrayBuffer))
    throw new MxError(
      "MX_BAD_PARAM_VAL",
      `memory must be this domain's memory (a SharedArrayBuffer: guest.memory.ram), got ${shown(opts.memory)}`,
    );
  if (opts.ether !== undefined && !(opts.ether instanceof EtherHub))
    throw new MxError(
      "MX_BAD_PARAM_VAL",
      `ether must be the guest's MX-over-Ethernet hub (Mx.init opens it; leave the option out), got ${shown(opts.ether)}`,
    );
  if (opts.split !== undefined && typeof opts.split !== "boolean")
    throw new MxError("MX_BAD_PARAM_VAL", `split must be true or false, got ${shown(opts.split)}`);
  if (opts.split === true && opts.ether === undefined)
    throw new MxError("MX_NO_DEV", "the split path needs a network device (netfront); this domain has none");
  return { endpointId, rndvThreshold: t, spinUs, spinMaxUs, maxUnexpected, trace };
}

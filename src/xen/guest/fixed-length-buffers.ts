/**
 * A guest's realm makes fixed-length buffers only: no resizable ArrayBuffer, no growable
 * SharedArrayBuffer (ES2024's `maxByteLength` option, `resize()`, `grow()`).
 *
 * The hypervisor bounds what a guest holds outside its heap by reading its isolate's
 * `process.memoryUsage().arrayBuffers` (hypervisor/buffer-watch.ts), which counts what Node's
 * ArrayBuffer allocator handed out. V8 takes the memory of a resizable or growable buffer from
 * its own page allocator instead, and no figure Node 20 gives counts it (measured in a worker:
 * `arrayBuffers`, `external`, `v8.getHeapStatistics().external_memory` and the heap spaces all
 * stay put while 256 MiB of each kind is written; only the process's RSS moves). A guest held
 * 1 GiB that way under a 64 MiB limit. What cannot be measured is not handed out: before lockdown,
 * the realm's ArrayBuffer and SharedArrayBuffer constructors (the globals and the
 * `constructor` of their prototypes, the only ways to them: any typed array's buffer leads
 * there) become ones that refuse `maxByteLength` and otherwise construct as the real ones do
 * (subclasses, `new.target`, `instanceof` and species included), and `resize`/`grow` refuse
 * (a resizable buffer could still arrive from the host, in a message or the boot arguments).
 * The real constructors stay in this module's closure; SES then freezes what is installed
 * here as the realm's intrinsics. The library in the same realm never makes such buffers; it
 * still copes with the ones a trusted caller hands it (mx/codes.ts checkBuffer).
 *
 * Turning the feature off in V8 instead (`v8.setFlagsFromString("--no-harmony-rab-gsab")`,
 * which does reach workers started afterwards) would be process-wide, for the host's code as
 * well, and rests on a feature flag, not an API, that V8 may remove once the feature is settled.
 */

/** What a guest is told when it asks for a buffer that can grow. */
export const RESIZABLE_REFUSED =
  "buffers that can grow are not available to a guest: V8 allocates them where the hypervisor's meter of a guest's buffers (maxBufferMb) cannot see them; make a new fixed-length buffer and copy";

type BufferConstructor = new (length: number) => object;

const { construct, ownKeys } = Reflect;
// Object's, which throw when a property cannot be defined (Reflect's would return false).
const { defineProperty, getOwnPropertyDescriptor } = Object;

/**
 * Installs, in this realm, an ArrayBuffer and SharedArrayBuffer that make fixed-length buffers
 * only; returns them. Call once, before lockdown (afterwards the intrinsics are frozen).
 */
export function fixedLengthBuffersOnly(): {
  ArrayBuffer: ArrayBufferConstructor;
  SharedArrayBuffer: SharedArrayBufferConstructor;
} {
  return {
    ArrayBuffer: fixedLength(globalThis.ArrayBuffer, "ArrayBuffer", "resize") as ArrayBufferConstructor,
    SharedArrayBuffer: fixedLength(
      globalThis.SharedArrayBuffer,
      "SharedArrayBuffer",
      "grow",
    ) as SharedArrayBufferConstructor,
  };
}

function fixedLength(Real: BufferConstructor, name: string, grow: "resize" | "grow"): BufferConstructor {
  const refused = (what: string) => new TypeError(`${what}: ${RESIZABLE_REFUSED}`);
  const Fixed = function (this: unknown, length: unknown, options?: unknown) {
    if (new.target === undefined) throw new TypeError(`Constructor ${name} requires 'new'`);
    // Read once, as the real constructor reads it; only the length is passed on, so a getter
    // or Proxy gets no second read to change its answer.
    if (
      ((typeof options === "object" && options !== null) || typeof options === "function") &&
      (options as { maxByteLength?: unknown }).maxByteLength !== undefined
    )
      throw refused(`new ${name}(length, { maxByteLength })`);
    return construct(Real, [length], new.target) as object;
  };
  // length, name, prototype (the real one: every buffer's prototype), isView, @@species.
  for (const key of ownKeys(Real)) defineProperty(Fixed, key, getOwnPropertyDescriptor(Real, key)!);
  const proto = Real.prototype as Record<string, unknown>;
  defineProperty(proto, "constructor", { value: Fixed });
  const method = {
    [grow](_length: number): never {
      throw refused(`${name}.prototype.${grow}`);
    },
  }[grow];
  defineProperty(proto, grow, { value: method });
  defineProperty(globalThis, name, { value: Fixed });
  return Fixed as unknown as BufferConstructor;
}

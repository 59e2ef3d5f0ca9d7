/**
 * The guest sandbox (worker side): runs a guest program so that its only way out is the
 * `guest` object and the MyriXen library built on it.
 *
 * Hardened JavaScript (SES): `lockdown()` freezes the realm's shared intrinsics (so no guest
 * can pollute what the library runs on) and tames the function constructors (so
 * `x.constructor.constructor("return this")` yields nothing), and the program's modules are
 * evaluated in a `Compartment` whose global object holds standard JavaScript plus what is
 * endowed below: no `process`, `require`, Node built-ins, `workerData` or `parentPort`.
 * Imports go through `require` below, which serves the image's own modules, the library
 * (one copy, loaded by Node outside the compartment: trusted code with no scope proxy on its
 * hot paths), and refuses everything else with an error naming it.
 *
 * The compartment's global object is hardened before the first evaluation: SES then binds
 * every global a module reads (Atomics, Math, typed arrays...) as a constant instead of
 * looking it up through its scope proxy on each use, which keeps guest hot loops as fast as
 * outside a sandbox.
 */
import { SourceMap } from "node:module";
import { formatWithOptions } from "node:util";
import { fixedLengthBuffersOnly } from "./fixed-length-buffers.js";
import type { GuestImage, GuestModuleImage } from "./loader.js";
import { builtinName, frameLocation, HOST_SIDE_EXPORTS, NOT_IN_GUEST, programMain } from "./reach.js";
import { runSesScript, SES_REPAIR_OPTIONS } from "./ses-script.js";

export type GuestMain = (guest: unknown) => unknown;

function unavailable(what: string, hint = ""): TypeError {
  return new TypeError(`${what} ${NOT_IN_GUEST}${hint}`);
}

/** Node's powers, captured from the worker's global before lockdown and never handed out as such. */
const host = {
  console: globalThis.console,
  setTimeout: globalThis.setTimeout,
  clearTimeout: globalThis.clearTimeout,
  setInterval: globalThis.setInterval,
  clearInterval: globalThis.clearInterval,
  setImmediate: globalThis.setImmediate,
  clearImmediate: globalThis.clearImmediate,
  queueMicrotask: globalThis.queueMicrotask,
  structuredClone: globalThis.structuredClone,
  performance: globalThis.performance,
  crypto: globalThis.crypto,
  Atomics: globalThis.Atomics,
  TextEncoder: globalThis.TextEncoder,
  TextDecoder: globalThis.TextDecoder,
  Date: globalThis.Date,
  Math: globalThis.Math,
  Float32Array: globalThis.Float32Array,
  Float64Array: globalThis.Float64Array,
};

interface Ses {
  repairIntrinsics(options: typeof SES_REPAIR_OPTIONS): void;
  hardenIntrinsics(): void;
  harden<T>(x: T): T;
  Compartment: new (
    options: Record<string, unknown>,
  ) => {
    globalThis: Record<string, unknown>;
    evaluate(source: string): unknown;
  };
}

let ses: Ses | undefined;
/** The realm's SharedArrayBuffer once it makes fixed-length buffers only (fixed-length-buffers.ts). */
let sharedArrayBuffer: SharedArrayBufferConstructor | undefined;

/**
 * The prototypes that typed-array element stores look through (guest memory, windows,
 * channels). V8 sends every keyed store on an object whose prototype
 * chain was made read-only by Object.freeze down a slow path (a typed-array store ~25× slower,
 * measured here), but not when the same prototype was frozen property by property before
 * Object.freeze meets it. So these are frozen that way, between SES's repairs and its hardening.
 */
function elementStorePrototypes(): object[] {
  const typedArray = Object.getPrototypeOf(Int8Array) as { prototype: object };
  const kinds = [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array];
  const more = [Float32Array, Float64Array, BigInt64Array, BigUint64Array];
  // Not Array.prototype: redefining its `constructor` (as this does) would disable V8's fast
  // splice/slice for every array (~15× slower, measured); Object.freeze does not.
  return [Object.prototype, typedArray.prototype, ...[...kinds, ...more].map((k) => k.prototype)];
}

/**
 * Makes `o` frozen property by property, leaving `spare` (the properties SES's override
 * taming turns into accessors next) configurable; then no property can be added.
 */
function freezeByProperty(o: object, spare: ReadonlySet<PropertyKey>): void {
  for (const key of Reflect.ownKeys(o)) {
    if (spare.has(key)) continue;
    const d = Object.getOwnPropertyDescriptor(o, key)!;
    Object.defineProperty(
      o,
      key,
      "value" in d ? { writable: false, configurable: false } : { configurable: false },
    );
  }
  Object.preventExtensions(o);
}

/**
 * Lockdown's repairs (properties deleted, redefined one by one) leave V8 holding many
 * intrinsics in dictionary mode, and the library's hot paths then lose the fast paths that
 * assume a plain Array.prototype, Atomics, Math...: Array.prototype.push and for-of over an
 * array measured ~15× slower. Using an object as a prototype makes V8 turn it back into a
 * fast object (its properties and their attributes unchanged), so do that for every frozen
 * object reachable from the standard globals.
 */
function refastIntrinsics(): void {
  const g = globalThis as unknown as Record<string, unknown>;
  const roots: unknown[] = STANDARD_GLOBALS.map((name) => g[name]);
  roots.push(
    Object.getPrototypeOf([][Symbol.iterator]()),
    Object.getPrototypeOf(new Map()[Symbol.iterator]()),
    Object.getPrototypeOf(new Set()[Symbol.iterator]()),
    Object.getPrototypeOf(""[Symbol.iterator]()),
    Object.getPrototypeOf(function* () {}),
    Object.getPrototypeOf(async () => {}),
    Object.getPrototypeOf(async function* () {}),
  );
  const seen = new Set<object>();
  const queue = roots.filter(
    (x): x is object => (typeof x === "object" || typeof x === "function") && x !== null,
  );
  for (let i = 0; i < queue.length; i++) {
    const o = queue[i];
    if (seen.has(o) || !Object.isFrozen(o)) continue;
    seen.add(o);
    makeFast(o);
    const proto = Object.getPrototypeOf(o);
    if (proto) queue.push(proto);
    for (const key of Reflect.ownKeys(o)) {
      const d = Object.getOwnPropertyDescriptor(o, key)!;
      for (const v of [d.value, d.get, d.set])
        if ((typeof v === "object" || typeof v === "function") && v !== null) queue.push(v);
    }
  }
}

/**
 * The classic way to get V8 to turn `o` back into a fast object: make it the prototype of a
 * constructor, instantiate it, and load a property through it (the load is what migrates it).
 */
function makeFast(o: object): void {
  function Fast(this: object) {}
  Fast.prototype = o;
  const receiver = new (Fast as unknown as new () => Record<string, unknown>)();
  const probe = () => typeof receiver.__makeFastProbe__;
  probe();
  probe();
}

const STANDARD_GLOBALS = [
  "Object",
  "Function",
  "Array",
  "Number",
  "Boolean",
  "String",
  "Symbol",
  "BigInt",
  "Date",
  "Promise",
  "RegExp",
  "Error",
  "AggregateError",
  "EvalError",
  "RangeError",
  "ReferenceError",
  "SyntaxError",
  "TypeError",
  "URIError",
  "JSON",
  "Math",
  "Reflect",
  "Proxy",
  "ArrayBuffer",
  "SharedArrayBuffer",
  "Atomics",
  "DataView",
  "Int8Array",
  "Uint8Array",
  "Uint8ClampedArray",
  "Int16Array",
  "Uint16Array",
  "Int32Array",
  "Uint32Array",
  "Float32Array",
  "Float64Array",
  "BigInt64Array",
  "BigUint64Array",
  "Map",
  "Set",
  "WeakMap",
  "WeakSet",
  "WeakRef",
  "FinalizationRegistry",
  "Iterator",
];

/**
 * Locks the worker's realm down (once). Library code loaded before or after keeps working.
 * `sesCache`: V8's code cache of SES's script, from the host (ses-cache.ts).
 *
 * The repairs (ses-script.ts SES_REPAIR_OPTIONS): stacks stay readable (errorTaming "unsafe",
 * stackFiltering "verbose": the host reports a crashed guest's stack; compartments still cannot
 * install Error.prepareStackTrace, so frames never reach guest code as objects). Node's own
 * console and uncaught-error handling stay as they are (a guest's uncaught error crashes its
 * domain, as before). overrideTaming "min": "moderate" turns every TypedArray.prototype method
 * (and Array.prototype.push) into an accessor so that code may assign over them; the data path
 * calls set/subarray per message and nothing here assigns over an intrinsic, so they stay plain
 * data properties.
 */
function lockdownRealm(sesCache?: Uint8Array): Ses {
  if (ses) return ses;
  // Before SES's script captures the intrinsics: no buffer that can grow, which V8 allocates
  // where the hypervisor's meter does not see (fixed-length-buffers.ts).
  sharedArrayBuffer = fixedLengthBuffersOnly().SharedArrayBuffer;
  runSesScript(sesCache);
  const g = globalThis as unknown as Ses;
  g.repairIntrinsics(SES_REPAIR_OPTIONS);
  // Of these, "min" override taming redefines only Object.prototype.toString, next.
  for (const proto of elementStorePrototypes())
    freezeByProperty(proto, new Set(proto === Object.prototype ? ["toString"] : []));
  g.hardenIntrinsics();
  // SES leaves these to the host: they are shared with the library (it waits and copies with
  // them), so freeze them before a guest can touch them.
  for (const x of [sharedArrayBuffer, host.Atomics, host.TextEncoder, host.TextDecoder]) g.harden(x);
  refastIntrinsics();
  installStackMapping();
  ses = g;
  return g;
}

// ---- stacks -------------------------------------------------------------------------------

/** Source maps of the sandbox's modules, by the URL their frames carry. */
const sourceMaps = new Map<string, { json: string; map?: SourceMap }>();
/**
 * Where the program's frames are: its modules' URLs and the files their source maps lead back
 * to (the .ts a compiled .js came from). A frame anywhere else is the library's, the runtime's
 * or Node's: it is left out of the stack a crashed guest reports (programStack).
 */
const programLocations = new Set<string>();
/** Lines of wrapper before a module's first line (the function head in loadSandboxedProgram). */
const WRAP_LINES = 1;

interface CallSite {
  getScriptNameOrSourceURL(): string | undefined;
  getLineNumber(): number | null;
  getColumnNumber(): number | null;
  toString(): string;
}

function mapFrame(frame: CallSite): string {
  const text = frame.toString();
  const url = frame.getScriptNameOrSourceURL();
  const entry = url ? sourceMaps.get(url) : undefined;
  const line = frame.getLineNumber();
  const column = frame.getColumnNumber();
  if (!entry || !url || line === null || column === null) return text;
  entry.map ??= new SourceMap(JSON.parse(entry.json));
  const e = entry.map.findEntry(line - 1 - WRAP_LINES, column - 1) as {
    originalSource?: string;
    originalLine?: number;
    originalColumn?: number;
  };
  if (!e?.originalSource || e.originalLine === undefined || e.originalColumn === undefined) return text;
  const source = new URL(e.originalSource, url).href;
  programLocations.add(source);
  return text.replace(`${url}:${line}:${column}`, `${source}:${e.originalLine + 1}:${e.originalColumn + 1}`);
}

/** Stacks through guest modules name the file and line the user wrote (TypeScript included). */
function installStackMapping(): void {
  (Error as unknown as { prepareStackTrace: unknown }).prepareStackTrace = (
    err: unknown,
    frames: CallSite[],
  ) => {
    let head: string;
    try {
      head = Error.prototype.toString.call(err);
    } catch {
      head = "Error";
    }
    // Where in the program's compiled code it was thrown, should it crash the guest (guestCrash).
    const site = frames.find((f) => moduleCode.has(f.getScriptNameOrSourceURL() ?? ""));
    if (site && ((typeof err === "object" && err !== null) || typeof err === "function"))
      crashSites.set(err, {
        url: site.getScriptNameOrSourceURL()!,
        line: site.getLineNumber() ?? 0,
        column: site.getColumnNumber() ?? 0,
      });
    return [head, ...frames.map((f) => `    at ${mapFrame(f)}`)].join("\n");
  };
}

/** The program's modules' compiled code, by URL: what the guest crashed on (absentGlobal). */
const moduleCode = new Map<string, string>();
/** An error's first frame in the program's own code (compiled positions), once its stack is made. */
const crashSites = new WeakMap<object, { url: string; line: number; column: number }>();

// ---- what a guest's global object holds ---------------------------------------------------

/** A timer handle that carries no Node object (a Timeout's fields link to the runtime's timers). */
function timers(harden: Ses["harden"]) {
  const real = new WeakMap<object, ReturnType<typeof setTimeout> | ReturnType<typeof setImmediate>>();
  const handle = (t: ReturnType<typeof setTimeout>) => {
    const h = harden({
      ref() {
        t.ref();
        return h;
      },
      unref() {
        t.unref();
        return h;
      },
      hasRef: () => t.hasRef(),
      refresh() {
        t.refresh();
        return h;
      },
      [Symbol.toPrimitive]: () => t[Symbol.toPrimitive](),
    });
    real.set(h, t);
    return h;
  };
  const callback = (f: unknown, args: unknown[]) => {
    if (typeof f !== "function") throw new TypeError("the timer callback must be a function");
    // Called without a `this`: Node would pass its Timeout object.
    return () => void Reflect.apply(f, undefined, args);
  };
  const clear = (clearer: (t: never) => void) => (h: unknown) => {
    const t = typeof h === "object" && h !== null ? real.get(h) : undefined;
    if (t) clearer(t as never);
  };
  return {
    setTimeout: (f: unknown, ms?: number, ...args: unknown[]) =>
      handle(host.setTimeout(callback(f, args), ms)),
    setInterval: (f: unknown, ms?: number, ...args: unknown[]) =>
      handle(host.setInterval(callback(f, args), ms)),
    setImmediate: (f: unknown, ...args: unknown[]) => {
      const i = host.setImmediate(callback(f, args));
      const h = harden({
        ref() {
          i.ref();
          return h;
        },
        unref() {
          i.unref();
          return h;
        },
        hasRef: () => i.hasRef(),
      });
      real.set(h, i);
      return h;
    },
    clearTimeout: clear(host.clearTimeout),
    clearInterval: clear(host.clearInterval),
    clearImmediate: clear(host.clearImmediate),
    queueMicrotask: (f: unknown) => host.queueMicrotask(callback(f, [])),
  };
}

/** console.* for a guest: formats in the runtime with custom inspect hooks off (they would be handed Node's inspect). */
function guestConsole() {
  const c = host.console;
  const fmt = (args: unknown[]) => formatWithOptions({ customInspect: false }, ...args);
  const out =
    (write: (s: string) => void) =>
    (...args: unknown[]) =>
      write(fmt(args));
  const log = out((s) => c.log(s));
  const error = out((s) => c.error(s));
  return {
    log,
    info: log,
    debug: log,
    dir: (x: unknown) => log(x),
    table: (x: unknown) => log(x),
    warn: error,
    error,
    trace: (...args: unknown[]) =>
      error(`Trace: ${fmt(args)}\n${new Error().stack?.split("\n").slice(2).join("\n")}`),
    assert: (ok: unknown, ...args: unknown[]) => {
      if (!ok) error(`Assertion failed${args.length ? `: ${fmt(args)}` : ""}`);
    },
  };
}

/** What a guest that reaches for `process.KEY` uses instead. */
function processHint(key: PropertyKey): string {
  if (key === "argv") return "; a program's arguments (what follows PROGRAM on `myrixen run`) are guest.argv";
  return "; a program's exit code is what main(guest) returns";
}

/** `process` fields that feature detection reads: a guest's `process` has none of them. */
const DETECTION_KEYS = new Set([
  "versions",
  "version",
  "release",
  "platform",
  "arch",
  "browser",
  "type",
  "title",
]);

/**
 * `process` for a guest: `exit(code)` ends the guest's own domain (as `process.exit` ends a
 * worker); anything else says it is not there. The exit code of a program is `main`'s return.
 */
function processStub(exit: (code: number) => never, env: Record<string, string>) {
  const target = Object.freeze({
    exit(code?: unknown) {
      const n = code === undefined ? 0 : Number(code);
      if (!Number.isInteger(n) || n < 0 || n > 255)
        throw new RangeError(`process.exit: the code must be an integer in 0..255, got ${String(code)}`);
      return exit(n);
    },
  });
  return new Proxy(target, {
    get(t, key) {
      if (key === "exit") return t.exit;
      if (key === "env") return env;
      // Symbols (inspection, coercion) and `then` (an await of it) find nothing, nor do the
      // fields isomorphic code reads to tell Node from a browser (`process.versions?.node`):
      // a guest is not Node, and such a check must not end it.
      if (typeof key === "symbol" || key === "then" || DETECTION_KEYS.has(key)) return undefined;
      throw unavailable(`process.${key}`, processHint(key));
    },
    set(_t, key) {
      throw unavailable(`process.${String(key)}`, processHint(key));
    },
  });
}

/**
 * TextEncoder and TextDecoder as a guest gets them. Node keeps an instance's state in
 * writable symbol-keyed properties of the instance (a decoder's native ICU converter among
 * them) and hands whatever they hold to C++: a guest that put a plain object in a decoder's
 * handle slot crashed the whole host process (SIGSEGV). These hold Node's own in a #private
 * field no guest reaches; everything else is Node's, called with the guest's arguments.
 */
type NodeDecoder = InstanceType<typeof host.TextDecoder>;
type NodeEncoder = InstanceType<typeof host.TextEncoder>;

class TextDecoder {
  readonly #d: NodeDecoder;
  constructor(...args: ConstructorParameters<typeof host.TextDecoder>) {
    this.#d = new host.TextDecoder(...args);
  }
  get encoding(): string {
    return this.#d.encoding;
  }
  get fatal(): boolean {
    return this.#d.fatal;
  }
  get ignoreBOM(): boolean {
    return this.#d.ignoreBOM;
  }
  decode(...args: Parameters<NodeDecoder["decode"]>): string {
    return this.#d.decode(...args);
  }
}

class TextEncoder {
  readonly #e = new host.TextEncoder();
  get encoding(): string {
    return this.#e.encoding;
  }
  encode(...args: Parameters<NodeEncoder["encode"]>): ReturnType<NodeEncoder["encode"]> {
    return this.#e.encode(...args);
  }
  encodeInto(...args: Parameters<NodeEncoder["encodeInto"]>): ReturnType<NodeEncoder["encodeInto"]> {
    return this.#e.encodeInto(...args);
  }
}

function endowments(
  harden: Ses["harden"],
  exit: (code: number) => never,
  env: Record<string, string>,
): Record<string, unknown> {
  const perf = host.performance;
  const crypto = host.crypto;
  return {
    ...timers(harden),
    console: guestConsole(),
    performance: { now: () => perf.now(), timeOrigin: perf.timeOrigin },
    crypto: {
      getRandomValues: <T extends ArrayBufferView>(a: T) => crypto.getRandomValues(a as never) as T,
      randomUUID: () => crypto.randomUUID(),
    },
    structuredClone: (v: unknown, o?: Parameters<typeof structuredClone>[1]) => host.structuredClone(v, o),
    // SES leaves shared memory out of compartments; a guest's memory is made of it.
    SharedArrayBuffer: sharedArrayBuffer,
    Atomics: host.Atomics,
    TextEncoder: harden(TextEncoder),
    TextDecoder: harden(TextDecoder),
    // A compartment's Date.now() and Math.random() throw; a guest may read the clock and draw numbers.
    Date: host.Date,
    Math: host.Math,
    // SES keeps the float arrays out of compartments (a NaN side channel that matters to
    // deterministic consensus, not here); numeric guests (NAS) live on them.
    Float32Array: host.Float32Array,
    Float64Array: host.Float64Array,
    process: processStub(exit, harden({ ...env })),
    require: (spec: unknown) => {
      throw unavailable(`require("${String(spec)}")`, "; import modules with import statements");
    },
  };
}

/**
 * Node globals a guest might look for, and what to use instead. They are simply absent, as in
 * a browser: `typeof Buffer` is "undefined", so the feature detection of isomorphic code works;
 * a program that uses one anyway fails as JavaScript fails on undefined, and the report of its
 * crash (guestCrash) adds why it is not there.
 */
const ABSENT: Record<string, string> = {
  Buffer: "; use Uint8Array, TextEncoder and TextDecoder",
  WebAssembly: "",
  global: "; use globalThis",
  __dirname: "; use import.meta.url",
  __filename: "; use import.meta.url",
};

/**
 * The frames of the program's own files in `stack`, the lines that are not frames (its
 * message) as they are: the library's, the runtime's and Node's frames say nothing about the
 * user's program. Undefined when no frame is the program's (an error of the loader or the
 * library alone): its message is then all there is to say.
 */
function programStack(stack: string): string | undefined {
  const lines = stack.split("\n");
  let frames = 0;
  const kept = lines.filter((line) => {
    if (!/^\s+at /.test(line)) return true;
    const where = frameLocation(line)?.where;
    const ours = where !== undefined && programLocations.has(where);
    if (ours) frames++;
    return ours;
  });
  return frames > 0 ? kept.join("\n") : kept.filter((l) => !/^\s+at /.test(l)).join("\n");
}

/**
 * The Node global (ABSENT) a guest's error came from, if it did: a compartment reads a global
 * it lacks as undefined (SES's scope terminator), so `Buffer.from(s)` fails as "Cannot read
 * properties of undefined (reading 'from')", `new Buffer(n)` as "Buffer is not a constructor".
 * The name is in the message, or just before where the program's code failed.
 */
function absentGlobal(thrown: object, name: string, message: string): string | undefined {
  const named = /^(\S+) is not (?:defined|a function|a constructor|iterable)$/.exec(message)?.[1];
  if (named !== undefined) return Object.hasOwn(ABSENT, named) ? named : undefined;
  if (name !== "TypeError" || !/^Cannot (?:read|set) properties of undefined/.test(message)) return undefined;
  const site = crashSites.get(thrown);
  const code = site && moduleCode.get(site.url);
  if (!site || code === undefined) return undefined;
  const line = code.split("\n")[site.line - 1 - WRAP_LINES] ?? "";
  const before = /(?:^|[^.\w$])([A-Za-z_$][\w$]*)\s*(?:\.|\[)\s*$/.exec(line.slice(0, site.column - 1))?.[1];
  return before !== undefined && Object.hasOwn(ABSENT, before) ? before : undefined;
}

/**
 * How a crash of a sandboxed guest is reported, from what it threw (`thrown`, and its name,
 * message and stack as the runtime read them): the stack through the program's own files
 * (file:line of what the user wrote, never the library's bundles or Node's internals), and a
 * Node global that a guest does not have named as such. Undefined when this thread runs no
 * sandbox.
 */
export function guestCrash(
  thrown: object,
  e: { name: string; message: string; stack?: string },
): { name: string; message: string; stack?: string } | undefined {
  if (!ses) return undefined;
  let { message, stack } = e;
  const missing = absentGlobal(thrown, e.name, message);
  if (missing !== undefined) {
    const said = message;
    message = `${said} (${missing} ${NOT_IN_GUEST}${ABSENT[missing]})`;
    stack = stack?.replace(said, message);
  }
  return { name: e.name, message, stack: stack === undefined ? undefined : programStack(stack) };
}

// ---- modules ------------------------------------------------------------------------------

interface ModuleRecord {
  exports: unknown;
}

/**
 * The library modules of a bundled guest thread (xen/bundles.ts): the module at `url` as the
 * bundle holds it, or undefined if it holds no such module.
 */
export type BundledLibrary = (url: string) => Promise<Record<string, unknown> | undefined>;

/**
 * Loads the program in `image` in a new compartment and returns its `main`. `exit(code)` ends
 * the domain (the `process.exit` of a guest). `bundled`: this thread runs from the guest
 * bundle, which holds the library; its modules come from there, never also from Node's loader
 * (two copies of a class would not know each other's objects).
 */
export async function loadSandboxedProgram(
  image: GuestImage,
  exit: (code: number) => never,
  env: Record<string, string> = {},
  sesCache?: Uint8Array,
  bundled?: BundledLibrary,
): Promise<GuestMain> {
  // The library first, by Node's own loader or from the bundle: one copy, the one every
  // library module shares.
  const library = new Map<string, unknown>();
  for (const m of Object.values(image.modules))
    for (const dep of Object.values(m.imports))
      if (dep.kind === "library" && !library.has(dep.url)) {
        let ns: Record<string, unknown> | undefined;
        if (bundled) {
          ns = await bundled(dep.url);
          // The hypervisor starts this bundle only for programs whose library it holds.
          if (!ns) throw new Error(`${dep.url} is not in the guest bundle (rebuild: npm run build)`);
        } else ns = (await import(dep.url)) as Record<string, unknown>;
        library.set(dep.url, dep.index ? guestView(ns) : ns);
      }

  const { harden, Compartment } = lockdownRealm(sesCache);
  const compartment = new Compartment({ globals: endowments(harden, exit, env), __options__: true });
  const g = compartment.globalThis;
  harden(g);

  const records = new Map<string, ModuleRecord>();
  const load = (m: GuestModuleImage): unknown => {
    const done = records.get(m.url);
    if (done) return done.exports;
    if (m.error !== undefined || m.code === undefined)
      throw new SyntaxError(m.error ?? `cannot load ${m.url}`);
    if (m.map) sourceMaps.set(m.url, { json: m.map });
    programLocations.add(m.url);
    moduleCode.set(m.url, m.code);
    const record: ModuleRecord = { exports: {} };
    // In the table before it runs: an import cycle gets the exports made so far, as in CommonJS.
    records.set(m.url, record);
    const require = (spec: string): unknown => {
      const dep = m.imports[spec];
      if (!dep) {
        const builtin = builtinName(String(spec));
        if (builtin) throw unavailable(builtin);
        if (spec === "myrixen")
          throw new TypeError('import "myrixen" with a literal name so the loader finds it');
        throw new TypeError(
          `cannot import "${String(spec)}" from ${m.url}: a guest program imports its modules by literal names`,
        );
      }
      if (dep.kind === "refused") throw new TypeError(dep.message);
      if (dep.kind === "library") return library.get(dep.url);
      const target = image.modules[dep.url];
      if (!target) throw new TypeError(`cannot import "${spec}" from ${m.url}: not in the program's image`);
      return load(target);
    };
    const body = compartment.evaluate(
      `(function (exports, require, module) {\n${m.code}\n})\n//# sourceURL=${m.url}\n`,
    ) as (exports: unknown, require: unknown, module: unknown) => void;
    body(record.exports, require, record);
    return record.exports;
  };

  const entry = image.modules[image.entry];
  if (!entry) throw new Error(`the guest image has no entry module ${image.entry}`);
  const exports = load(entry) as { default?: unknown; main?: unknown };
  return programMain<GuestMain>(image.entry, exports);
}

/** The package's index as a guest sees it: host-side classes name themselves as unavailable when used. */
function guestView(ns: Record<string, unknown>): Record<string, unknown> {
  const view: Record<string, unknown> = {};
  for (const key of Object.keys(ns)) Object.defineProperty(view, key, { enumerable: true, value: ns[key] });
  // guest-api.ts does not export them; a program that names one learns why it is not there.
  for (const key of HOST_SIDE_EXPORTS)
    Object.defineProperty(view, key, {
      enumerable: true,
      get() {
        throw unavailable(`${key} (host-side API of myrixen)`);
      },
    });
  return Object.freeze(view);
}

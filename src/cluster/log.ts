/**
 * Structured logs for `myrixen host`: one line per event on stderr, either a JSON object
 * (`{"time","level","msg",...fields}`, the default, for log collectors and for tests that read
 * the host's bound ports) or a human-readable text line. Lines below the level are dropped.
 */

export const LOG_LEVELS = ["error", "warn", "info", "debug"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ["json", "text"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export type LogFields = Record<string, unknown>;

export interface Logger {
  readonly level: LogLevel;
  error(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  debug(msg: string, fields?: LogFields): void;
  enabled(level: LogLevel): boolean;
}

export interface LoggerOptions {
  level?: LogLevel;
  format?: LogFormat;
  /** Where lines go (default: process.stderr). */
  write?: (line: string) => void;
}

function plain(v: unknown): unknown {
  if (v instanceof Error) return v.message;
  if (typeof v === "bigint") return v.toString();
  return v;
}

function textValue(v: unknown): string {
  const p = plain(v);
  const s = typeof p === "string" ? p : JSON.stringify(p);
  return /^[^\s"=]+$/.test(s ?? "") ? (s as string) : JSON.stringify(s);
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const level = opts.level ?? "info";
  const format = opts.format ?? "json";
  const write = opts.write ?? ((line: string) => process.stderr.write(line));
  const rank = LOG_LEVELS.indexOf(level);
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields) => {
    if (LOG_LEVELS.indexOf(lvl) > rank) return;
    const time = new Date().toISOString();
    if (format === "json") {
      const o: LogFields = { time, level: lvl, msg };
      // A field never overwrites time/level/msg: those are what every consumer keys on.
      for (const [k, v] of Object.entries(fields ?? {})) if (!(k in o)) o[k] = plain(v);
      write(`${JSON.stringify(o)}\n`);
    } else {
      const kv = Object.entries(fields ?? {})
        .map(([k, v]) => ` ${k}=${textValue(v)}`)
        .join("");
      write(`${time} ${lvl.toUpperCase().padEnd(5)} ${msg}${kv}\n`);
    }
  };
  return {
    level,
    error: (m, f) => emit("error", m, f),
    warn: (m, f) => emit("warn", m, f),
    info: (m, f) => emit("info", m, f),
    debug: (m, f) => emit("debug", m, f),
    enabled: (l) => LOG_LEVELS.indexOf(l) <= rank,
  };
}

/** A logger that drops everything (the embedded host, library use). */
export const silentLogger: Logger = {
  level: "error",
  error: () => {},
  warn: () => {},
  info: () => {},
  debug: () => {},
  enabled: () => false,
};

/**
 * A warn() for events an attacker can cause at will (refused connections): at most
 * `perWindow` lines per `windowMs`, then the rest are counted and summed up in one line when
 * the window ends, so a flood of connections does not flood the log too.
 */
export function rateLimitedWarn(
  log: Logger,
  summary: string,
  perWindow = 20,
  windowMs = 10_000,
): (msg: string, fields?: LogFields) => void {
  let windowStart = 0;
  let logged = 0;
  let suppressed = 0;
  let timer: NodeJS.Timeout | undefined;
  const flush = () => {
    clearTimeout(timer);
    timer = undefined;
    if (suppressed > 0) log.warn(summary, { count: suppressed, windowMs });
    suppressed = 0;
  };
  return (msg, fields) => {
    const now = Date.now();
    if (now - windowStart >= windowMs) {
      flush();
      windowStart = now;
      logged = 0;
    }
    if (logged++ < perWindow) {
      log.warn(msg, fields);
      return;
    }
    suppressed++;
    if (!timer) {
      timer = setTimeout(flush, windowMs - (now - windowStart));
      timer.unref();
    }
  };
}

/**
 * XenStore's error: an errno (Linux numbering, as xenstored puts in an XS_ERROR reply), the
 * path it concerns and a sentence saying what to fix. Its own file because every side uses
 * it — the store, the wire protocol, the clients in guests — and it must cross threads
 * (toJSON / fromWire) unchanged.
 */

import { Errno, type ErrnoName } from "../abi.js";

export interface XenStoreErrorWire {
  name: "XenStoreError";
  errno: ErrnoName;
  path: string;
  message: string;
}

export class XenStoreError extends Error {
  override readonly name = "XenStoreError";
  readonly errno: ErrnoName;
  readonly path: string;

  /** `detail` says what went wrong and what to fix; the message is `ERRNO: detail`. */
  constructor(errno: ErrnoName, path: string, detail: string) {
    super(`${errno}: ${detail}`);
    this.errno = errno;
    this.path = path;
  }

  /** Numeric errno (Linux numbering), as xenstored would put in an XS_ERROR reply. */
  get code(): number {
    return Errno[this.errno];
  }

  toJSON(): XenStoreErrorWire {
    return { name: "XenStoreError", errno: this.errno, path: this.path, message: this.message };
  }

  /** Rebuilds an error that crossed a message boundary (structured clone or JSON). */
  static fromWire(obj: unknown): XenStoreError {
    if (typeof obj === "object" && obj !== null) {
      const o = obj as Record<string, unknown>;
      if (typeof o.errno === "string" && Object.hasOwn(Errno, o.errno) && typeof o.message === "string") {
        const errno = o.errno as ErrnoName;
        const prefix = `${errno}: `;
        const detail = o.message.startsWith(prefix) ? o.message.slice(prefix.length) : o.message;
        return new XenStoreError(errno, typeof o.path === "string" ? o.path : "", detail);
      }
    }
    return new XenStoreError("EIO", "", `malformed error reply from XenStore: ${safeJson(obj)}`);
  }

  static is(err: unknown, errno?: ErrnoName): err is XenStoreError {
    return err instanceof XenStoreError && (errno === undefined || err.errno === errno);
  }
}

export function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

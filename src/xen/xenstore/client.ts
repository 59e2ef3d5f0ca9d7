/**
 * The client interface host code and guests use to reach XenStore: RequestXenStoreClient,
 * built on one primitive `send(request)` (a guest forwards it over its channel to the
 * hypervisor), with watches by token and transactions retried on conflict; and
 * LocalXenStoreClient, which calls a store in the same thread. Only the type of the store is
 * imported: a guest that uses a client does not load the daemon.
 */

import type { DomId } from "../abi.js";
import { safeJson, XenStoreError } from "./errors.js";
import { validateDomId, validatePerms, type XenStorePerm } from "./paths.js";
import type { XenStore } from "./store.js";
import { executeXenStoreRequest, type XenStoreRequest } from "./wire.js";

/** Operations inside a transaction: they see the transaction's own writes. */
export interface XenStoreTx {
  readonly id: number;
  read(path: string): Promise<string>;
  /** Like read, but undefined when the node does not exist. */
  tryRead(path: string): Promise<string | undefined>;
  exists(path: string): Promise<boolean>;
  write(path: string, value: string): Promise<void>;
  mkdir(path: string): Promise<void>;
  rm(path: string): Promise<void>;
  directory(path: string): Promise<string[]>;
  getPerms(path: string): Promise<XenStorePerm[]>;
  setPerms(path: string, perms: readonly XenStorePerm[]): Promise<void>;
}

export interface XenStoreTransactionOptions {
  /** How many times the body is rerun after a commit conflict (EAGAIN); default 16. */
  maxRetries?: number;
}

/**
 * What guest and host code use. Paths not starting with '/' are relative to the caller's
 * home, /local/domain/<domid>; watch callbacks get absolute paths.
 */
export interface XenStoreClient extends Omit<XenStoreTx, "id"> {
  readonly domid: DomId;
  /** Watches `path` and below; resolves to a function that removes the watch. */
  watch(path: string, callback: (path: string) => void): Promise<() => Promise<void>>;
  /** Runs `body` in a transaction and commits; reruns it on a commit conflict. */
  transaction<T>(body: (tx: XenStoreTx) => Promise<T>, opts?: XenStoreTransactionOptions): Promise<T>;
}

export const DEFAULT_TRANSACTION_RETRIES = 16;

let clientSerial = 0;

/**
 * A client built on one primitive, `send(request)`. A subclass forwards requests somewhere
 * (straight to a store, or over a message channel to the host, which answers with
 * executeXenStoreRequest) and hands incoming watch events to deliverWatch(path, token).
 * Rejections should be XenStoreError (rebuild them with XenStoreError.fromWire).
 */
export abstract class RequestXenStoreClient implements XenStoreClient {
  readonly domid: DomId;
  private readonly watchCallbacks = new Map<string, (path: string) => void>();
  private readonly tokenPrefix: string;
  private nextToken = 1;

  constructor(domid: DomId) {
    this.domid = validateDomId(domid, "client domid");
    this.tokenPrefix = `c${++clientSerial}.${Math.random().toString(36).slice(2, 8)}`;
  }

  protected abstract send(req: XenStoreRequest): Promise<unknown>;

  /** Hands a watch event to the callback registered under `token`; unknown tokens are ignored. */
  protected deliverWatch(path: string, token: string): void {
    this.watchCallbacks.get(token)?.(path);
  }

  read(path: string): Promise<string> {
    return this.txRead(path, undefined);
  }
  tryRead(path: string): Promise<string | undefined> {
    return this.txTryRead(path, undefined);
  }
  async exists(path: string): Promise<boolean> {
    return (await this.txTryRead(path, undefined)) !== undefined;
  }
  async write(path: string, value: string): Promise<void> {
    await this.send({ op: "write", path, value });
  }
  async mkdir(path: string): Promise<void> {
    await this.send({ op: "mkdir", path });
  }
  async rm(path: string): Promise<void> {
    await this.send({ op: "rm", path });
  }
  directory(path: string): Promise<string[]> {
    return this.txDirectory(path, undefined);
  }
  getPerms(path: string): Promise<XenStorePerm[]> {
    return this.txGetPerms(path, undefined);
  }
  async setPerms(path: string, perms: readonly XenStorePerm[]): Promise<void> {
    await this.send({ op: "setPerms", path, perms: perms.map((p) => ({ ...p })) });
  }

  async watch(path: string, callback: (path: string) => void): Promise<() => Promise<void>> {
    const token = `${this.tokenPrefix}.${this.nextToken++}`;
    // Registered before sending: the initial event may arrive before the reply.
    this.watchCallbacks.set(token, callback);
    try {
      await this.send({ op: "watch", path, token });
    } catch (e) {
      this.watchCallbacks.delete(token);
      throw e;
    }
    let removed = false;
    return async () => {
      if (removed) return;
      removed = true;
      this.watchCallbacks.delete(token);
      await this.send({ op: "unwatch", path, token });
    };
  }

  async transaction<T>(
    body: (tx: XenStoreTx) => Promise<T>,
    opts: XenStoreTransactionOptions = {},
  ): Promise<T> {
    const maxRetries = opts.maxRetries ?? DEFAULT_TRANSACTION_RETRIES;
    if (!Number.isInteger(maxRetries) || maxRetries < 0) {
      throw new XenStoreError("EINVAL", "", `maxRetries must be a non-negative integer, got ${maxRetries}`);
    }
    for (let attempt = 0; ; attempt++) {
      const id = (await this.send({ op: "txStart" })) as number;
      let result: T;
      try {
        result = await body(this.txHandle(id));
      } catch (e) {
        await this.send({ op: "txEnd", tx: id, commit: false }).catch(() => undefined);
        throw e;
      }
      try {
        await this.send({ op: "txEnd", tx: id, commit: true });
        return result;
      } catch (e) {
        if (!XenStoreError.is(e, "EAGAIN") || attempt >= maxRetries) throw e;
      }
    }
  }

  private txHandle(id: number): XenStoreTx {
    return {
      id,
      read: (path) => this.txRead(path, id),
      tryRead: (path) => this.txTryRead(path, id),
      exists: async (path) => (await this.txTryRead(path, id)) !== undefined,
      write: async (path, value) => void (await this.send({ op: "write", path, value, tx: id })),
      mkdir: async (path) => void (await this.send({ op: "mkdir", path, tx: id })),
      rm: async (path) => void (await this.send({ op: "rm", path, tx: id })),
      directory: (path) => this.txDirectory(path, id),
      getPerms: (path) => this.txGetPerms(path, id),
      setPerms: async (path, perms) =>
        void (await this.send({ op: "setPerms", path, perms: perms.map((p) => ({ ...p })), tx: id })),
    };
  }

  private async txRead(path: string, tx: number | undefined): Promise<string> {
    const v = await this.send({ op: "read", path, tx });
    if (typeof v !== "string") throw badReply("read", v);
    return v;
  }

  private async txTryRead(path: string, tx: number | undefined): Promise<string | undefined> {
    try {
      return await this.txRead(path, tx);
    } catch (e) {
      if (XenStoreError.is(e, "ENOENT")) return undefined;
      throw e;
    }
  }

  private async txDirectory(path: string, tx: number | undefined): Promise<string[]> {
    const v = await this.send({ op: "directory", path, tx });
    if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw badReply("directory", v);
    return v;
  }

  private async txGetPerms(path: string, tx: number | undefined): Promise<XenStorePerm[]> {
    return validatePerms(await this.send({ op: "getPerms", path, tx }), path);
  }
}

function badReply(op: string, v: unknown): XenStoreError {
  return new XenStoreError("EIO", "", `malformed reply to ${op} from XenStore: ${safeJson(v)}`);
}

/** A client that calls a XenStore in the same thread (host code, dom0 services, tests). */
export class LocalXenStoreClient extends RequestXenStoreClient {
  constructor(
    private readonly store: XenStore,
    domid: DomId,
  ) {
    super(domid);
  }

  protected async send(req: XenStoreRequest): Promise<unknown> {
    return executeXenStoreRequest(this.store, this.domid, req, (path, token) =>
      this.deliverWatch(path, token),
    );
  }
}

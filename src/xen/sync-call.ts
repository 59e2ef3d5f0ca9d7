/**
 * Synchronous calls between threads: the caller posts a request on its own MessagePort,
 * blocks on a word of a small shared page (spin, then Atomics.wait), and takes the reply
 * with `receiveMessageOnPort`, so it needs no event loop. Hypercalls use it, and so does
 * every driver's control channel to the NIC. The server answers from its event loop.
 */
import { type MessagePort, receiveMessageOnPort } from "node:worker_threads";

export type SyncReply = { ok: true; value: unknown } | { ok: false; errno: string; message: string };

const READY = 0;

export class SyncCallFailed extends Error {
  constructor(
    readonly errno: string,
    message: string,
  ) {
    super(message.startsWith(`${errno}:`) ? message : `${errno}: ${message}`);
    this.name = "SyncCallFailed";
  }
}

/** The two things a thread needs to make synchronous calls to a server: a port and a reply word. */
export interface SyncEndpoint {
  port: MessagePort;
  replyWord: SharedArrayBuffer;
}

/**
 * The caller's end. Its port, reply word and `onWire` are #private: guest code may be handed a
 * client (its calls are checked by the server), never the MessagePort behind it, and every
 * request passes `onWire` in this method, the only code that reaches the port. A guest can
 * replace `call` on the prototype (library classes are not frozen: TypeScript's `private` and
 * `override` guard nothing at run time), but whatever it puts there can only end here, checked:
 * a check in a subclass's override was skipped by a guest calling this method directly, and
 * the hypervisor's thread decoded 100 MiB requests again.
 */
export class SyncCallClient<Req> {
  readonly #port: MessagePort;
  readonly #word: Int32Array;
  readonly #makeError: (errno: string, message: string) => Error;
  readonly #onWire: (req: Req) => unknown;

  /**
   * `onWire`: the request as it may be posted (plain, bounded data, rebuilt in this thread so
   * that the server's thread never decodes more than a contract allows), or a throw.
   */
  constructor(
    port: MessagePort,
    replyWord: SharedArrayBuffer,
    makeError: (errno: string, message: string) => Error = (e, m) => new SyncCallFailed(e, m),
    onWire: (req: Req) => unknown = (req) => req,
  ) {
    this.#port = port;
    this.#word = new Int32Array(replyWord);
    this.#makeError = makeError;
    this.#onWire = onWire;
    // No listener: replies are taken synchronously, and the port must not keep the thread alive.
    port.unref();
  }

  call<T>(req: Req): T {
    // Rebuilt before anything else: nothing the caller hands over (no transfer list either)
    // reaches the server but what onWire made.
    const wire = this.#onWire(req);
    const word = this.#word;
    Atomics.store(word, READY, 0);
    this.#port.postMessage(wire);
    // The server answers in tens of µs; spin briefly, then block.
    for (let i = 0; i < 2000 && Atomics.load(word, READY) === 0; i++) {
      // spin
    }
    while (Atomics.load(word, READY) === 0) Atomics.wait(word, READY, 0, 1000);
    const msg = receiveMessageOnPort(this.#port);
    if (!msg) throw this.#makeError("EIO", "reply lost (the server signalled but sent nothing)");
    const reply = msg.message as SyncReply;
    if (!reply.ok) throw this.#makeError(reply.errno, reply.message);
    return reply.value as T;
  }
}

/** The server's end: answer one request and wake the blocked caller. */
export function answerSyncCall(port: MessagePort, replyWord: Int32Array, reply: SyncReply): void {
  port.postMessage(reply);
  Atomics.store(replyWord, READY, 1);
  Atomics.notify(replyWord, READY);
}

/**
 * Serves synchronous calls on `port` with `handler`. A handler that throws answers with
 * the error's `errno` (EINVAL if it has none): a caller's garbage never escapes the server.
 */
export function serveSyncCalls(
  port: MessagePort,
  replyWord: SharedArrayBuffer,
  handler: (req: unknown) => unknown,
): void {
  const word = new Int32Array(replyWord);
  port.on("message", (req: unknown) => {
    let reply: SyncReply;
    try {
      reply = { ok: true, value: handler(req) };
    } catch (e) {
      const errno =
        typeof (e as { errno?: unknown })?.errno === "string" ? (e as { errno: string }).errno : "EINVAL";
      const message = (e as Error)?.message ?? String(e);
      reply = {
        ok: false,
        errno,
        message: message.startsWith(`${errno}:`) ? message : `${errno}: ${message}`,
      };
    }
    answerSyncCall(port, word, reply);
  });
}

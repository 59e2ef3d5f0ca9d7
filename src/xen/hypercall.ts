/**
 * The hypercall channel between a domain's thread and the hypervisor thread.
 *
 * A hypercall is synchronous for the guest, as a trap into Xen is: the guest posts the
 * request on its own MessagePort, blocks on a word of a small shared page (spin, then
 * Atomics.wait), and takes the reply with `receiveMessageOnPort`, so a guest never needs
 * its event loop to make a hypercall. XenStore traffic and asynchronous notices (watch
 * events) use a second port that the guest's event loop listens on, as xenstored is a
 * daemon reached through its own ring.
 *
 * Hypercalls are the control path only. Nothing on a data path (event-channel sends,
 * waits, ring traffic, privileged grant copies) comes through here.
 */
import { type MessagePort, receiveMessageOnPort } from "node:worker_threads";
import type { DomId, EvtchnPort } from "./abi.js";
import type { GrantCopyOp } from "./grant-table.js";
import type { XenStoreRequest } from "./xenstore.js";

export type HypercallRequest =
  | { op: "grant_map"; domid: DomId; ref: number; readonly: boolean }
  | { op: "grant_unmap"; handle: number }
  | { op: "grant_copy"; ops: GrantCopyOp[] }
  | { op: "evtchn_alloc_unbound"; remoteDom: DomId }
  | { op: "evtchn_bind_interdomain"; remoteDom: DomId; remotePort: EvtchnPort }
  | { op: "evtchn_close"; port: EvtchnPort }
  | { op: "evtchn_status"; port: EvtchnPort }
  | { op: "mem_register_shared"; buffer: SharedArrayBuffer; pages: number }
  | { op: "foreign_domain"; domid: DomId };

export type HypercallReply = { ok: true; value: unknown } | { ok: false; errno: string; message: string };

/** Messages on the asynchronous port. */
export type AsyncToHypervisor = { kind: "xenstore"; id: number; req: XenStoreRequest };
export type AsyncToGuest =
  | { kind: "xenstore-reply"; id: number; ok: true; value: unknown }
  | { kind: "xenstore-reply"; id: number; ok: false; error: { errno: string; message: string; path: string } }
  | { kind: "watch"; path: string; token: string }
  | { kind: "domain-gone"; domid: DomId };

/** Offsets in the reply word page. */
const REPLY_READY = 0;

export class HypercallFailed extends Error {
  constructor(
    readonly errno: string,
    message: string,
  ) {
    super(message.startsWith(`${errno}:`) ? message : `${errno}: ${message}`);
    this.name = "HypercallFailed";
  }
}

/** The guest's end: issue a hypercall and block until the hypervisor answers. */
export class HypercallClient {
  private readonly word: Int32Array;

  constructor(
    private readonly port: MessagePort,
    replyWord: SharedArrayBuffer,
  ) {
    this.word = new Int32Array(replyWord);
    // No listener: replies are taken synchronously, and the port must not keep the thread alive.
    port.unref();
  }

  call<T>(req: HypercallRequest): T {
    Atomics.store(this.word, REPLY_READY, 0);
    this.port.postMessage(req);
    // The hypervisor thread answers in tens of µs; spin briefly, then block.
    for (let i = 0; i < 2000 && Atomics.load(this.word, REPLY_READY) === 0; i++) {
      // spin
    }
    while (Atomics.load(this.word, REPLY_READY) === 0) Atomics.wait(this.word, REPLY_READY, 0, 1000);
    const msg = receiveMessageOnPort(this.port);
    if (!msg)
      throw new HypercallFailed("EIO", "hypercall reply lost (the hypervisor signalled but sent nothing)");
    const reply = msg.message as HypercallReply;
    if (!reply.ok) throw new HypercallFailed(reply.errno, reply.message);
    return reply.value as T;
  }
}

/** The hypervisor's end: answer one request and wake the blocked guest. */
export function answerHypercall(port: MessagePort, replyWord: Int32Array, reply: HypercallReply): void {
  port.postMessage(reply);
  Atomics.store(replyWord, REPLY_READY, 1);
  Atomics.notify(replyWord, REPLY_READY);
}

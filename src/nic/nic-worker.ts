/**
 * The NIC's thread: runs one Nic engine (nic.ts) and nothing else, so that the NIC's polling
 * and DMA never share a thread with a guest or the backend. The host side (device.ts) hands
 * it drivers' control channels and link requests; the data path never passes the host. Link
 * log lines are posted to the host thread (it owns the logger and stderr).
 */
import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { prepareReclaim } from "../xen/reclaim.js";
import { createLink } from "./link.js";
import { raiseMallocTrimThreshold } from "./malloc-trim.js";
import { Nic } from "./nic.js";
import { DetailedError, NicError } from "./status.js";
import { attachTcpSpec, cancelTcpReconnect, isTcpLinkSpec } from "./tcp-attach.js";
import type { TcpLinkLog, TcpLinkLogFields } from "./tcp-link.js";
import { nicTrace, TraceBuffer } from "./trace-ring.js";

/** What device.ts starts the worker with. */
export interface NicWorkerData {
  nicId: number;
  maxEndpoints: number;
  maxRegions: number;
  maxLinks: number;
  maxLinksPerAddress: number;
  counters: SharedArrayBuffer;
}

/** Host → NIC thread. */
export type NicHostMessage =
  | { type: "driver"; port: MessagePort; replyWord: SharedArrayBuffer }
  | { type: "attach_link"; id: number; spec: unknown }
  | { type: "detach_link"; id: number; peerNic: number }
  /** This NIC's trace ring (trace-ring.ts): stamp traced messages into `ring`, or stop (undefined). */
  | { type: "trace"; id: number; ring: SharedArrayBuffer | undefined }
  /** Stop serving: links say goodbye (peers then do not reconnect), then the host terminates the thread. */
  | { type: "shutdown"; id: number };

/** NIC thread → host. */
export type NicWorkerMessage =
  | { type: "ready" }
  /** A link event (tcp-link.ts), for the host's logger. */
  | { type: "log"; message: string; fields?: TcpLinkLogFields }
  | { type: "reply"; id: number; ok: true }
  /** `detail`: a DetailedError's, for the host's log only (status.ts). */
  | { type: "reply"; id: number; ok: false; message: string; detail?: string };

raiseMallocTrimThreshold();
// A closed endpoint's regions view its guest's RAM: collected soon after (control-service.ts).
prepareReclaim();

const data = workerData as NicWorkerData;
const port = parentPort!;
const nic = new Nic({
  nicId: data.nicId,
  maxEndpoints: data.maxEndpoints,
  maxRegions: data.maxRegions,
  maxLinks: data.maxLinks,
  maxLinksPerAddress: data.maxLinksPerAddress,
  counters: data.counters,
});

// Link events go to the host thread, which writes them with its own logger (device.ts onLog).
const linkLog: TcpLinkLog = (message, fields) =>
  port.postMessage({ type: "log", message, fields } satisfies NicWorkerMessage);

port.on("message", (m: NicHostMessage) => {
  if (m.type === "driver") {
    nic.serveDriver(m.port, m.replyWord);
    return;
  }
  if (m.type === "attach_link" && isTcpLinkSpec(m.spec)) {
    // TCP links connect (or listen) asynchronously; the socket lives here, on the NIC's thread.
    attachTcpSpec(nic, m.spec, linkLog).then(
      () => port.postMessage({ type: "reply", id: m.id, ok: true } satisfies NicWorkerMessage),
      (e: Error) =>
        port.postMessage({
          type: "reply",
          id: m.id,
          ok: false,
          message: e.message,
          detail: e instanceof DetailedError ? e.detail : undefined,
        } satisfies NicWorkerMessage),
    );
    return;
  }
  if (m.type === "trace") {
    nicTrace.ring = m.ring === undefined ? undefined : new TraceBuffer(0, m.ring);
    port.postMessage({ type: "reply", id: m.id, ok: true } satisfies NicWorkerMessage);
    return;
  }
  if (m.type === "shutdown") {
    nic.stop();
    // Let the goodbyes leave the socket before the host terminates this thread.
    setTimeout(() => port.postMessage({ type: "reply", id: m.id, ok: true } satisfies NicWorkerMessage), 20);
    return;
  }
  let reply: NicWorkerMessage;
  try {
    if (m.type === "attach_link") nic.attachLink(createLink(m.spec, nic.nicId));
    else {
      // A reconnecting TCP link stops retrying; its connection, if up, is detached as any link.
      const retrying = cancelTcpReconnect(nic, m.peerNic);
      if (nic.hasLink(m.peerNic)) nic.detachLink(m.peerNic);
      else if (!retrying) throw new NicError("ENOENT", `no link to NIC ${m.peerNic} is attached`);
    }
    reply = { type: "reply", id: m.id, ok: true };
  } catch (e) {
    reply = { type: "reply", id: m.id, ok: false, message: (e as Error).message };
  }
  port.postMessage(reply);
});

nic.start();
port.postMessage({ type: "ready" } satisfies NicWorkerMessage);

/**
 * mx-bench: one rank of an MX ping-pong / stream pair, used by `myrixen bench pingpong|stream`
 * for the native and bypass paths (the same program runs as a guest or as a native process).
 * guest.args: { rndvThreshold?, mxPath?: "bypass" | "split" } — a guest asks Mx.init for that
 * path (no silent fallback from bypass to split), so a row is measured on the path it names.
 *
 * With the host: the rank opens an endpoint and reports its address; the host answers with
 * the peer's address; the rank connects and reports "connected". Then each host command
 * runs one measured batch and answers with its sample:
 *   { kind: "pingpong", role, bytes, iters, warmup }  → one-way latency, µs (round trip / 2)
 *   { kind: "stream", role, bytes, iters, warmup, window } → MB/s (10^6 bytes), osu_bw style
 *   { kind: "breakdown", role, bytes, iters, warmup } → a traced ping-pong (the last `iters` round
 *       trips measured; mx/trace.ts): { us: one-way latency (rank a; 0 for b), since: trace
 *       time the measured part began (rank a), trace: the rank's trace records, flat
 *       (id, stage, time)*, warm-up messages included }; with trace: false the same run with a
 *       trace buffer present but tracing off (its records should be none)
 *   "counters" → the endpoint's counters;  "stop" → close and return
 */
import type { MxAddress, MxEndpoint } from "../mx/endpoint.js";
import { Mx } from "../mx/mx.js";
import { traceNow } from "../mx/trace.js";
import type { Guest } from "../xen/guest/guest.js";

export const MX_BENCH_KEY = 0x4d584221;
const TAG_DATA = 1;
const TAG_ACK = 2;

export type MxBenchCommand =
  | { kind: "pingpong"; role: "a" | "b"; bytes: number; iters: number; warmup: number }
  | { kind: "stream"; role: "a" | "b"; bytes: number; iters: number; warmup: number; window: number }
  | { kind: "breakdown"; role: "a" | "b"; bytes: number; iters: number; warmup: number; trace?: boolean }
  | "counters"
  | "stop";

export default async function main(guest: Guest): Promise<string> {
  const args = guest.args as
    | { rndvThreshold?: number; mxPath?: "bypass" | "split"; spinMaxUs?: number }
    | undefined;
  const mx = Mx.init(guest, !guest.native && args?.mxPath ? { path: args.mxPath } : undefined);
  const threshold = args?.rndvThreshold;
  const ep = mx.openEndpoint({ key: MX_BENCH_KEY, rndvThreshold: threshold, spinMaxUs: args?.spinMaxUs });
  guest.send({ nic: ep.nicId, endpoint: ep.endpointId, path: mx.path });
  const peerInfo = (await guest.nextMessage()) as { nic: number; endpoint: number };
  const peer = ep.connect(peerInfo.nic, peerInfo.endpoint, MX_BENCH_KEY);
  guest.send("connected");
  let sbuf = ep.alloc(1);
  let rbuf = ep.alloc(1);
  const ack = ep.alloc(1);
  const ensure = (n: number) => {
    if (sbuf.length < n) {
      ep.free(sbuf);
      ep.free(rbuf);
      sbuf = ep.alloc(n);
      rbuf = ep.alloc(n);
      sbuf.fill(0x5a);
    }
  };
  for (;;) {
    const cmd = (await guest.nextMessage()) as MxBenchCommand;
    if (cmd === "stop") break;
    if (cmd === "counters") {
      guest.send({ ...ep.counters });
      continue;
    }
    ensure(Math.max(cmd.bytes, 1));
    const s = sbuf.subarray(0, cmd.bytes);
    const r = rbuf.subarray(0, cmd.bytes);
    if (cmd.kind === "breakdown") {
      guest.send(breakdown(ep, peer, s, r, cmd));
    } else if (cmd.kind === "pingpong") {
      let t0 = 0;
      const total = cmd.warmup + cmd.iters;
      if (cmd.role === "a") {
        for (let i = 0; i < total; i++) {
          if (i === cmd.warmup) t0 = performance.now();
          const rr = ep.irecv(r, 0, TAG_DATA, 0xffffffff, 0xffffffff);
          ep.wait(ep.isend(s, peer, 0, TAG_DATA));
          ep.wait(rr);
        }
        guest.send(((performance.now() - t0) * 1000) / (2 * cmd.iters));
      } else {
        // The reply goes out first, then the next receive is posted: posting it is not on the
        // message's path (as the C ping-pong's MPI_Recv after MPI_Send, bench/openmpi/pingpong.c).
        let rr = ep.irecv(r, 0, TAG_DATA, 0xffffffff, 0xffffffff);
        for (let i = 0; i < total; i++) {
          ep.wait(rr);
          const sr = ep.isend(s, peer, 0, TAG_DATA);
          if (i + 1 < total) rr = ep.irecv(r, 0, TAG_DATA, 0xffffffff, 0xffffffff);
          ep.wait(sr);
        }
        guest.send(0);
      }
    } else {
      const w = cmd.window;
      const reqs = new Array(w);
      let t0 = 0;
      for (let i = 0; i < cmd.warmup + cmd.iters; i++) {
        if (i === cmd.warmup) t0 = performance.now();
        if (cmd.role === "a") {
          for (let k = 0; k < w; k++) reqs[k] = ep.isend(s, peer, 0, TAG_DATA);
          for (let k = 0; k < w; k++) ep.wait(reqs[k]);
          ep.wait(ep.irecv(ack, 0, TAG_ACK, 0xffffffff, 0xffffffff));
        } else {
          for (let k = 0; k < w; k++) reqs[k] = ep.irecv(r, 0, TAG_DATA, 0xffffffff, 0xffffffff);
          for (let k = 0; k < w; k++) ep.wait(reqs[k]);
          ep.wait(ep.isend(ack, peer, 0, TAG_ACK));
        }
      }
      const sec = (performance.now() - t0) / 1000;
      guest.send(cmd.role === "a" ? (cmd.bytes * w * cmd.iters) / 1e6 / sec : 0);
    }
  }
  mx.finalize();
  return "done";
}

/** A ping-pong like "pingpong", tracing its last `iters` round trips (both messages of each). */
function breakdown(
  ep: MxEndpoint,
  peer: MxAddress,
  s: Uint8Array,
  r: Uint8Array,
  cmd: { role: "a" | "b"; iters: number; warmup: number; trace?: boolean },
): { us: number; since: number; trace: Float64Array } {
  const total = cmd.warmup + cmd.iters;
  // Per round trip a rank stamps one send (2 records) and one receive (≤ 6).
  const capacity = (total + 1) * 8 + 64;
  // Traced from the start on both ranks (a rank enabling mid-run could see a message the
  // other traced with tracing still off); the host keeps the messages posted since `since`.
  ep.enableTrace(capacity);
  if (cmd.trace === false) ep.disableTrace();
  let t0 = 0;
  let since = 0;
  if (cmd.role === "a") {
    for (let i = 0; i < total; i++) {
      if (i === cmd.warmup) {
        since = traceNow();
        t0 = performance.now();
      }
      const rr = ep.irecv(r, 0, TAG_DATA, 0xffffffff, 0xffffffff);
      ep.wait(ep.isend(s, peer, 0, TAG_DATA));
      ep.wait(rr);
    }
  } else {
    let rr = ep.irecv(r, 0, TAG_DATA, 0xffffffff, 0xffffffff);
    for (let i = 0; i < total; i++) {
      ep.wait(rr);
      const sr = ep.isend(s, peer, 0, TAG_DATA);
      if (i + 1 < total) rr = ep.irecv(r, 0, TAG_DATA, 0xffffffff, 0xffffffff);
      ep.wait(sr);
    }
  }
  const us = cmd.role === "a" ? ((performance.now() - t0) * 1000) / (2 * cmd.iters) : 0;
  ep.disableTrace();
  const trace = ep.traceBuffer?.snapshot() ?? new Float64Array(0);
  return { us, since, trace };
}

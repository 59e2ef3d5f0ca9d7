// rates(): the difference of two snapshots — where each domain's traffic went, the per-path
// sums of what the hypervisor did for those domains, channel bytes across a u32 wrap, and the
// latency samples (interval ÷ messages received).

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  type DomainSnapshot,
  type EndpointSnapshot,
  type HostSnapshot,
  rates,
} from "../src/host/snapshot.js";

function domain(
  domid: number,
  c: Record<string, number>,
  vif?: Partial<DomainSnapshot["vif"]>,
): DomainSnapshot {
  return {
    domid,
    name: `d${domid}`,
    kind: domid === 0 ? "driver" : "guest",
    state: "running",
    memoryKiB: 1024,
    thread: domid,
    devices: [],
    counters: {
      hypercalls: 0,
      grant_map: 0,
      grant_unmap: 0,
      grant_copy: 0,
      evtchn_send: 0,
      xenstore_ops: 0,
      ...c,
    },
    vif: vif && {
      connected: true,
      txFrames: 0,
      rxFrames: 0,
      txBytes: 0,
      rxBytes: 0,
      txRequests: 0,
      rxRequests: 0,
      grantCopies: 0,
      notificationsSent: 0,
      notificationsReceived: 0,
      rxDropped: 0,
      txErrors: 0,
      rxErrors: 0,
      ...vif,
    },
  };
}

function endpoint(
  id: number,
  domid: number,
  nic: Record<string, number>,
  lane: [number, number],
  /** Messages taken from the lanes: [by the peer from ours, by us from the peer's]. */
  msgs: [number, number] = [0, 0],
): EndpointSnapshot {
  return {
    id,
    serial: 7,
    domid,
    owner: `domain ${domid}`,
    path: "bypass",
    regions: 0,
    registeredBytes: 0,
    peers: [],
    channels: [
      {
        id: 1,
        peerEndpoint: 9,
        peerDomid: 9,
        bytesOut: lane[0],
        bytesIn: lane[1],
        backlogOut: 0,
        backlogIn: 0,
        msgsOut: msgs[0],
        msgsIn: msgs[1],
      },
    ],
    queues: {
      sendQueue: 0,
      sendQueueSize: 256,
      eventQueue: 0,
      eventQueueSize: 1024,
      recvBytes: 0,
      recvBytesSize: 1,
    },
    nic: { sends: 0, recvs: 0, pulls: 0, send_bytes: 0, recv_bytes: 0, pull_bytes: 0, ...nic },
  };
}

function snap(
  time: number,
  domains: DomainSnapshot[],
  endpoints: EndpointSnapshot[],
  backend = 0,
): HostSnapshot {
  return {
    version: 1,
    time,
    host: {
      name: "h",
      hostname: "h",
      nicId: 1,
      pid: 1,
      uptimeS: 1,
      versions: { myrixen: "0", wire: 2, node: "20", snapshot: 1 },
    },
    limits: { maxEndpoints: 32, endpointsPerDomain: 8, registeredBytesPerDomain: 1, regionsPerDomain: 1 },
    nic: { maxEndpoints: 32, openEndpoints: [], regions: 0, etherPort: true, links: [], counters: {} },
    domains,
    endpoints,
    backend: { requests: backend },
    net: { totals: {}, bridge: {}, uplink: {} },
    jobs: [],
    xenstore: { nodes: 1 },
  };
}

test("rates: bypass, split and idle domains, the hypervisor's work per path, lane bytes across a wrap, latency samples", () => {
  const t0 = 1_000_000;
  const before = snap(
    t0,
    [
      domain(0, {}),
      domain(1, {}),
      domain(2, { evtchn_send: 10, grant_copy: 0 }, { txFrames: 5 }),
      domain(3, {}),
    ],
    [
      endpoint(4, 1, { pulls: 100, pull_bytes: 6_400 }, [0xffff_ff00, 10]),
      endpoint(5, 1, {}, [0, 0], [7, 0xffff_ff00]),
    ],
    3,
  );
  const after = snap(
    t0 + 500,
    [
      domain(0, { grant_copy: 40 }),
      domain(1, {}),
      domain(
        2,
        { evtchn_send: 60, hypercalls: 2 },
        { txFrames: 105, rxFrames: 50, txBytes: 9000, rxBytes: 1000 },
      ),
      domain(3, {}),
    ],
    [endpoint(4, 1, { pulls: 600, pull_bytes: 38_400 }, [0x100, 10]), endpoint(5, 1, {}, [0, 0], [7, 0x100])],
    3,
  );
  const r = rates(before, after);
  assert.equal(r.dt, 0.5);
  assert.equal(r.domains[1].path, "bypass");
  assert.equal(r.domains[2].path, "split");
  assert.equal(r.domains[3].path, "idle");
  // 0x100 − 0xffffff00 wraps to 0x200 bytes written into the lane.
  assert.equal(r.endpoints[4].channelBytesOut, 0x200 / 0.5);
  assert.equal(r.endpoints[4].msgsIn, 1000);
  assert.equal(r.paths.bypass.domains, 1);
  assert.equal(r.paths.bypass.evtchnSends, 0);
  assert.equal(r.paths.bypass.hypercalls, 0);
  assert.equal(r.paths.split.domains, 1);
  assert.equal(r.paths.split.evtchnSends, 100);
  assert.equal(r.paths.split.hypercalls, 4);
  assert.equal(r.paths.split.msgs, 300);
  assert.equal(r.backendRequests, 0);
  // 500 pulls in 0.5 s: 1 ms each; 50 frames received in 0.5 s: 10 ms each. A co-resident
  // channel's messages (the receiving library's count, across its u32 wrap: 0x200 of them)
  // give samples too.
  assert.deepEqual(r.latencyUs.bypass, [1000, 0.5e6 / 0x200]);
  assert.deepEqual(r.latencyUs.split, [10_000]);
  // The driver domain is never a path's domain.
  assert.equal(r.paths.native.domains, 0);
});

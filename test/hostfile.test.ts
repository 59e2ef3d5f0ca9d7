/**
 * Where a job's hosts come from, as text: host addresses, --hosts lists, Open MPI hostfiles,
 * Slurm's compressed node lists and task counts, and how ranks are placed on the result.
 * Tricky inputs and every kind of bad input (errors name the item or line).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  expandSlurmNodelist,
  expandSlurmTasks,
  HostListError,
  hostsFromSlurm,
  parseAddress,
  parseHostfile,
  parseHostList,
} from "../src/cluster/hostfile.js";
import { PlacementError, placeRanks } from "../src/cluster/placement.js";

const problems = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof HostListError, `expected a HostListError, got ${String(e)}`);
    return e.message;
  }
  assert.fail("expected an error");
};

test("addresses: host, host:port, IPv4, IPv6 with and without brackets; bad ports and names", () => {
  assert.deepEqual(parseAddress("node1", 7470), { host: "node1", port: 7470 });
  assert.deepEqual(parseAddress(" node1:7480 ", 7470), { host: "node1", port: 7480 });
  assert.deepEqual(parseAddress("10.0.0.2:1", 7470), { host: "10.0.0.2", port: 1 });
  assert.deepEqual(parseAddress("[::1]:9000", 7470), { host: "::1", port: 9000 });
  assert.deepEqual(parseAddress("[fe80::1%eth0]", 7470), { host: "fe80::1%eth0", port: 7470 });
  assert.deepEqual(parseAddress("::1", 7470), { host: "::1", port: 7470 });
  assert.deepEqual(parseAddress("127.0.0.1:0", 7470, true), { host: "127.0.0.1", port: 0 });
  assert.match(parseAddress("127.0.0.1:0", 7470) as string, /port 0 is outside 1..65535/);
  assert.match(parseAddress("a:65536", 7470) as string, /port 65536 is outside/);
  assert.match(parseAddress("a:http", 7470) as string, /port "http" is not a number/);
  assert.match(parseAddress("bad host", 7470) as string, /not a valid host name/);
  assert.match(parseAddress("[nothex]:1", 7470) as string, /not an IPv6 address/);
  // Colons alone are not an address (they used to pass as IPv6 and be retried forever).
  for (const bad of ["::::", ":::", "1:2:3:4:5:6:7:8:9", "[::::]:7470", "fe80::1%"])
    assert.match(
      parseAddress(bad, 7470) as string,
      /not (a host name, IPv4 or IPv6 address|an IPv6 address)/,
      bad,
    );
  assert.match(parseAddress("", 7470) as string, /empty/);
});

test("--hosts: ports optional, *slots, repeats add up, bad items named by position", () => {
  assert.deepEqual(parseHostList("a,b:7471,c*4"), [
    { host: "a", port: 7470, label: "a:7470", slots: undefined, maxSlots: undefined },
    { host: "b", port: 7471, label: "b:7471", slots: undefined, maxSlots: undefined },
    { host: "c", port: 7470, label: "c:7470", slots: 4, maxSlots: undefined },
  ]);
  // Like Open MPI's --host a,a: each mention without a count is one slot.
  const rep = parseHostList("a,b,a,a:7470*2");
  assert.deepEqual(
    rep.map((h) => [h.label, h.slots]),
    [
      ["a:7470", 4],
      ["b:7470", undefined],
    ],
  );
  assert.deepEqual(parseHostList("[::1]:9*2")[0], {
    host: "::1",
    port: 9,
    label: "[::1]:9",
    slots: 2,
    maxSlots: undefined,
  });
  const m = problems(() => parseHostList("a,,b:x,c*0,d*two"));
  assert.match(m, /--hosts item 2 is empty/);
  assert.match(m, /--hosts item 3: "b:x": port "x" is not a number/);
  assert.match(m, /--hosts item 4 "c\*0": the slot count after \* must be in 1..4096, got 0/);
  assert.match(m, /--hosts item 5 "d\*two": the slot count after \* must be a whole number/);
});

test("hostfile: Open MPI's format with comments, blank lines, ports, repeats; errors carry line numbers", () => {
  const text = [
    "# the cluster",
    "",
    "node01 slots=2 max_slots=4   # two CPUs",
    "node02:7480   slots=1",
    "   ",
    "node03",
    "node01 slots=1 max_slots=2",
    "10.0.0.9 slots=8",
  ].join("\n");
  const hosts = parseHostfile(text, "hosts.txt");
  assert.deepEqual(
    hosts.map((h) => [h.label, h.slots, h.maxSlots]),
    [
      ["node01:7470", 3, 6],
      ["node02:7480", 1, undefined],
      ["node03:7470", undefined, undefined],
      ["10.0.0.9:7470", 8, undefined],
    ],
  );
  assert.equal(parseHostfile("a slots=2\r\nb\r\n").length, 2, "CRLF line ends");
  const bad = [
    "good slots=1",
    "bad_slots slots=x",
    "zero slots=0",
    "node4 cpus=4",
    "node5 slots",
    "node6 slots=4 max_slots=2",
    "bad!name slots=1",
    "node8:99999",
  ].join("\n");
  const m = problems(() => parseHostfile(bad, "h.txt"));
  assert.match(m, /h\.txt:2: slots must be a whole number, got "x"/);
  assert.match(m, /h\.txt:3: slots must be in 1..4096, got 0/);
  assert.match(m, /h\.txt:4: unknown attribute "cpus"/);
  assert.match(m, /h\.txt:5: "slots" is not key=value/);
  assert.match(m, /h\.txt:6: max_slots=2 is less than slots=4/);
  assert.match(m, /h\.txt:7: "bad!name" is not a valid host name/);
  assert.match(m, /h\.txt:8: "node8:99999": port 99999 is outside 1..65535/);
  assert.doesNotMatch(m, /h\.txt:1:/);
  assert.match(
    problems(() => parseHostfile("# nothing\n\n", "empty")),
    /empty: no hosts/,
  );
});

test("Slurm node lists: ranges with leading zeros, several groups, commas inside brackets", () => {
  assert.deepEqual(expandSlurmNodelist("node[01-03,07],gpu5"), [
    "node01",
    "node02",
    "node03",
    "node07",
    "gpu5",
  ]);
  assert.deepEqual(expandSlurmNodelist("n[8-11]"), ["n8", "n9", "n10", "n11"]);
  assert.deepEqual(expandSlurmNodelist("n[098-101]"), ["n098", "n099", "n100", "n101"]);
  assert.deepEqual(expandSlurmNodelist("r[1-2]-n[01,03]"), ["r1-n01", "r1-n03", "r2-n01", "r2-n03"]);
  assert.deepEqual(expandSlurmNodelist("a,b[3],c[5-5]x"), ["a", "b3", "c5x"]);
  assert.deepEqual(expandSlurmNodelist("solo"), ["solo"]);
  assert.match(
    problems(() => expandSlurmNodelist("node[01-03")),
    /"\[" is never closed/,
  );
  assert.match(
    problems(() => expandSlurmNodelist("node01-03]")),
    /"\]" without "\["/,
  );
  assert.match(
    problems(() => expandSlurmNodelist("n[[1-2]]")),
    /nested "\["/,
  );
  assert.match(
    problems(() => expandSlurmNodelist("n[5-3]")),
    /runs backwards/,
  );
  assert.match(
    problems(() => expandSlurmNodelist("n[a-b]")),
    /"a-b" in "n\[a-b\]" is not a number or a range/,
  );
  assert.match(
    problems(() => expandSlurmNodelist("a,,b")),
    /an empty name/,
  );
  assert.match(
    problems(() => expandSlurmNodelist("n[0-99999999]")),
    /more than 65536 hosts/,
  );
});

test("Slurm task counts: N and N(xK)", () => {
  assert.deepEqual(expandSlurmTasks("2(x3),1"), [2, 2, 2, 1]);
  assert.deepEqual(expandSlurmTasks("4"), [4]);
  assert.deepEqual(expandSlurmTasks("1,2(x2)"), [1, 2, 2]);
  assert.match(
    problems(() => expandSlurmTasks("2(3)")),
    /"2\(3\)" is not N or N\(xK\)/,
  );
  assert.match(
    problems(() => expandSlurmTasks("2(x0)")),
    /repeats 0 times/,
  );
  assert.match(
    problems(() => expandSlurmTasks("")),
    /is not N or N\(xK\)/,
  );
});

test("a Slurm allocation's environment: nodes, slots per node, SLURM_NTASKS; mismatches refused", () => {
  assert.equal(hostsFromSlurm({}), undefined);
  const a = hostsFromSlurm({
    SLURM_JOB_NODELIST: "node[01-03,07],gpu5",
    SLURM_TASKS_PER_NODE: "2(x3),1,4",
    SLURM_NTASKS: "11",
  });
  assert.ok(a);
  assert.equal(a.ntasks, 11);
  assert.deepEqual(
    a.hosts.map((h) => [h.label, h.slots]),
    [
      ["node01:7470", 2],
      ["node02:7470", 2],
      ["node03:7470", 2],
      ["node07:7470", 1],
      ["gpu5:7470", 4],
    ],
  );
  const b = hostsFromSlurm({ SLURM_NODELIST: "c[1-2]" }, 9000);
  assert.deepEqual(
    b?.hosts.map((h) => [h.label, h.slots]),
    [
      ["c1:9000", undefined],
      ["c2:9000", undefined],
    ],
  );
  assert.match(
    problems(() => hostsFromSlurm({ SLURM_JOB_NODELIST: "n[1-3]", SLURM_TASKS_PER_NODE: "2(x2)" })),
    /covers 2 nodes but SLURM_JOB_NODELIST="n\[1-3\]" has 3/,
  );
  assert.match(
    problems(() => hostsFromSlurm({ SLURM_JOB_NODELIST: "n1", SLURM_NTASKS: "many" })),
    /SLURM_NTASKS="many" is not a positive whole number/,
  );
});

test("placement: round-robin by node, fill by slot, oversubscription within max_slots", () => {
  const h = (label: string, slots: number, maxSlots?: number) => ({ label, slots, maxSlots });
  assert.deepEqual(placeRanks(4, [h("a", 2), h("b", 2)], "node"), [0, 1, 0, 1]);
  assert.deepEqual(placeRanks(4, [h("a", 2), h("b", 2)], "slot"), [0, 0, 1, 1]);
  // A full host is skipped by the round-robin.
  assert.deepEqual(placeRanks(5, [h("a", 1), h("b", 3), h("c", 1)], "node"), [0, 1, 2, 1, 1]);
  assert.deepEqual(placeRanks(3, [h("a", 1), h("b", 3)], "slot"), [0, 1, 1]);
  assert.throws(
    () => placeRanks(5, [h("a", 2), h("b", 2)], "node"),
    (e: Error) =>
      e instanceof PlacementError &&
      /5 ranks need 5 slots but the hosts have 4 \(a 2, b 2\).*--oversubscribe/.test(e.message),
  );
  assert.deepEqual(placeRanks(6, [h("a", 2), h("b", 1)], "slot", true), [0, 0, 1, 0, 1, 0]);
  assert.deepEqual(placeRanks(5, [h("a", 1, 1), h("b", 1)], "node", true), [0, 1, 1, 1, 1]);
  assert.throws(
    () => placeRanks(5, [h("a", 1, 2), h("b", 1, 2)], "node", true),
    /exceed the hosts' max_slots/,
  );
  assert.deepEqual(placeRanks(3, [h("local", Number.POSITIVE_INFINITY)]), [0, 0, 0]);
});

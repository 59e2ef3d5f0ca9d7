#!/usr/bin/env node
// The built test files in the order `npm test` hands them to node's test runner: the longest
// first, then the rest by name. The runner starts files in the order given, two at a time, so
// a long file started last kept one core idle while the other lane had run dry (about half a
// minute of the suite on the 2-core CI machine). Prints one path per line.
import { readdirSync } from "node:fs";

/** The files that take longest on the 2-core machine (a loaded run's durations), longest first. */
const LONGEST = [
  "cli",
  "multihost",
  "mpirun",
  "package",
  "memory-lifetime",
  "nic-wire",
  "bench-openmpi",
  "toolstack",
  "cluster-auth",
  "dashboard-browser",
  "qos-share",
  "bench-cross-host",
  "launcher-hostile",
];

const dir = "dist/test";
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".test.js"))
  .sort();
const rank = (f) => {
  const i = LONGEST.indexOf(f.slice(0, -".test.js".length));
  return i < 0 ? LONGEST.length : i;
};
files.sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
for (const f of files) console.log(`${dir}/${f}`);

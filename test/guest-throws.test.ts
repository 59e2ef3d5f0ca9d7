/**
 * What a guest throws where nothing catches it reaches the hypervisor as the guest made it (a
 * structured clone: any shape, any types). `throw { message: 42, stack: 7 }` from a timer got
 * to the host daemon's exit handler as is; its `stack?.slice` threw, the rejection went
 * unhandled, and the `myrixen host` process ended with every tenant's jobs. The hypervisor now
 * turns whatever was thrown into an Error of strings (hypervisor.ts thrownError), and the
 * daemon's job bookkeeping never rejects.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { readKeyFile } from "../src/cluster/auth.js";
import { Job } from "../src/cluster/job.js";
import { RemoteHost } from "../src/cluster/remote.js";
import { Host } from "../src/host/host.js";
import { fixture, killChildren, startHost } from "./helpers/hosts.js";

const PROGRAM = new URL("./fixtures/guests/thrower.js", import.meta.url);
after(killChildren);

test("whatever a guest throws uncaught, its domain ends crashed with an Error of strings, and nothing of it runs in Node's error path", async () => {
  const host = await Host.start({});
  try {
    for (const what of ["fields", "string", "number", "null", "getters", "inspect", "rejection"]) {
      const d = await host.startGuest({
        module: PROGRAM,
        args: { what },
        name: `thrower-${what}`,
        pages: 256,
        output: "pipe",
      });
      let printed = "";
      d.worker.stdout.on("data", (b: Buffer) => {
        printed += b.toString();
      });
      d.worker.stderr.resume();
      const e = await d.exited;
      await new Promise((r) => setImmediate(r));
      // Node's own uncaught-error path inspected the thrown value with custom hooks on: the
      // guest got Node's real util.inspect, which the sandbox withholds.
      assert.doesNotMatch(printed, /inspect hook ran/, `${what}: the guest's inspect hook ran`);
      assert.equal(e.state, "crashed", what);
      assert.ok(e.error instanceof Error, `${what}: an Error`);
      for (const k of ["name", "message", "stack"] as const)
        assert.equal(typeof e.error[k], "string", `${what}: error.${k} is a string`);
    }
  } finally {
    await host.stop();
  }
});

test("a rank that throws { message: 42, stack: 7 } fails its job; the host daemon lives on and runs the next job", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-throw-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const keyFile = join(dir, "cluster.key");
  writeFileSync(keyFile, randomBytes(32).toString("hex"), { mode: 0o600 });
  const h = await startHost(["--slots", "2", "--key-file", keyFile]);
  const connect = () =>
    RemoteHost.connect({ host: "127.0.0.1", port: h.port }, { key: readKeyFile(keyFile) });
  const run = async (program: string) => {
    const remote = await connect();
    try {
      return await new Job([remote], {
        n: 1,
        path: "native",
        program: fixture(program),
        output: () => {},
      }).run();
    } finally {
      remote.close();
    }
  };
  const bad = await run("mh-throw");
  assert.equal(bad.exitCode !== 0, true, "the throwing rank failed its job");
  let exited = false;
  void h.exited.then(() => {
    exited = true;
  });
  const good = await run("mh-hello");
  assert.equal(exited, false, `the host daemon ended:\n${h.stderr.slice(-10).join("\n")}`);
  assert.equal(good.exitCode, 0, "the next job ran");
});

// Tests of the XenStore daemon and its clients: nodes, paths, perms, watches, transactions,
// quotas, domain release, accounting, and the request protocol across a message channel.
import assert from "node:assert/strict";
import { test } from "node:test";
import { MessageChannel, type MessagePort } from "node:worker_threads";
import {
  WatchEventSender,
  XS_CREDIT_BYTES,
  XS_EVENT_BACKLOG,
  XS_EVENT_BACKLOG_BYTES,
  XS_EVENT_WINDOW,
  XS_EVENT_WINDOW_BYTES,
} from "../src/xen/xenstore/port-credit.js";
import {
  executeXenStoreRequest,
  LocalXenStoreClient,
  parsePerms,
  RequestXenStoreClient,
  XenStore,
  XenStoreError,
  type XenStoreRequest,
} from "../src/xen/xenstore.js";

/** Lets queued watch events (microtasks) and setImmediate work run. */
const settle = () => new Promise<void>((r) => setImmediate(r));

function errno(name: string, msg?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof XenStoreError, `expected XenStoreError, got ${String(e)}`);
    assert.equal(e.errno, name, e.message);
    if (msg) assert.match(e.message, msg);
    return true;
  };
}

function storeWith(...doms: number[]): XenStore {
  const s = new XenStore();
  for (const d of doms) s.introduceDomain(d);
  return s;
}

test("CRUD: write creates parents, read, directory sorted, mkdir, rm recursive", () => {
  const s = storeWith(1);
  s.write(0, "/a/b/c", "hello");
  assert.equal(s.read(0, "/a/b/c"), "hello");
  assert.equal(s.read(0, "/a/b"), "");
  assert.deepEqual(s.directory(0, "/"), ["a", "local"]);
  s.write(0, "/a/b/c", "again");
  assert.equal(s.read(0, "/a/b/c"), "again");
  s.write(0, "/a/z", "1");
  s.write(0, "/a/m", "2");
  assert.deepEqual(s.directory(0, "/a"), ["b", "m", "z"]);
  s.mkdir(0, "/a/d");
  assert.equal(s.read(0, "/a/d"), "");
  s.write(0, "/a/d", "kept");
  s.mkdir(0, "/a/d"); // existing node: left alone
  assert.equal(s.read(0, "/a/d"), "kept");
  assert.equal(s.exists(0, "/a/b/c"), true);
  s.rm(0, "/a/b");
  assert.equal(s.exists(0, "/a/b/c"), false);
  assert.throws(() => s.read(0, "/a/b/c"), errno("ENOENT", /\/a\/b\/c/));
  assert.throws(() => s.rm(0, "/a/b"), errno("ENOENT"));
  assert.throws(() => s.rm(0, "/"), errno("EINVAL", /root/));
  // Relative paths are under the caller's home.
  s.write(1, "name", "guest1");
  assert.equal(s.read(0, "/local/domain/1/name"), "guest1");
  assert.equal(s.read(1, "name"), "guest1");
});

test("path and value validation give errors that say what to fix", () => {
  const s = storeWith();
  assert.throws(() => s.read(0, ""), errno("EINVAL", /empty path/));
  assert.throws(() => s.write(0, "/a//b", "x"), errno("EINVAL", /empty component/));
  assert.throws(() => s.write(0, "/a/", "x"), errno("EINVAL", /trailing slash/));
  assert.throws(() => s.write(0, "/a b", "x"), errno("EINVAL", /contains " "; allowed characters/));
  assert.throws(() => s.write(0, `/${"x".repeat(3072)}`, "x"), errno("EINVAL", /limit is 3072/));
  s.write(0, `/${"x".repeat(3071)}`, "ok"); // exactly 3072 characters
  assert.throws(() => s.write(0, "/v", "y".repeat(4097)), errno("EINVAL", /4097 bytes; the limit is 4096/));
  s.write(0, "/v", "y".repeat(4096));
  assert.throws(() => s.write(0, "/v", 5 as unknown as string), errno("EINVAL", /must be a string/));
  assert.throws(() => s.read(0, "@releaseDomain"), errno("EINVAL", /only watches/));
  assert.throws(() => s.read(7, "/"), errno("ESRCH", /not introduced/));
  assert.throws(() => s.read(-1, "/"), errno("EINVAL", /domain id/));
  s.write(0, "/ok_name-1.2@x", "fine");
});

test("watches: initial firing, path and below, not siblings, asynchronous, rm, unwatch", async () => {
  const s = storeWith();
  s.write(0, "/dev/vif/0/state", "1");
  const seen: string[] = [];
  s.watch(0, "/dev/vif/0", "tok", (p, token) => seen.push(`${token}:${p}`));
  assert.deepEqual(seen, [], "never called inside the op");
  await settle();
  assert.deepEqual(seen, ["tok:/dev/vif/0"], "fires once on registration");
  seen.length = 0;

  s.write(0, "/dev/vif/0/state", "2");
  s.write(0, "/dev/vif/0/ring/ref", "8");
  s.write(0, "/dev/vif/1/state", "1"); // sibling: not reported
  s.write(0, "/dev/vif0", "x"); // name prefix but not below: not reported
  s.setPerms(0, "/dev/vif/0/state", [{ dom: 0, access: "r" }]);
  s.mkdir(0, "/dev/vif/0/q");
  assert.deepEqual(seen, []);
  await settle();
  assert.deepEqual(seen, [
    "tok:/dev/vif/0/state",
    "tok:/dev/vif/0/ring/ref",
    "tok:/dev/vif/0/state",
    "tok:/dev/vif/0/q",
  ]);
  seen.length = 0;

  // Removing an ancestor: watches on or above the removed node hear the removed path; a
  // watch below it hears its own path.
  const below: string[] = [];
  s.watch(0, "/dev/vif/0/ring/ref", "deep", (p) => below.push(p));
  await settle();
  below.length = 0;
  s.rm(0, "/dev/vif/0");
  await settle();
  assert.deepEqual(seen, ["tok:/dev/vif/0"]);
  assert.deepEqual(below, ["/dev/vif/0/ring/ref"]);

  assert.throws(() => s.watch(0, "/dev/vif/0", "tok", () => {}), errno("EEXIST"));
  s.unwatch(0, "/dev/vif/0", "tok");
  seen.length = 0;
  s.write(0, "/dev/vif/0/state", "3");
  await settle();
  assert.deepEqual(seen, []);
  assert.throws(() => s.unwatch(0, "/dev/vif/0", "tok"), errno("ENOENT"));
});

test("an event queued before unwatch is not delivered after it", async () => {
  const s = storeWith();
  const seen: string[] = [];
  s.watch(0, "/x", "t", (p) => seen.push(p));
  s.write(0, "/x", "1");
  s.unwatch(0, "/x", "t");
  await settle();
  assert.deepEqual(seen, []);
});

test("a throwing watch callback is reported, not fatal", async () => {
  const errors: string[] = [];
  const s = new XenStore({ onWatchError: (e, p) => errors.push(`${p}:${(e as Error).message}`) });
  s.watch(0, "/x", "t", () => {
    throw new Error("boom");
  });
  await settle();
  assert.deepEqual(errors, ["/x:boom"]);
});

test("permissions: guests write only their own subtree until the owner grants more", async () => {
  const s = storeWith(1, 2);
  s.write(2, "/local/domain/2/data", "secret");
  assert.deepEqual(s.getPerms(2, "/local/domain/2/data"), [{ dom: 2, access: "n" }]);
  assert.throws(
    () => s.write(1, "/local/domain/2/data", "x"),
    errno("EACCES", /domain 1 may not write \/local\/domain\/2\/data \(owner 2, others: none\)/),
  );
  assert.throws(() => s.read(1, "/local/domain/2/data"), errno("EACCES"));
  assert.throws(() => s.write(1, "/local/domain/2/new", "x"), errno("EACCES", /needs write access to/));
  // A missing node under a tree the guest cannot read is EACCES too: no probing.
  assert.throws(() => s.read(1, "/local/domain/2/nothing"), errno("EACCES", /missing or hidden/));
  assert.throws(() => s.mkdir(1, "/local/domain/2/data"), errno("EACCES", /may not mkdir/));
  assert.throws(() => s.read(1, "/local/domain/1/nothing"), errno("ENOENT"));
  assert.throws(() => s.directory(1, "/local/domain"), errno("EACCES"));
  assert.throws(
    () => s.setPerms(1, "/local/domain/2/data", [{ dom: 2, access: "b" }]),
    errno("EACCES", /only its owner \(domain 2\) or domain 0/),
  );

  // The owner grants domain 1 both read and write on its directory.
  s.mkdir(2, "shared");
  s.setPerms(2, "shared", [
    { dom: 2, access: "n" },
    { dom: 1, access: "b" },
  ]);
  s.write(1, "/local/domain/2/shared/from1", "hi");
  assert.equal(s.read(0, "/local/domain/2/shared/from1"), "hi");
  // The unprivileged creator owns what it creates; the other entries are inherited, so the
  // directory's owner (2) now falls under "others: none" for this node (xenstored's rule).
  assert.throws(() => s.read(2, "shared/from1"), errno("EACCES", /owner 1, others: none/));
  assert.deepEqual(s.getPerms(1, "/local/domain/2/shared/from1"), [
    { dom: 1, access: "n" },
    { dom: 1, access: "b" },
  ]);
  // ... and may not give it away.
  assert.throws(
    () => s.setPerms(1, "/local/domain/2/shared/from1", [{ dom: 2, access: "n" }]),
    errno("EPERM", /only domain 0 may change a node's owner/),
  );

  // dom0 can do everything, and what it creates keeps the inherited owner.
  s.write(0, "/local/domain/2/shared/by0", "x");
  assert.equal(s.getPerms(0, "/local/domain/2/shared/by0")[0].dom, 2);
  s.setPerms(0, "/local/domain/2/data", [{ dom: 1, access: "r" }]);
  assert.equal(s.read(1, "/local/domain/2/data"), "secret");
  s.rm(0, "/local/domain/2/data");

  // Read perms hide watch events: domain 1 watches domain 2's node but may not read it.
  s.write(2, "hidden", "0");
  const seen: string[] = [];
  s.watch(1, "/local/domain/2/hidden", "w", (p) => seen.push(p));
  await settle();
  assert.deepEqual(seen, ["/local/domain/2/hidden"], "the registration event is always sent");
  seen.length = 0;
  s.write(2, "hidden", "1");
  await settle();
  assert.deepEqual(seen, []);
  s.setPerms(2, "hidden", [
    { dom: 2, access: "n" },
    { dom: 1, access: "r" },
  ]);
  s.write(2, "hidden", "2");
  await settle();
  assert.deepEqual(seen, ["/local/domain/2/hidden", "/local/domain/2/hidden"]);
});

test("perms notation parses and validates", () => {
  assert.deepEqual(parsePerms("n0,r5"), [
    { dom: 0, access: "n" },
    { dom: 5, access: "r" },
  ]);
  assert.throws(() => parsePerms("x0"), errno("EINVAL", /letter n\/r\/w\/b/));
  const s = storeWith();
  s.write(0, "/p", "");
  assert.throws(() => s.setPerms(0, "/p", []), errno("EINVAL", /non-empty/));
  assert.throws(
    () => s.setPerms(0, "/p", [{ dom: 1, access: "q" as "r" }]),
    errno("EINVAL", /use "n" \(none\)/),
  );
});

test("transactions: private view, commit applies, conflict → EAGAIN and nothing applied", async () => {
  const s = storeWith(1);
  s.write(1, "counter", "1");
  const tx = s.transactionStart(1);
  s.write(1, "counter", "2", tx);
  s.write(1, "new/key", "v", tx);
  assert.equal(s.read(1, "counter", tx), "2");
  assert.deepEqual(s.directory(1, "new", tx), ["key"]);
  assert.equal(s.read(1, "counter"), "1", "not visible outside before commit");
  assert.equal(s.exists(1, "new/key"), false);

  const seen: string[] = [];
  s.watch(0, "/local/domain/1", "t", (p) => seen.push(p));
  await settle();
  seen.length = 0;
  await settle();
  assert.deepEqual(seen, [], "no events before commit");
  s.transactionEnd(1, tx, true);
  assert.equal(s.read(1, "counter"), "2");
  assert.equal(s.read(1, "new/key"), "v");
  await settle();
  assert.deepEqual(seen, ["/local/domain/1/counter", "/local/domain/1/new/key"]);

  // Conflict: the transaction read counter, someone else wrote it meanwhile.
  const t2 = s.transactionStart(1);
  const v = Number(s.read(1, "counter", t2));
  s.write(1, "counter", String(v + 1), t2);
  s.write(1, "other", "x", t2);
  s.write(0, "/local/domain/1/counter", "100");
  assert.throws(
    () => s.transactionEnd(1, t2, true),
    errno("EAGAIN", /transaction conflict: .*counter changed; retry/),
  );
  assert.equal(s.read(1, "counter"), "100");
  assert.equal(s.exists(1, "other"), false, "nothing of the failed transaction applied");
  assert.throws(() => s.read(1, "counter", t2), errno("ESRCH"), "a conflicting transaction is closed");

  // Listing a directory counts as reading it: a new child conflicts.
  const t3 = s.transactionStart(1);
  s.directory(1, "new", t3);
  s.write(1, "summary", "1", t3);
  s.write(1, "new/key2", "v");
  assert.throws(() => s.transactionEnd(1, t3, true), errno("EAGAIN"));

  // Unrelated concurrent writes do not conflict.
  const t4 = s.transactionStart(1);
  s.write(1, "new/key", "w", t4);
  s.write(1, "counter", "5");
  s.transactionEnd(1, t4, true);
  assert.equal(s.read(1, "new/key"), "w");

  // Abort discards.
  const t5 = s.transactionStart(1);
  s.rm(1, "new", t5);
  assert.equal(s.exists(1, "new/key", t5), false);
  s.transactionEnd(1, t5, false);
  assert.equal(s.read(1, "new/key"), "w");
});

test("transactions: rm and re-create, perms, ownership and bad ids", () => {
  const s = storeWith(1, 2);
  s.write(1, "d/a", "1");
  s.write(1, "d/b", "2");
  const t = s.transactionStart(1);
  s.rm(1, "d", t);
  s.write(1, "d/c", "3", t);
  assert.deepEqual(s.directory(1, "d", t), ["c"], "old children do not come back");
  s.setPerms(
    1,
    "d/c",
    [
      { dom: 1, access: "n" },
      { dom: 2, access: "r" },
    ],
    t,
  );
  assert.throws(() => s.read(2, "/local/domain/1/d/c", t), errno("EACCES", /belongs to domain 1/));
  s.transactionEnd(1, t, true);
  assert.deepEqual(s.directory(1, "d"), ["c"]);
  assert.equal(s.read(2, "/local/domain/1/d/c"), "3");
  assert.throws(() => s.read(1, "d", 999), errno("ESRCH", /not open/));
  assert.throws(() => s.transactionEnd(1, 0, true), errno("EINVAL"));
});

test("a commit tells a domain nothing of nodes hidden from it; a node it may read still conflicts", () => {
  // A spy that looked at another domain's private node in a transaction (EACCES), wrote
  // something of its own and committed learnt from EAGAIN that the node had changed; looking
  // at a missing path, that something under the hidden ancestor had been created or removed.
  const home = "/local/domain/2";
  /** The spy's commit (ok or its errno) after `look` in its transaction, with `change` meanwhile. */
  const commit = (look: (s: XenStore, tx: number) => void, change?: (s: XenStore) => void) => {
    const s = storeWith(1, 2);
    s.write(2, "secret", "a");
    s.mkdir(2, "pub");
    s.setPerms(2, "pub", [
      { dom: 2, access: "n" },
      { dom: 1, access: "r" },
    ]);
    s.write(2, "pub/item", "a");
    // A drop box domain 1 may write in but not read.
    s.mkdir(2, "drop");
    s.setPerms(2, "drop", [
      { dom: 2, access: "n" },
      { dom: 1, access: "w" },
    ]);
    const tx = s.transactionStart(1);
    look(s, tx);
    change?.(s);
    s.write(1, "x", "1", tx);
    try {
      s.transactionEnd(1, tx, true);
      return "ok";
    } catch (e) {
      return (e as XenStoreError).errno;
    }
  };
  const refused = (f: () => unknown) => assert.throws(f, errno("EACCES"));
  const hidden: Record<string, (s: XenStore, tx: number) => void> = {
    "every request on a hidden node": (s, tx) => {
      const p = `${home}/secret`;
      refused(() => s.read(1, p, tx));
      refused(() => s.exists(1, p, tx));
      refused(() => s.directory(1, p, tx));
      refused(() => s.getPerms(1, p, tx));
      refused(() => s.write(1, p, "x", tx));
      refused(() => s.rm(1, p, tx));
      refused(() => s.setPerms(1, p, [{ dom: 2, access: "n" }], tx));
      refused(() => s.mkdir(1, p, tx));
    },
    "every request on a missing node under a hidden one": (s, tx) => {
      const p = `${home}/later`;
      refused(() => s.read(1, p, tx));
      refused(() => s.exists(1, `${p}/deeper`, tx));
      refused(() => s.write(1, `${p}/deeper`, "x", tx));
      refused(() => s.mkdir(1, p, tx));
      refused(() => s.rm(1, p, tx));
    },
    "its own node in a drop box it may not read": (s, tx) => {
      s.write(1, `${home}/drop/mine`, "m", tx);
      assert.equal(s.read(1, `${home}/drop/mine`, tx), "m");
      assert.equal(s.exists(1, `${home}/drop/mine/sub`, tx), false);
      refused(() => s.read(1, `${home}/drop/theirs`, tx));
    },
  };
  const changes: Record<string, (s: XenStore) => void> = {
    "changes the hidden node": (s) => s.write(2, "secret", "b"),
    "removes it": (s) => s.rm(2, "secret"),
    "changes its perms": (s) =>
      s.setPerms(2, "secret", [
        { dom: 2, access: "n" },
        { dom: 0, access: "r" },
      ]),
    "creates a node beside it": (s) => s.write(2, "later", "b"),
    "writes in the drop box": (s) => s.write(2, "drop/theirs", "b"),
  };
  for (const [look, f] of Object.entries(hidden)) {
    assert.equal(commit(f), "ok", look);
    for (const [change, g] of Object.entries(changes))
      assert.equal(commit(f, g), "ok", `${look}, then domain 2 ${change}`);
  }

  // What the spy may read conflicts as before, and only that.
  const readsPub = (s: XenStore, tx: number) => assert.equal(s.read(1, `${home}/pub/item`, tx), "a");
  const missesPub = (s: XenStore, tx: number) => assert.equal(s.exists(1, `${home}/pub/later`, tx), false);
  const listsPub = (s: XenStore, tx: number) => assert.deepEqual(s.directory(1, `${home}/pub`, tx), ["item"]);
  assert.equal(
    commit(readsPub, (s) => s.write(2, "pub/item", "b")),
    "EAGAIN",
  );
  assert.equal(
    commit(missesPub, (s) => s.write(2, "pub/later", "b")),
    "EAGAIN",
  );
  assert.equal(
    commit(listsPub, (s) => s.rm(2, "pub/item")),
    "EAGAIN",
  );
  assert.equal(
    commit(readsPub, (s) => s.rm(2, "pub")),
    "EAGAIN",
  );
  for (const f of [readsPub, missesPub, listsPub]) {
    assert.equal(commit(f), "ok");
    assert.equal(commit(f, changes["changes the hidden node"]), "ok");
    assert.equal(commit(f, changes["creates a node beside it"]), "ok");
  }
});

test("client.transaction retries the body on conflict and gives up after maxRetries", async () => {
  const s = storeWith(1);
  const guest = new LocalXenStoreClient(s, 1);
  const dom0 = new LocalXenStoreClient(s, 0);
  await guest.write("counter", "10");
  let attempts = 0;
  const result = await guest.transaction(async (tx) => {
    attempts++;
    const v = Number(await tx.read("counter"));
    if (attempts === 1) await dom0.write("/local/domain/1/counter", "20"); // concurrent writer
    await tx.write("counter", String(v + 1));
    return v + 1;
  });
  assert.equal(attempts, 2);
  assert.equal(result, 21);
  assert.equal(await guest.read("counter"), "21");

  let tries = 0;
  await assert.rejects(
    guest.transaction(
      async (tx) => {
        tries++;
        await tx.read("counter");
        await dom0.write("/local/domain/1/counter", String(tries));
        await tx.write("counter", "never");
      },
      { maxRetries: 3 },
    ),
    errno("EAGAIN"),
  );
  assert.equal(tries, 4);
  assert.notEqual(await guest.read("counter"), "never");

  // A body that throws aborts the transaction and rethrows.
  await assert.rejects(
    guest.transaction(async (tx) => {
      await tx.write("aborted", "1");
      throw new Error("body failed");
    }),
    /body failed/,
  );
  assert.equal(await guest.exists("aborted"), false);
  assert.equal(s.stats()[1].transactions, 0, "no transaction left open");
});

test("quotas: nodes, watches and transactions per unprivileged domain", () => {
  const s = new XenStore({ maxNodesPerDomain: 5, maxWatchesPerDomain: 2, maxTransactionsPerDomain: 2 });
  s.introduceDomain(1);
  // The home directory counts: 1 node so far.
  s.write(1, "a", "1");
  s.write(1, "b/c", "1"); // two nodes
  assert.equal(s.stats()[1].nodes, 4);
  assert.throws(() => s.write(1, "x/y", "1"), errno("ENOSPC", /owns 4 nodes.*quota of 5/));
  s.write(1, "x", "1");
  assert.throws(() => s.mkdir(1, "z"), errno("ENOSPC"));
  s.write(1, "x", "overwrite is fine");
  s.rm(1, "b");
  s.write(1, "z", "room again");
  s.write(0, "/local/domain/1/by-dom0", "dom0 is not limited");

  // Inside a transaction, and at commit when other activity used the room meanwhile.
  s.rm(1, "z");
  s.rm(0, "/local/domain/1/by-dom0");
  const t = s.transactionStart(1);
  s.write(1, "t1", "1", t);
  s.write(1, "t2", "1", t);
  assert.throws(() => s.write(1, "t3", "1", t), errno("ENOSPC"), "the view counts its own nodes");
  s.write(1, "a/outside", "1"); // no conflict with the transaction, but uses one node of room
  assert.throws(() => s.transactionEnd(1, t, true), errno("ENOSPC"));
  assert.equal(s.exists(1, "t1"), false, "t1 was applied, then rolled back when t2 failed");
  assert.equal(s.stats()[1].nodes, 4);

  s.watch(1, "a", "1", () => {});
  s.watch(1, "a", "2", () => {});
  assert.throws(() => s.watch(1, "a", "3", () => {}), errno("E2BIG", /2 watches, the limit/));
  const t1 = s.transactionStart(1);
  s.transactionStart(1);
  assert.throws(() => s.transactionStart(1), errno("ENOSPC", /open transactions/));
  s.transactionEnd(1, t1, false);
  s.transactionStart(1);
});

test("releaseDomain removes the home tree, fires others' watches, drops watches and transactions", async () => {
  const s = storeWith(3);
  s.write(3, "device/vif/0/state", "4");
  const dom0Seen: string[] = [];
  const guestSeen: string[] = [];
  const released: string[] = [];
  s.watch(0, "/local/domain/3/device", "d0", (p) => dom0Seen.push(p));
  s.watch(3, "/local/domain/3", "g", (p) => guestSeen.push(p));
  s.watch(0, "@releaseDomain", "rel", (p) => released.push(p));
  const tx = s.transactionStart(3);
  await settle();
  dom0Seen.length = guestSeen.length = released.length = 0;

  s.releaseDomain(3);
  await settle();
  assert.equal(s.exists(0, "/local/domain/3"), false);
  assert.deepEqual(dom0Seen, ["/local/domain/3/device"]);
  assert.deepEqual(guestSeen, [], "the released domain's watches are gone");
  assert.deepEqual(released, ["@releaseDomain"]);
  assert.equal(s.stats()[3]?.transactions ?? 0, 0);
  assert.throws(() => s.read(3, "device"), errno("ESRCH", /not introduced/));
  assert.throws(() => s.transactionEnd(3, tx, true), errno("ESRCH"));
  assert.throws(() => s.releaseDomain(3), errno("ESRCH"));
  assert.throws(() => s.releaseDomain(0), errno("EINVAL"));
  // It can be introduced again, with a fresh home.
  s.introduceDomain(3);
  assert.deepEqual(s.directory(3, "/local/domain/3"), []);
  assert.throws(() => s.introduceDomain(3), errno("EEXIST"));
});

test("onOp and stats count operations per domain; dump shows the tree", () => {
  const s = storeWith(1);
  const ops: string[] = [];
  s.onOp = (d, op) => ops.push(`${d}:${op}`);
  s.write(1, "k", "v");
  s.read(1, "k");
  s.directory(0, "/local/domain/1");
  assert.throws(() => s.read(1, "missing"));
  assert.deepEqual(ops, ["1:write", "1:read", "0:directory", "1:read"]);
  const st = s.stats();
  assert.equal(st[1].ops.read, 2);
  assert.equal(st[1].ops.write, 1);
  assert.equal(st[1].totalOps, 3);
  assert.equal(st[1].nodes, 2);
  assert.equal(s.dump("/local/domain/1"), ['/local/domain/1 = "" (n1)', '  k = "v" (n1)'].join("\n"));
  assert.match(s.dump(), /^\/ = "" \(n0\)\n {2}local = ""/);
});

test("executeXenStoreRequest rejects malformed requests from guests", () => {
  const s = storeWith(1);
  const run = (req: unknown) => executeXenStoreRequest(s, 1, req as XenStoreRequest, () => {});
  assert.throws(() => run(null), errno("EINVAL", /unknown XenStore request/));
  assert.throws(() => run({ op: "introduce" }), errno("EINVAL", /use one of read, write/));
  assert.throws(() => run({ op: "read" }), errno("EINVAL", /path must be a string/));
  assert.throws(() => run({ op: "write", path: "x", value: { a: 1 } }), errno("EINVAL"));
  assert.throws(() => run({ op: "read", path: "x", tx: "1" }), errno("EINVAL", /transaction id/));
  assert.throws(() => run({ op: "txEnd", tx: 1 }), errno("EINVAL", /commit/));
  assert.throws(() => run({ op: "setPerms", path: "x", perms: "b1" }), errno("EINVAL", /non-empty list/));
  run({ op: "write", path: "x", value: "ok" });
  assert.equal(run({ op: "read", path: "x" }), "ok");
});

test("XenStoreError survives a wire round trip", () => {
  const e = new XenStoreError("EACCES", "/local/domain/4/x", "domain 3 may not write /local/domain/4/x");
  const back = XenStoreError.fromWire(JSON.parse(JSON.stringify(e)));
  assert.ok(back instanceof XenStoreError);
  assert.equal(back.errno, "EACCES");
  assert.equal(back.path, "/local/domain/4/x");
  assert.equal(back.message, e.message);
  assert.equal(back.code, 13);
  assert.equal(XenStoreError.fromWire({ nonsense: true }).errno, "EIO");
});

/** The remote client the brief asks to be ~20 lines: requests and watch events over a port. */
class PortXenStoreClient extends RequestXenStoreClient {
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: unknown) => void }
  >();
  constructor(
    domid: number,
    private readonly port: MessagePort,
  ) {
    super(domid);
    port.on(
      "message",
      (m: {
        kind: string;
        id?: number;
        result?: unknown;
        error?: unknown;
        path?: string;
        token?: string;
      }) => {
        if (m.kind === "watch") return this.deliverWatch(m.path as string, m.token as string);
        const p = this.pending.get(m.id as number);
        this.pending.delete(m.id as number);
        if (m.kind === "ok") p?.resolve(m.result);
        else p?.reject(XenStoreError.fromWire(m.error));
      },
    );
  }
  protected send(req: XenStoreRequest): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.port.postMessage({ id, req });
    });
  }
}

test("a client over a message channel works through RequestXenStoreClient", async () => {
  const s = storeWith(4);
  const { port1: hostSide, port2: guestSide } = new MessageChannel();
  hostSide.on("message", ({ id, req }: { id: number; req: XenStoreRequest }) => {
    try {
      const result = executeXenStoreRequest(s, 4, req, (path, token) =>
        hostSide.postMessage({ kind: "watch", path, token }),
      );
      hostSide.postMessage({ kind: "ok", id, result });
    } catch (e) {
      hostSide.postMessage({ kind: "err", id, error: (e as XenStoreError).toJSON() });
    }
  });
  const guest = new PortXenStoreClient(4, guestSide);
  try {
    const events: string[] = [];
    const unwatch = await guest.watch("device", (p) => events.push(p));
    await guest.write("device/x", "1");
    assert.equal(await guest.read("device/x"), "1");
    await assert.rejects(guest.write("/local/domain/0/x", "1"), errno("EACCES"));
    assert.equal(await guest.tryRead("device/none"), undefined);
    const n = await guest.transaction(async (tx) => {
      await tx.write("device/y", "2");
      return (await tx.directory("device")).length;
    });
    assert.equal(n, 2);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(events, [
      "/local/domain/4/device",
      "/local/domain/4/device/x",
      "/local/domain/4/device/y",
    ]);
    await unwatch();
    await unwatch(); // idempotent
    assert.equal(s.stats()[4].watches, 0);
  } finally {
    hostSide.close();
    guestSide.close();
  }
});

test("perms an unprivileged domain sets: at most maxPermsPerNode entries, live domains only, each once; domain 0 is not limited", () => {
  const s = storeWith(1, 2);
  s.write(1, "x", "1");
  const own = { dom: 1, access: "n" } as const;
  const many = [own, ...[0, 2, 3, 4, 5].map((dom) => ({ dom, access: "r" as const }))];
  assert.throws(() => s.setPerms(1, "x", many), errno("ENOSPC", /at most 5 entries/));
  assert.throws(
    () => s.setPerms(1, "x", [own, { dom: 9, access: "r" }]),
    errno("ENOENT", /domain 9, which does not exist/),
  );
  assert.throws(
    () => s.setPerms(1, "x", [own, { dom: 2, access: "r" }, { dom: 2, access: "b" }]),
    errno("EINVAL", /name domain 2 twice/),
  );
  s.setPerms(1, "x", [own, { dom: 2, access: "r" }]);
  assert.equal(s.read(2, "/local/domain/1/x"), "1");
  // Inside a transaction the same rules hold, and again when it commits.
  const t = s.transactionStart(1);
  assert.throws(() => s.setPerms(1, "x", [own, { dom: 7, access: "r" }], t), errno("ENOENT"));
  s.transactionEnd(1, t, false);
  // Domain 0 (the toolstack) may name anyone, as many as it likes.
  s.setPerms(0, "/local/domain/1/x", [
    own,
    ...[2, 3, 4, 5, 6, 7].map((dom) => ({ dom, access: "r" as const })),
  ]);
});

test("releasing a domain revokes its name from every node: what it owned passes to domain 0, a new domain with its id inherits nothing", () => {
  const s = storeWith(1, 2);
  s.write(1, "shared", "for 2");
  s.setPerms(1, "shared", [
    { dom: 1, access: "n" },
    { dom: 2, access: "r" },
  ]);
  s.write(0, "/backend/x", "made for 2");
  s.setPerms(0, "/backend/x", [
    { dom: 2, access: "r" },
    { dom: 1, access: "r" },
  ]);
  s.releaseDomain(2);
  assert.deepEqual(s.getPerms(0, "/local/domain/1/shared"), [{ dom: 1, access: "n" }]);
  assert.deepEqual(s.getPerms(0, "/backend/x"), [
    { dom: 0, access: "r" },
    { dom: 1, access: "r" },
  ]);
  assert.equal(s.stats()[0].nodes >= 1, true);
  s.introduceDomain(2);
  assert.throws(() => s.read(2, "/local/domain/1/shared"), errno("EACCES"));
  assert.throws(() => s.write(2, "/backend/x", "mine?"), errno("EACCES"));
  assert.equal(s.read(2, "/backend/x"), "made for 2", "the default access (read) stays");
});

test("what a released domain created in another's home goes with it: short-lived writers cannot pile nodes up under a long-lived keeper", async () => {
  // Xen's XSA-419: passed to domain 0 (no quota), each writer's nodes outlived it, so a keeper
  // letting one short-lived domain after another fill its quota in the keeper's home held
  // nodes without bound.
  const quota = 40;
  const s = new XenStore({ maxNodesPerDomain: quota });
  const keeper = 1;
  s.introduceDomain(keeper);
  s.write(keeper, "data/pool", "");
  s.write(0, "/local/domain/1/data/pool/from-dom0", "the toolstack's");
  const base = s.nodeCount();
  const removed: string[] = [];
  s.watch(0, "/local/domain/1/data/pool", "k", (p) => removed.push(p));
  await settle();
  removed.length = 0;
  for (let d = 2; d < 12; d++) {
    s.introduceDomain(d);
    s.setPerms(keeper, "data/pool", [
      { dom: keeper, access: "n" },
      { dom: d, access: "w" },
    ]);
    let n = 0;
    // One write inside a transaction: a commit creates as its caller too.
    const t = s.transactionStart(d);
    s.write(d, `/local/domain/1/data/pool/t${d}/deep/node`, "in a transaction", t);
    s.transactionEnd(d, t, true);
    assert.throws(() => {
      for (;;) s.write(d, `/local/domain/1/data/pool/d${d}-${n++}`, "x".repeat(4000));
    }, errno("ENOSPC"));
    assert.equal(s.stats()[d].nodes, quota, "the writer used its whole quota");
    assert.equal(s.read(0, `/local/domain/1/data/pool/d${d}-0`), "x".repeat(4000));
    s.releaseDomain(d);
    assert.equal(s.nodeCount(), base, `after writer ${d} is released, the store is back to ${base} nodes`);
    assert.equal(s.stats()[0].nodes, 4, "domain 0 holds nothing new: /, /local, /local/domain, its home");
  }
  await settle();
  assert.ok(removed.includes("/local/domain/1/data/pool/d2-0"), "watches on the pool saw the nodes go");
  // Honest use goes on: domain 0's node stays, the keeper writes in its home as before.
  assert.equal(s.read(keeper, "data/pool/from-dom0"), "the toolstack's");
  s.write(keeper, "data/pool/mine", "1");
  assert.deepEqual(s.directory(keeper, "data/pool"), ["from-dom0", "mine"]);

  // A node the writer made that domain 0 then gave to the keeper is the keeper's (its quota
  // binds): it stays. One domain 0 made and gave to the writer passes back to domain 0.
  s.introduceDomain(20);
  s.setPerms(keeper, "data/pool", [
    { dom: keeper, access: "n" },
    { dom: 20, access: "w" },
  ]);
  s.write(20, "/local/domain/1/data/pool/given", "made by 20");
  s.setPerms(0, "/local/domain/1/data/pool/given", [{ dom: keeper, access: "n" }]);
  s.write(0, "/backend/for-20", "made by dom0");
  s.setPerms(0, "/backend/for-20", [{ dom: 20, access: "n" }]);
  s.releaseDomain(20);
  assert.equal(s.read(keeper, "data/pool/given"), "made by 20");
  assert.deepEqual(s.getPerms(0, "/backend/for-20"), [{ dom: 0, access: "n" }]);
});

test("a watch's path and token fit one request payload", () => {
  const s = storeWith(1);
  assert.throws(() => s.watch(1, "data", "t".repeat(5000), () => {}), errno("EINVAL", /must fit in 4096/));
  s.watch(1, "data", "t".repeat(1000), () => {});
});

/** A WatchEventSender on a credit word of its own: what it posted, and how many it merged (merged.n). */
function watchSender() {
  const credit = new SharedArrayBuffer(XS_CREDIT_BYTES);
  const posted: { path: string; token: string }[] = [];
  const merged = { n: 0 };
  const w = new WatchEventSender(
    credit,
    (e) => posted.push(e),
    () => merged.n++,
  );
  return { w, taken: new Int32Array(credit), posted, merged };
}

test("watch events wait within a domain's window, one per path and token, merged per watch past the backlog; all go out as it takes them", async () => {
  const { w, taken, posted, merged } = watchSender();
  for (let i = 0; i < XS_EVENT_WINDOW; i++) w.send(`/d/${i}`, "t", "/d");
  assert.equal(posted.length, XS_EVENT_WINDOW);
  assert.equal(w.inFlight, XS_EVENT_WINDOW);
  // The window is full: the rest wait, a repeat of a waiting (path, token) is the same news.
  w.send("/d/again", "t", "/d");
  w.send("/d/again", "t", "/d");
  w.send("/d/again", "u", "/d");
  assert.equal(w.waiting, 2);
  for (let i = 0; w.waiting < XS_EVENT_BACKLOG; i++) w.send(`/d/more/${i}`, "t", "/d");
  // Past the backlog, new paths become one event at the watch's own path.
  for (let i = 0; i < 100; i++) w.send(`/d/past/${i}`, "t", "/d");
  assert.equal(w.waiting, XS_EVENT_BACKLOG + 1);
  assert.equal(merged.n, 100);
  assert.equal(posted.length, XS_EVENT_WINDOW, "nothing more posted while nothing is taken");
  // The guest takes what it has: the rest goes out, a window at a time.
  while (w.waiting > 0) {
    Atomics.store(taken, 0, posted.length);
    await new Promise((r) => setTimeout(r, 15));
  }
  assert.equal(posted.length, XS_EVENT_WINDOW + XS_EVENT_BACKLOG + 1);
  assert.equal(posted.at(-1)?.path, "/d", "the merged event names the watched path");
  // A runtime that claims more than it was sent gets no more room.
  Atomics.store(taken, 0, posted.length + 5);
  w.send("/d/late", "t", "/d");
  assert.equal(w.waiting, 1);
  w.close();
  assert.equal(w.waiting, 0);
});

test("watch events of long paths wait within the window's and the backlog's characters too (a guest watching 3,000-character paths had ~9 MB of the host's waiting)", async () => {
  const { w, taken, posted, merged } = watchSender();
  const long = (i: number) => `/d/${String(i).padStart(6, "0")}/${"p".repeat(3000)}`;
  for (let i = 0; i < 2000; i++) w.send(long(i), "tok", "/d");
  const postedChars = posted.reduce((n, e) => n + e.path.length + e.token.length, 0);
  assert.ok(postedChars <= XS_EVENT_WINDOW_BYTES, `${postedChars} characters posted and not taken`);
  assert.equal(w.inFlightBytes, postedChars);
  assert.ok(
    w.waitingBytes <= XS_EVENT_BACKLOG_BYTES + "/d".length + "tok".length,
    `${w.waitingBytes} characters waiting`,
  );
  assert.ok(merged.n > 0, "past the backlog's characters, one event at the watch's path");
  // All of it still reaches the guest as it takes what it has, the merged one last.
  while (w.waiting > 0) {
    Atomics.store(taken, 0, posted.length);
    await new Promise((r) => setTimeout(r, 15));
  }
  assert.equal(posted.at(-1)?.path, "/d");
  Atomics.store(taken, 0, posted.length);
  assert.equal(w.inFlightBytes, 0, "what was taken is forgotten");
  w.close();
});

test("a transaction keeps at most its quota of paths and changes (xenstored's quota-trans-nodes): ENOSPC beyond, and ending it lets go", () => {
  // A guest that wrote one node over and over, or read ever new missing paths, inside a
  // transaction it never ended grew the host's heap without bound: the transaction kept
  // every change (with its value) and every path it looked at.
  const s = new XenStore({ maxTransactionNodes: 50, maxTransactionBytes: 64 * 1024 });
  s.introduceDomain(1);
  s.write(1, "x", "0");
  /** Writes of `bytes`-byte values to x in transaction `t` until one fails; how many went. */
  const fill = (t: number, bytes: number) => {
    let n = 0;
    assert.throws(
      () => {
        for (; n < 1000; n++) s.write(1, "x", "v".repeat(bytes), t);
      },
      errno("ENOSPC", /transaction \d+ of domain 1 keeps .*its quota \(50, 65536 bytes\); end it/),
    );
    return n;
  };
  const t = s.transactionStart(1);
  assert.equal(fill(t, 100), 50, "the changes' count");
  s.transactionEnd(1, t, false);
  assert.equal(s.read(1, "x"), "0", "an aborted transaction changed nothing");
  const big = s.transactionStart(1);
  assert.equal(fill(big, 4000), 16, "the bytes kept (16 × 4,001 ≤ 64 KiB)");
  s.transactionEnd(1, big, false);
  // Reads of ever new missing paths: the paths' count.
  const u = s.transactionStart(1);
  let reads = 0;
  assert.throws(() => {
    for (; reads < 1000; reads++) {
      try {
        s.read(1, `missing-${reads}`, u);
      } catch (e) {
        if ((e as XenStoreError).errno !== "ENOENT") throw e;
      }
    }
  }, errno("ENOSPC"));
  assert.equal(reads, 50, "50 missing paths; the home directory they are checked at is no entry of its own");
  // A path it looked at costs nothing more, and the transaction still commits.
  assert.throws(() => s.read(1, "missing-3", u), errno("ENOENT"));
  s.transactionEnd(1, u, true);
  // Ended: its quota is free again; domain 0 is not bound.
  const again = s.transactionStart(1);
  s.write(1, "x", "1", again);
  s.transactionEnd(1, again, true);
  const d = s.transactionStart(0);
  for (let i = 0; i < 200; i++) s.write(0, "/local/domain/1/x", "v".repeat(4000), d);
  s.transactionEnd(0, d, true);
  assert.equal(s.read(1, "x").length, 4000);
});

// Tests of the xenbus handshake over XenStore with permissions enforced: startup 1→2→3→4,
// teardown Closing→Closed, timeouts and the errors a misbehaving peer gets.
import assert from "node:assert/strict";
import { test } from "node:test";
import { XenbusState } from "../src/xen/abi.js";
import {
  createDevice,
  destroyDevice,
  XenbusBackend,
  XenbusError,
  XenbusFrontend,
} from "../src/xen/xenbus.js";
import { LocalXenStoreClient, XenStore, XenStoreError } from "../src/xen/xenstore.js";

const settle = () => new Promise<void>((r) => setImmediate(r));

function xbErr(errno: string, msg?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof XenbusError || e instanceof XenStoreError, `unexpected ${String(e)}`);
    assert.equal(e.errno, errno, e.message);
    if (msg) assert.match(e.message, msg);
    return true;
  };
}

/** Records every value each state node takes, read by dom0 at the moment the watch fires. */
function recordStates(store: XenStore, paths: Record<string, string>): string[] {
  const seq: string[] = [];
  for (const [side, dir] of Object.entries(paths)) {
    const p = `${dir}/state`;
    store.watch(0, p, `rec-${side}`, () => {
      const v = store.exists(0, p) ? store.read(0, p) : "gone";
      if (seq.filter((s) => s.startsWith(`${side}:`)).at(-1) !== `${side}:${v}`) seq.push(`${side}:${v}`);
    });
  }
  return seq;
}

const FRONT = 5;

for (const backDom of [0, 2]) {
  test(`handshake and teardown between backend dom ${backDom} and frontend dom ${FRONT}`, async () => {
    const store = new XenStore();
    store.introduceDomain(FRONT);
    if (backDom !== 0) store.introduceDomain(backDom);
    store.introduceDomain(6); // a bystander
    const toolstack = new LocalXenStoreClient(store, 0);
    const spec = { type: "vif", frontDom: FRONT, backDom, devid: 0 };
    const { frontPath, backPath } = await createDevice(toolstack, spec);
    assert.equal(frontPath, `/local/domain/${FRONT}/device/vif/0`);
    assert.equal(backPath, `/local/domain/${backDom}/backend/vif/${FRONT}/0`);
    await assert.rejects(createDevice(toolstack, spec), xbErr("EEXIST", /destroy it first/));

    const frontClient = new LocalXenStoreClient(store, FRONT);
    const backClient = new LocalXenStoreClient(store, backDom);
    const bystander = new LocalXenStoreClient(store, 6);
    // Each side owns its directory and may read the other's; nobody else sees either.
    assert.equal(await frontClient.read(`${backPath}/frontend`), frontPath);
    assert.equal(await backClient.read(`${frontPath}/backend`), backPath);
    assert.equal(await backClient.read(`${frontPath}/backend-id`), String(backDom));
    assert.equal(await frontClient.read(`${backPath}/online`), "1");
    await assert.rejects(frontClient.write(`${backPath}/state`, "4"), xbErr("EACCES"));
    await assert.rejects(bystander.read(`${frontPath}/state`), xbErr("EACCES"));
    await assert.rejects(bystander.read(`${backPath}/state`), xbErr("EACCES"));

    const seq = recordStates(store, { front: frontPath, back: backPath });
    const back = new XenbusBackend(backClient, "vif", FRONT, 0);
    const front = new XenbusFrontend(frontClient, "vif", 0);
    assert.deepEqual(await front.readBackend(), { path: backPath, id: backDom });
    assert.deepEqual(await back.readFrontend(), { path: frontPath, id: FRONT });

    let featuresSeenByFront: Record<string, string> = {};
    const [gathered, features] = await Promise.all([
      back.connect({ "feature-sg": 1, "feature-rx-copy": 1, "multi-queue-max-queues": 1 }, [
        "tx-ring-ref",
        "rx-ring-ref",
        "event-channel",
      ]),
      front.connect(async (f) => {
        featuresSeenByFront = f;
        // Keys chosen from the features, as a frontend allocates its rings after reading them.
        return {
          "tx-ring-ref": 8,
          "rx-ring-ref": 9,
          "event-channel": 3,
          "request-rx-copy": f["feature-rx-copy"],
        };
      }),
    ]);
    await settle();
    assert.deepEqual(seq, ["front:1", "back:1", "back:2", "front:3", "back:4", "front:4"]);
    assert.deepEqual(gathered, { "tx-ring-ref": "8", "rx-ring-ref": "9", "event-channel": "3" });
    assert.deepEqual(features, { "feature-rx-copy": "1", "feature-sg": "1", "multi-queue-max-queues": "1" });
    assert.deepEqual(featuresSeenByFront, features);
    assert.equal(await front.state(), XenbusState.Connected);
    assert.equal(await back.state(), XenbusState.Connected);
    // The frontend's keys inherit its directory's perms: the backend reads, the bystander not.
    assert.deepEqual(await toolstack.getPerms(`${frontPath}/tx-ring-ref`), [
      { dom: FRONT, access: "n" },
      { dom: backDom, access: "r" },
    ]);
    await assert.rejects(bystander.read(`${frontPath}/tx-ring-ref`), xbErr("EACCES"));

    // Teardown, started by the frontend; the backend follows the frontend's state.
    seq.length = 0;
    const backSawFront: XenbusState[] = [];
    let backClosed: Promise<void> | undefined;
    const stopFollowing = await back.onFrontendState((s) => {
      backSawFront.push(s);
      if (s === XenbusState.Closing) backClosed = back.close(2000);
    });
    await front.close(2000);
    await settle();
    assert.ok(backClosed, "the backend saw Closing");
    await backClosed;
    await settle();
    assert.deepEqual(seq.slice(0, 2), ["front:5", "back:5"]);
    assert.deepEqual([...seq.slice(2)].sort(), ["back:6", "front:6"]);
    assert.deepEqual(backSawFront, [XenbusState.Connected, XenbusState.Closing, XenbusState.Closed]);

    // The toolstack removes the device; the backend sees the frontend's state vanish (Unknown).
    await destroyDevice(toolstack, spec);
    await settle();
    assert.equal(backSawFront.at(-1), XenbusState.Unknown);
    await stopFollowing();
    // A torn-down device is not resurrected by a late state switch.
    assert.equal(await front.switchState(XenbusState.Closed), false);
    assert.equal(await toolstack.exists(frontPath), false);
    await settle();
    assert.equal(store.stats()[FRONT].watches, 0, "no watch left behind by the frontend");
    assert.equal(store.stats()[FRONT].transactions, 0);
  });
}

test("frontend times out with a clear error when the backend never appears", async () => {
  const store = new XenStore();
  store.introduceDomain(FRONT);
  const toolstack = new LocalXenStoreClient(store, 0);
  // A toolstack that wrote only the frontend half.
  const frontPath = `/local/domain/${FRONT}/device/vif/0`;
  const backPath = `/local/domain/0/backend/vif/${FRONT}/0`;
  await toolstack.write(`${frontPath}/backend`, backPath);
  await toolstack.write(`${frontPath}/backend-id`, "0");
  await toolstack.write(`${frontPath}/state`, "1");
  const front = new XenbusFrontend(new LocalXenStoreClient(store, FRONT), "vif", 0);
  await assert.rejects(
    front.connect({ "ring-ref": 1 }, 60),
    xbErr(
      "ETIMEDOUT",
      new RegExp(
        `timed out after 60 ms waiting for the backend state ${backPath}/state to become InitWait\\(2\\); last seen: not readable by domain 5`,
      ),
    ),
  );
  assert.equal(await front.state(), XenbusState.Initialising, "nothing was published");
  await settle();
  assert.equal(store.stats()[FRONT].watches, 0, "the watch is removed after the timeout");
});

test("frontend times out naming the state it saw when the backend stays Initialising", async () => {
  const store = new XenStore();
  store.introduceDomain(FRONT);
  const { backPath } = await createDevice(new LocalXenStoreClient(store, 0), {
    type: "myri",
    frontDom: FRONT,
    backDom: 0,
    devid: 1,
  });
  const front = new XenbusFrontend(new LocalXenStoreClient(store, FRONT), "myri", 1);
  await assert.rejects(
    front.waitForBackendState([XenbusState.InitWait, XenbusState.Connected], 40),
    xbErr(
      "ETIMEDOUT",
      new RegExp(
        `${backPath}/state to become InitWait\\(2\\) or Connected\\(4\\); last seen: Initialising\\(1\\)`,
      ),
    ),
  );
});

test("frontend without a device directory, and a backend going away during connect", async () => {
  const store = new XenStore();
  store.introduceDomain(FRONT);
  const frontClient = new LocalXenStoreClient(store, FRONT);
  const lonely = new XenbusFrontend(frontClient, "vif", 7);
  await assert.rejects(lonely.readBackend(), xbErr("ENOENT", /createDevice/));

  await createDevice(new LocalXenStoreClient(store, 0), {
    type: "vif",
    frontDom: FRONT,
    backDom: 0,
    devid: 0,
  });
  const back = new XenbusBackend(new LocalXenStoreClient(store, 0), "vif", FRONT, 0);
  const front = new XenbusFrontend(frontClient, "vif", 0);
  const connecting = front.connect({ "ring-ref": 1 }, 2000);
  await back.switchState(XenbusState.Closing);
  await assert.rejects(connecting, xbErr("ECONNRESET", /backend went to Closing\(5\)/));
});

test("backend names the key the frontend did not publish; bad keys are refused", async () => {
  const store = new XenStore();
  store.introduceDomain(FRONT);
  const { frontPath } = await createDevice(new LocalXenStoreClient(store, 0), {
    type: "vif",
    frontDom: FRONT,
    backDom: 0,
    devid: 0,
  });
  const back = new XenbusBackend(new LocalXenStoreClient(store, 0), "vif", FRONT, 0);
  const front = new XenbusFrontend(new LocalXenStoreClient(store, FRONT), "vif", 0);
  await assert.rejects(front.publish({ state: 4 }), xbErr("EINVAL", /state is written by the state machine/));
  await assert.rejects(front.publish({ "/abs": 1 }), xbErr("EINVAL"));
  await back.advertise({ "feature-sg": 1 });
  await front.publish({ "tx-ring-ref": 8 });
  await assert.rejects(
    back.gather(["tx-ring-ref", "event-channel"], 1000),
    xbErr("ENOENT", new RegExp(`frontend ${frontPath} did not publish "event-channel"`)),
  );
  assert.deepEqual(await back.gather(["tx-ring-ref"], 1000), { "tx-ring-ref": "8" });
  assert.throws(
    () => new XenbusBackend(new LocalXenStoreClient(store, 0), "v i f", FRONT, 0),
    xbErr("EINVAL"),
  );
  assert.throws(() => new XenbusFrontend(new LocalXenStoreClient(store, FRONT), "vif", -1), xbErr("EINVAL"));
});

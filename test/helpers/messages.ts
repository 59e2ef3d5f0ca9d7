/**
 * A domain's next message, as `once(d, "message")` gives it (`[message]`), except that the
 * test fails at once, with the guest's own error, if the domain stops first: a guest that
 * throws would otherwise leave the test waiting for the runner's timeout (10 minutes).
 */
import type { Domain } from "../../src/xen/hypervisor/domain.js";

/** What the guest sent before it stopped is still delivered first (the domain flushes it on a later tick). */
const AFTER_EXIT_MS = 50;

export function nextMessage(d: Domain): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const onMessage = (m: unknown) => {
      if (settled) return;
      settled = true;
      d.off("message", onMessage);
      resolve([m]);
    };
    d.on("message", onMessage);
    void d.exited.then((e) =>
      setTimeout(() => {
        if (settled) return;
        settled = true;
        d.off("message", onMessage);
        const why = e.error ? `: ${e.error.stack ?? e.error.message}` : "";
        reject(new Error(`domain ${d.name} stopped (${e.state}) before its next message${why}`));
      }, AFTER_EXIT_MS),
    );
  });
}

/** Sends `cmd` to `d` and resolves with its next message (as nextMessage: fails if it stops first). */
export async function request<T>(d: Domain, cmd: unknown): Promise<T> {
  const next = nextMessage(d);
  d.send(cmd);
  const [m] = await next;
  return m as T;
}

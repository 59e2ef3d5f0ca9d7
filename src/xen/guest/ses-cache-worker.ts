/**
 * The worker that makes SES's code cache (ses-cache.ts): it loads SES as a guest does, repairs
 * and hardens its own realm with the guests' options so that the functions they run are
 * compiled, and posts V8's code cache of the script. Runs nothing but SES.
 */
import { parentPort } from "node:worker_threads";
import { runSesScript, SES_REPAIR_OPTIONS } from "./ses-script.js";

interface SesGlobal {
  repairIntrinsics(options: object): void;
  hardenIntrinsics(): void;
}

const script = runSesScript();
const g = globalThis as unknown as SesGlobal;
g.repairIntrinsics(SES_REPAIR_OPTIONS);
g.hardenIntrinsics();
parentPort!.postMessage(script.createCachedData());

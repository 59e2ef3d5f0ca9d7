/**
 * The driver domain's worker script: the domain thread with its program (driver-domain.ts)
 * compiled in, so the whole of domain 0 can be one bundle (scripts/bundle.mjs; Host.start
 * picks it through xen/bundles.ts) instead of ~100 modules to resolve and load at every
 * host start.
 */
import { runDomainThread } from "../xen/guest/domain-thread.js";
import main from "./driver-domain.js";

await runDomainThread(main as Parameters<typeof runDomainThread>[0]);

/**
 * The worker script of every domain (hypervisor.ts starts it): the domain's thread, its
 * program loaded from its sandbox image or, for a privileged domain, from its module
 * (domain-thread.ts).
 */
import { runDomainThread } from "./domain-thread.js";

export type { GuestMain } from "./domain-thread.js";

await runDomainThread();

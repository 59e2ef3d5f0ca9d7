/**
 * What a host knows about its machine (os facts), for benchmark reports: the host reads
 * them, and hands them to a job's ranks as data (a guest has no `node:os`).
 */
import os from "node:os";

export interface MachineFacts {
  hostname: string;
  /** ISO date at start. */
  date: string;
  platform: string;
  arch: string;
  /** Kernel release (os.release()). */
  release: string;
  node: string;
  v8: string;
  cpus: { count: number; model: string };
  totalMemBytes: number;
  /** 1, 5, 15-minute load averages when the run started. */
  loadavgStart: number[];
}

export function machineFacts(): MachineFacts {
  const cpus = os.cpus();
  return {
    hostname: os.hostname(),
    date: new Date().toISOString(),
    platform: os.platform(),
    arch: os.arch(),
    release: os.release(),
    node: process.versions.node,
    v8: process.versions.v8,
    cpus: {
      count: cpus.length > 0 ? cpus.length : os.availableParallelism(),
      model: cpus[0]?.model.trim() || "unknown",
    },
    totalMemBytes: os.totalmem(),
    loadavgStart: os.loadavg(),
  };
}

/** The 1, 5, 15-minute load averages now. */
export function loadavg(): number[] {
  return os.loadavg();
}

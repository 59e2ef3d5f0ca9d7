/**
 * Open MPI beside a NAS kernel: `myrixen run -n N --openmpi nas-is|nas-cg` runs MyriXen's
 * kernel in C (openmpi/is.c, openmpi/cg.c: the same data, algorithm and verification as
 * src/programs/nas/is.ts and cg.ts, not NPB's own code) with `mpirun -np N` on this host after
 * the job, so the two kernels' times and their scaling from 1 to N ranks compare in the same
 * sitting. Where mpicc or mpirun is missing, or Open MPI cannot start, it gives the one line
 * that says why; nothing fails.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import {
  buildOpenMpiProgram,
  findOpenMpi,
  mpirunBase,
  OPENMPI_INSTALL,
  type OpenMpiTools,
  sharedMemoryBtl,
} from "./openmpi.js";
import type { NasResult } from "./program-rows.js";

const execFileP = promisify(execFile);

/** The NAS kernels that have an Open MPI counterpart here: their C source and binary name. */
const PORTS: Record<string, { kernel: string; source: string; binary: string }> = {
  "nas-is": { kernel: "is", source: "is.c", binary: "openmpi-is" },
  "nas-cg": { kernel: "cg", source: "cg.c", binary: "openmpi-cg" },
};
export const OPENMPI_NAS_KERNELS: readonly string[] = Object.keys(PORTS);

/** A class A run takes under a second; a stuck mpirun is ended after this. */
export const OPENMPI_NAS_TIMEOUT_MS = 300_000;

/** mpirun's arguments for `ranks` ranks of `binary` on this host over shared memory. */
export function nasMpirunArgs(tools: OpenMpiTools, ranks: number, binary: string, cls: string): string[] {
  return [...mpirunBase(ranks, `self,${sharedMemoryBtl(tools.version)}`), binary, cls];
}

/** The result lines of the kernel's report (rank 0's NPB-style output); undefined if absent. */
export function parseNasReport(
  stdout: string,
  cls: string,
  ranks: number,
  kernel = "is",
): NasResult | undefined {
  const time = /^\s*Time exact\s*=\s*([\d.]+)\s*$/m.exec(stdout);
  const mops = /^\s*Mop\/s total\s*=\s*([\d.]+)\s*$/m.exec(stdout);
  const verification = /^\s*Verification\s*=\s*(\w+)\s*$/m.exec(stdout);
  if (!time || !mops || !verification) return undefined;
  return {
    kernel,
    class: cls,
    ranks,
    path: "openmpi",
    verified: verification[1] === "SUCCESSFUL",
    time_s: Number(time[1]),
    mops: Number(mops[1]),
  };
}

export type OpenMpiNasOutcome = { result: NasResult; how: string } | { missing: string };

/**
 * Runs the Open MPI counterpart of `program` (nas-is, nas-cg) at class `cls` on `ranks` ranks;
 * never throws. `path`: where to look for mpicc and mpirun (default $PATH).
 */
export async function runOpenMpiNas(
  program: string,
  cls: string,
  ranks: number,
  path?: string,
  timeoutMs = OPENMPI_NAS_TIMEOUT_MS,
): Promise<OpenMpiNasOutcome> {
  const port = PORTS[program];
  if (!port)
    return {
      missing: `openmpi: ${program} has no Open MPI counterpart here (${OPENMPI_NAS_KERNELS.join(", ")} have)`,
    };
  const name = port.kernel.toUpperCase();
  const found = await findOpenMpi(path);
  if ("missing" in found) return found;
  let binary: string;
  try {
    binary = await buildOpenMpiProgram(found.tools, port.source, port.binary);
  } catch (e) {
    return {
      missing: `openmpi: ${(e as Error).message}; to measure Open MPI beside MyriXen: ${OPENMPI_INSTALL}`,
    };
  }
  const args = nasMpirunArgs(found.tools, ranks, binary, cls);
  const how = describe(found.tools, ranks, port.source);
  let stdout: string;
  try {
    ({ stdout } = await execFileP(found.tools.mpirun, args, { timeout: timeoutMs, maxBuffer: 1 << 20 }));
  } catch (e) {
    const err = e as Error & { stdout?: string; stderr?: string };
    // A kernel that ran and failed its verification exits 1 with its report: that is a result.
    const result = err.stdout ? parseNasReport(err.stdout, cls, ranks, port.kernel) : undefined;
    if (result) return { result, how };
    // The kernel's own complaint comes first; mpirun's banner about the exit code follows it.
    const why = (err.stderr?.trim() || err.message).split("\n")[0].trim();
    return {
      missing: `openmpi: mpirun -np ${ranks} of ${name} class ${cls} failed (${why}); MyriXen's run is unaffected`,
    };
  }
  const result = parseNasReport(stdout, cls, ranks, port.kernel);
  if (!result)
    return {
      missing: `openmpi: ${name} class ${cls} on ${ranks} ranks printed no result; MyriXen's run is unaffected`,
    };
  return { result, how };
}

function describe(tools: OpenMpiTools, ranks: number, source: string): string {
  return (
    `Open MPI ${tools.version}, mpirun -np ${ranks}, shared memory (--mca btl self,${sharedMemoryBtl(tools.version)}), ` +
    `pml ob1, not bound to cores; MyriXen's kernel in C (src/bench/openmpi/${source}), not NPB's own code; ` +
    "one untimed iteration, NPB's rule (no JIT to warm up)"
  );
}

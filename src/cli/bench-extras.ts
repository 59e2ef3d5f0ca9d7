/**
 * The parts of `myrixen bench` that build on later pieces (the latency breakdown, the HTML
 * report), kept in one place so the bench command reads the same whichever are present.
 */
import type { BenchProfile, BenchReport, BenchRow } from "../bench/harness.js";
import type { Host } from "../host/host.js";

export const BenchExtras = {
  suites: [] as string[],
  transports(_suite: string): string[] {
    return [];
  },
  async run(
    suite: string,
    _host: Host,
    _profile: BenchProfile,
    _o: { sizes: number[]; transports: string[] },
    _progress: (label: string) => void,
  ): Promise<BenchRow[]> {
    throw new Error(`suite ${suite} is not available in this build`);
  },
  describe(_rows: readonly BenchRow[]): string[] {
    return [];
  },
  /** Writes the HTML report; returns its path, or undefined if this build has none. */
  writeHtml(_file: string, _report: BenchReport): string | undefined {
    return undefined;
  },
};

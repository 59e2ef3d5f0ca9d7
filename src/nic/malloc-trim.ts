/**
 * Keeps glibc from handing a NIC thread's socket buffers back to the kernel after every
 * garbage collection, which made every byte a TCP link received fault its page in again.
 *
 * Node reads each socket chunk into a fresh 64 KiB buffer (an accepted socket cannot read
 * into one of ours: `onread` is for dialed sockets only). The NIC copies the frames out at
 * once, and V8 frees the dead buffers together, several MiB at a time, from a platform
 * thread. glibc then finds more free memory at the top of the NIC thread's arena than its trim
 * threshold (128 KiB at start, a few MiB once the process has freed a large block) and returns it (`madvise(MADV_DONTNEED)`), so the next reads
 * fault those pages in again, in the kernel's copy from the socket (`strace -k`: madvise calls
 * of 4.8–4.9 MB from V8's ArrayBufferSweeper). `perf stat -e page-faults` over `bench stream
 * --scope cross-host --sizes 64K,1M --transports bypass,raw-chain`: 540,000–750,000 faults a
 * run, 69,000–74,000 with the change below; on a VM whose page faults go through the
 * hypervisor, faulting had taken 15% of the run's CPU time (`perf record`), and the 64 KiB
 * stream ran at 250–400 MB/s in the runs that faulted most, 0.9–1.1 GB/s in the others.
 *
 * glibc's documented dynamic threshold (mallopt(3), M_MMAP_THRESHOLD): freeing a block that
 * was mmapped raises the mmap threshold to that block's size and the trim threshold to twice
 * it (for blocks up to 32 MiB). One 16 MiB buffer, dropped at once, is such a block when V8 frees it: from
 * then on up to 32 MiB may stay free at an arena's top, which covers what one collection
 * frees (an 8 MiB block, 16 MiB kept, still let one run in three fault as before), and blocks
 * up to 16 MiB come from the arenas instead of their own mappings. A bound, not a leak: memory
 * still goes back above it. Process-wide, as glibc's thresholds are; elsewhere (musl, macOS)
 * it is one allocation that does nothing.
 */

/** The block whose release sets glibc's thresholds: mmap threshold this, trim threshold twice this. */
const THRESHOLD_BLOCK_BYTES = 16 << 20;

/** Allocates and drops the block; its effect comes when the garbage collector frees it (soon: it is young). */
export function raiseMallocTrimThreshold(): void {
  void new ArrayBuffer(THRESHOLD_BLOCK_BYTES);
}

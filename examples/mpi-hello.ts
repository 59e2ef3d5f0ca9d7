// mpi-hello.ts — an MPI program: `npx myrixen run -n 2 mpi-hello.ts`
import { type Guest, MPI } from "myrixen";

export default async function main(guest: Guest) {
  const comm = await MPI.init(guest); // rank, size; every rank connected to every other
  const x = new Float64Array(1000).fill(comm.rank);
  comm.allreduce(MPI.IN_PLACE, x, MPI.SUM); // every element is now 0 + 1 + ... + (size − 1)
  if (comm.rank === 0) console.log(`${comm.size} ranks, allreduce gave ${x[0]}`);
  if (comm.rank === 0) comm.send(new Int32Array([42]), 1 % comm.size, 7);
  if (comm.rank === 1 % comm.size) {
    const got = new Int32Array(1);
    const st = comm.recv(got, MPI.ANY_SOURCE, MPI.ANY_TAG); // { source, tag, count, bytes }
    console.log(`rank ${comm.rank} got ${got[0]} from ${st.source} (tag ${st.tag})`);
  }
  comm.finalize();
  return 0; // the rank's exit code
}

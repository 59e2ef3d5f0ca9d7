// sum.ts — `myrixen run -n 4 sum.ts 1000`: each rank sums its share of 1..N; rank 0 prints the total.
import { type Guest, MPI } from "myrixen";

export default async function main(guest: Guest) {
  const n = Number(guest.argv[0] ?? 100); // ARGS: what follows sum.ts
  const comm = await MPI.init(guest);
  const sum = new Float64Array(1);
  for (let i = comm.rank + 1; i <= n; i += comm.size) sum[0] += i;
  comm.allreduce(MPI.IN_PLACE, sum, MPI.SUM);
  if (comm.rank === 0) console.log(`1 + ... + ${n} = ${sum[0]}`);
  comm.finalize();
  return 0;
}

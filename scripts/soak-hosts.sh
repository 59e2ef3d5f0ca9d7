#!/usr/bin/env bash
# Long-running use, measured: two `myrixen host` processes linked over loopback TCP, then
# JOBS cross-host jobs (osu-bw at 1 MiB, one rank on each host) run one after another; every
# 10 jobs it prints both hosts' resident memory (VmRSS) and the largest anonymous mapping of
# the first host (guest memory still mapped shows there). A host that runs for weeks must stay
# flat here. Run after a build (`npm ci` builds), from the project root:
#   scripts/soak-hosts.sh [JOBS]        (default 50; ports 7570/7571 and 7580/7581)
set -euo pipefail
JOBS=${1:-50}
cd "$(dirname "$0")/.."
node bin/myrixen.js host --listen 127.0.0.1:7570 --nic-id 11 >/tmp/myrixen-soak-h1.log 2>&1 &
H1=$!
node bin/myrixen.js host --listen 127.0.0.1:7580 --nic-id 12 --peers 127.0.0.1:7570 >/tmp/myrixen-soak-h2.log 2>&1 &
H2=$!
trap 'kill $H1 $H2 2>/dev/null || true' EXIT
sleep 3
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
biggest() {
  local m=0 range perms off dev inode path s
  while read -r range perms off dev inode path; do
    [[ -z "${path:-}" ]] || continue
    s=$((0x${range#*-} - 0x${range%-*}))
    ((s > m)) && m=$s
  done <"/proc/$1/maps"
  echo $((m / 1048576))
}
echo "jobs  host1 RSS  host2 RSS  host1 largest anonymous mapping"
printf "%4d  %6d MB  %6d MB  %6d MB\n" 0 $(($(rss $H1) / 1024)) $(($(rss $H2) / 1024)) "$(biggest $H1)"
for i in $(seq 1 "$JOBS"); do
  if ! node bin/myrixen.js run -n 2 --map-by node -H 127.0.0.1:7570:1,127.0.0.1:7580:1 \
    osu-bw -m 1048576:1048576 -i 100 >/tmp/myrixen-soak-job.log 2>&1; then
    echo "job $i failed:"; tail -3 /tmp/myrixen-soak-job.log
  fi
  if ((i % 10 == 0)); then
    printf "%4d  %6d MB  %6d MB  %6d MB\n" "$i" $(($(rss $H1) / 1024)) $(($(rss $H2) / 1024)) "$(biggest $H1)"
  fi
done

#!/bin/bash
# Runs inside a matrix guest (tests/kernels/init), chrooted into the host's root, which
# is read-only: gives the tests the writable places and kernel filesystems they expect,
# then runs the plan the host wrote into the results share. CI=true: nothing skips.
set -u
results=$flowtel_results
for dir in /tmp /run /var/log /var/lib/nginx /dev/shm; do
  [[ -d $dir ]] && mount -t tmpfs tmpfs "$dir"
done
mkdir -p /run/netns /dev/pts
mount -t devpts devpts /dev/pts
# This kernel's own modules (veth, netem, ...), for the kernel's module auto-loading.
mount --bind "$flowtel_modules" /usr/lib/modules
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
hostname flowtel-guest
# shellcheck source=/dev/null
source "$results/env"
uname -r >"$results/uname"
"$flowtel_agent" status >"$results/status.txt" 2>&1
echo $? >"$results/status.rc"
# A test written NAME:FEATURE runs only where `flowtel status` shows FEATURE attached;
# where it is not, the kernel's reason is in the status (and in docs/kernels.md, which
# the host checks), and the test is listed as not run.
features=$(sed -n '/^features:/,/^probes:/p' "$results/status.txt")
status=0
while read -r binary words; do
  [[ -z $binary || $binary == \#* ]] && continue
  tests=() settings=()
  for word in $words; do
    # VAR=VALUE: a setting for every agent this line's tests start (tests/src/agent.rs).
    if [[ $word == *=* ]]; then
      settings+=("$word")
      continue
    fi
    name=${word%%:*} needs=${word#*:}
    if [[ $word == *:* ]] && ! grep -qE "^  $needs +attached" <<<"$features"; then
      echo "not run: $name (needs $needs, which this kernel lacks)" >>"$results/tests.log"
      continue
    fi
    tests+=("$name")
  done
  # Only --exact is left when every named test needs what the kernel lacks.
  ((${#tests[@]} > 1)) || continue
  start=$(date +%s)
  # --report-time (libtest's, unstable: RUSTC_BOOTSTRAP lets a stable build take it)
  # puts each test's seconds in the log.
  [[ ${#settings[@]} -gt 0 ]] && echo "with ${settings[*]}:" >>"$results/tests.log"
  FLOWTEL_E2E_AGENT_ENV="${settings[*]}" RUSTC_BOOTSTRAP=1 "$binary" --test-threads=1 -Zunstable-options --report-time "${tests[@]}" \
    >>"$results/tests.log" 2>&1 || status=1
  echo "$(($(date +%s) - start)) s: $(basename "$binary") ${settings[*]} ${tests[*]:1}" >>"$results/seconds-per-binary"
done <"$results/plan"
echo "$status" >"$results/tests.rc"

#!/usr/bin/env bash
# The kernel matrix (README "Kernels"): boots each of Debian's kernels listed in
# tests/kernels/kernels.list under qemu (software emulation) and runs the end-to-end
# subset in tests/kernels/plan inside it, against the agent and test binaries built on
# this host. The guest sees the host's root read-only over 9p (the same tools as the
# host's tests), its own kernel's modules, and a writable results share; the host
# reads back `flowtel status` and the tests' output and fails when a guest's tests fail.
#
#   scripts/kernel-matrix.sh [NAME ...]      the named kernels (default: all)
#
# KERNEL_MATRIX_PLAN another plan (default tests/kernels/plan), for a partial run by hand.
# KERNEL_MATRIX_JOBS guests at once (default 1), KERNEL_MATRIX_SMP vCPUs each (2),
# KERNEL_MATRIX_TIMEOUT seconds per guest (3000), KERNEL_MATRIX_BUDGET seconds for the
# whole run (none): a guest still running at either limit is killed and fails, one not
# yet booted fails unbooted. KERNEL_MATRIX_OUT: the results (target/kernel-matrix).
#
# Kernels are fetched once through apt from Debian's registry into $KERNEL_MATRIX_CACHE
# (default /var/cache/flowtel/kernels), with an apt state of their own: the host's
# sources are never touched. Needs root; installs what it boots with (qemu-system-x86,
# busybox-static, kmod, cpio, xz-utils, zstd) from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=${KERNEL_MATRIX_CACHE:-/var/cache/flowtel/kernels}
out=${KERNEL_MATRIX_OUT:-$root/target/kernel-matrix}
# The whole run's seconds, fetching included (CI gives it what its 90 minutes leave).
deadline=${KERNEL_MATRIX_BUDGET:=86400}
log() { printf '[kernel-matrix] %s\n' "$*" >&2; }
# The guest mounts its own tmpfs on these: a results share beneath them would vanish.
case $out in
  /tmp/* | /run/* | /var/log/* | /dev/shm/*) log "KERNEL_MATRIX_OUT=$out: the guest hides that place; choose another" && exit 2 ;;
esac

# Downloads and unpacks one suite's kernel into $cache/NAME: vmlinuz, modules/<release>/.
fetch_kernel() {
  local name=$1 source=$2 dir=$cache/$1
  [[ -f $dir/ready ]] && return 0
  log "$name: fetching the kernel of '$source'"
  rm -rf "$dir" && mkdir -p "$dir"/{apt/lists/partial,apt/cache/archives/partial,debs,unpacked}
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $source" >"$dir/apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$dir/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache" -o Debug::NoLocking=1)
  apt-get "${opts[@]}" -qq update
  # linux-image-amd64 -> linux-image-<release>; since 6.17 that one is split further
  # into linux-binary-<release> (the kernel) and linux-modules-<release>.
  local image packages
  image=$(apt-cache "${opts[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  packages=("$image")
  mapfile -t -O 1 packages < <(apt-cache "${opts[@]}" depends "$image" |
    awk '/Depends: linux-(binary|modules)-[0-9]/ { print $2 }')
  (cd "$dir/debs" && apt-get "${opts[@]}" -qq download "${packages[@]}")
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/unpacked"; done
  local modules release
  modules=$(find "$dir/unpacked" -maxdepth 3 -type d -path '*/lib/modules' | head -1)
  release=$(ls "$modules")
  # Before the modules move: since 6.17 the kernel sits among them (modules/<release>/vmlinuz).
  cp "$(find "$dir/unpacked" \( -name "vmlinuz-$release" -o -path "*/$release/vmlinuz" \) | head -1)" "$dir/vmlinuz"
  mv "$modules" "$dir/modules"
  depmod_flat "$dir" "$release"
  rm -rf "$dir/unpacked" "$dir/debs" "$dir/apt"
  echo "$release" >"$dir/ready"
}

# depmod wants <base>/lib/modules/<release>: give it that shape through a symlink.
depmod_flat() {
  local dir=$1 release=$2
  mkdir -p "$dir/base/lib"
  ln -sfn "$dir/modules" "$dir/base/lib/modules"
  depmod -b "$dir/base" "$release"
  rm -rf "$dir/base"
}

# The initramfs: busybox, tests/kernels/init and the modules that mounting 9p needs on
# this kernel (virtio is a module in some of Debian's configs), uncompressed, in order.
make_initramfs() {
  local name=$1 dir=$cache/$1 release stage
  release=$(cat "$dir/ready")
  stage=$(mktemp -d)
  mkdir -p "$stage"/{bin,modules}
  cp /bin/busybox "$stage/bin/busybox"
  cp tests/kernels/init "$stage/init"
  local base
  base=$(mktemp -d)
  mkdir -p "$base/lib" && ln -s "$dir/modules" "$base/lib/modules"
  : >"$stage/modules.order"
  for module in virtio_pci 9pnet_virtio 9p; do
    # Built in where modules.builtin is not shipped beside the modules (7.x): nothing to load.
    { modprobe -d "$base" -S "$release" --show-depends "$module" 2>/dev/null || true; } | awk '$1 == "insmod" { print $2 }'
  done | awk '!seen[$0]++' | while read -r path; do
    local file
    file=$(basename "$path")
    case $file in
      *.xz) xz -dc "$path" >"$stage/modules/${file%.xz}" && file=${file%.xz} ;;
      *.zst) zstd -qdc "$path" >"$stage/modules/${file%.zst}" && file=${file%.zst} ;;
      *) cp "$path" "$stage/modules/$file" ;;
    esac
    echo "$file" >>"$stage/modules.order"
  done
  rm -rf "$base"
  (cd "$stage" && find . | cpio -o -H newc --quiet) >"$dir/initramfs.cpio"
  rm -rf "$stage"
}

# Writes the guests' plan once: every test binary of the plan's test targets, with
# filters, from $KERNEL_MATRIX_PLAN. The guests run copies of the binaries (in
# $results/target): a rebuild on the host while guests run does not change what they test.
write_plan() {
  local results=$1
  rm -rf "$results/target" && mkdir -p "$results/target/release/tests"
  cp target/release/flowtel "$results/target/release/flowtel"
  # The whole workspace, as scripts/test.sh builds it: with `-p` cargo would unify
  # features differently and rebuild every test binary.
  local build_log=$results/build.log
  cargo test --release --locked --no-run --message-format=json 2>"$build_log" |
    python3 -c '
import json, os, shutil, sys
plan = {}
for line in open(sys.argv[1]):
    line = line.split("#")[0].split()
    if line:
        plan.setdefault(line[0], []).append(line[1:])
for message in map(json.loads, sys.stdin):
    target = message.get("target", {}).get("name")
    if message.get("executable") and target in plan and message.get("profile", {}).get("test"):
        copy = os.path.join(sys.argv[2], os.path.basename(message["executable"]))
        shutil.copy2(message["executable"], copy)
        for words in plan[target]:
            settings = [w for w in words if "=" in w]
            print(copy, *settings, "--exact", *[w for w in words if "=" not in w])
' "${KERNEL_MATRIX_PLAN:-tests/kernels/plan}" "$results/target/release/tests" >"$results/plan" ||
    { tail -n 40 "$build_log" >&2; log "building the test binaries failed (above; whole log: $build_log)"; exit 1; }
  {
    echo "export CI=true HOME=$HOME PATH='$PATH'"
    # The tests find the agent under CARGO_TARGET_DIR (tests/src/agent.rs).
    echo "export CARGO_TARGET_DIR=$results/target"
    echo "export flowtel_agent=$results/target/release/flowtel"
  } >"$results/env"
}

# Boots kernel NAME and leaves its results in $out/NAME.
boot() {
  local name=$1 dir=$cache/$1 results=$out/$1
  rm -rf "$results" && mkdir -p "$results"
  cp "$out/plan" "$out/env" "$results/"
  # Each guest gets KERNEL_MATRIX_TIMEOUT, but never beyond the matrix's budget
  # (KERNEL_MATRIX_BUDGET seconds from the start): a guest cut short fails, loudly.
  local limit=${KERNEL_MATRIX_TIMEOUT:-3000} left=$((deadline - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit <= 0)); then
    log "$name: not booted: the matrix's budget of ${KERNEL_MATRIX_BUDGET} s is spent"
    echo 0 >"$results/seconds"
    return
  fi
  echo "$limit" >"$results/limit"
  log "$name: booting $(cat "$dir/ready") (at most $limit s)"
  local start=$SECONDS
  # tsc=reliable: under emulation the kernel may distrust the TSC and fall back to the
  # HPET, whose every read is an emulated device access (5.10 did: clock reads 3x
  # slower, in every probe's bpf_ktime_get_ns). mitigations=off: nothing to protect in
  # a test guest, and each mitigation costs emulated instructions.
  timeout --signal=KILL "$limit" qemu-system-x86_64 \
    -machine pc -cpu max -smp "${KERNEL_MATRIX_SMP:-2}" -m 3072 -nographic -no-reboot -nic none \
    -kernel "$dir/vmlinuz" -initrd "$dir/initramfs.cpio" \
    -append "console=ttyS0 rdinit=/init panic=-1 loglevel=4 tsc=reliable mitigations=off flowtel_results=$results flowtel_modules=$dir/modules flowtel_script=$root/tests/kernels/guest.sh" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap" \
    -virtfs "local,path=$results,mount_tag=results,security_model=passthrough" \
    >"$results/console.log" 2>&1 || true
  echo $((SECONDS - start)) >"$results/seconds"
}

# Prints one kernel's outcome; returns non-zero when it did not pass.
report() {
  local name=$1 results=$out/$1
  local passed failed
  passed=$(awk '/^test result:/ { p += $4 } END { print p + 0 }' "$results/tests.log" 2>/dev/null || echo 0)
  failed=$(awk '/^test result:/ { f += $6 } END { print f + 0 }' "$results/tests.log" 2>/dev/null || echo 0)
  log "$name ($(cat "$results/uname" 2>/dev/null || echo '?')): $passed passed, $failed failed in $(cat "$results/seconds") s"
  sed 's/^/    /' "$results/status.txt" 2>/dev/null >&2 || true
  sed 's/^/    /' "$results/seconds-per-binary" 2>/dev/null >&2 || true
  if [[ $(cat "$results/tests.rc" 2>/dev/null) != 0 || $(cat "$results/status.rc" 2>/dev/null) != 0 ]]; then
    log "$name: FAILED; console and test output follow"
    [[ -f $results/tests.rc ]] || log "$name: the guest did not finish (killed after $(cat "$results/limit" 2>/dev/null || echo 0) s, or not booted)"
    tail -n 60 "$results/console.log" >&2 2>/dev/null
    grep -vE '^test .* ok( <[0-9.]+s>)?$' "$results/tests.log" 2>/dev/null | tail -n 200 >&2
    return 1
  fi
}

missing=()
for pkg in qemu-system-x86 busybox-static kmod cpio xz-utils zstd; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

names=("$@")
if ((${#names[@]} == 0)); then
  mapfile -t names < <(awk '!/^#/ && NF { print $1 }' tests/kernels/kernels.list)
fi
# The guest binds its kernel's modules here; the host's root is read-only to it.
mkdir -p /usr/lib/modules
mkdir -p "$out"
write_plan "$out"
for name in "${names[@]}"; do
  source_line=$(awk -v n="$name" '$1 == n { $1 = ""; sub(/^ /, ""); print }' tests/kernels/kernels.list)
  [[ -n $source_line ]] || { log "no kernel '$name' in tests/kernels/kernels.list"; exit 2; }
  fetch_kernel "$name" "$source_line"
  make_initramfs "$name"
done
# Guests at once: $KERNEL_MATRIX_JOBS (default 1). Each guest's vCPUs are host threads,
# so more at once only helps where the guests wait more than they compute.
jobs=${KERNEL_MATRIX_JOBS:-1}
running=0
for name in "${names[@]}"; do
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
  boot "$name" &
  running=$((running + 1))
done
wait
status=0
for name in "${names[@]}"; do
  report "$name" || status=1
done
python3 tests/kernels/table.py "$out" "${names[@]}" >"$out/table.md" || status=1
cat "$out/table.md" >&2
# docs/kernels.md carries the whole matrix's table: a run of every kernel must agree
# with it (or rewrite it, when asked), so the docs say what the kernels showed.
if (($# == 0)); then
  if [[ ${KERNEL_MATRIX_UPDATE_DOCS:-} == 1 ]]; then
    python3 tests/kernels/docs.py write docs/kernels.md "$out/table.md"
  elif ! python3 tests/kernels/docs.py check docs/kernels.md "$out/table.md"; then
    log "docs/kernels.md does not match this run (KERNEL_MATRIX_UPDATE_DOCS=1 rewrites it)"
    status=1
  fi
fi
log "matrix done in $SECONDS s"
exit "$status"

#!/usr/bin/env bash
# Bit-exactness check of edgelstm's int8 runtime on aarch64 (the Raspberry Pi's CPU) under emulation.
#
#   bash scripts/aarch64_check.sh [--cpu CPU]... [--steps N] [--keep] [BUNDLE_DIR]
#
# Without BUNDLE_DIR it converts the shipped C-MAPSS example to int8 TFLite (`edgelstm convert`, ~10 s),
# and the shipped autoencoder (a window model: window_int8.tflite, checked the same way, one window per step).
# Then it runs scripts/aarch64_check.py on DIR/step_int8.tflite (and DIR/step_int8_stream.tflite, the
# CPU runtime's model, whose float ops at the front normalise raw readings) natively (x86-64) and under
# `qemu-aarch64-static -cpu cortex-a72` (Pi 4) and `-cpu cortex-a76` (Pi 5): 500 steps of
# default_rng(0) normal inputs, one thread, edgelstm's TFLiteStepper, and compares the raw int8
# y of every step and the final raw int8 state with numpy.array_equal.
#
# Exit: 0 PASS, 1 mismatch (FAIL line names the first mismatching step), 2 setup failure
# (one line "SETUP FAILED: reason").
#
# Set-up, done once and kept in ${EDGELSTM_AARCH64_CACHE:-$HOME/.cache/edgelstm-aarch64}:
#   - apt-get install -y qemu-user-static debootstrap        (when missing; needs root)
#   - rootfs-bookworm-arm64/: `debootstrap --arch=arm64 --foreign --variant=minbase` plus python3.11
#     (the foreign first stage only downloads the --include'd packages: their .debs are extracted
#     with dpkg-deb -x; nothing runs inside the tree, no chroot, no binfmt_misc needed)
#   - site-aarch64-cp311-*/: aarch64 wheels installed on x86 with `pip --platform ... --target`,
#     pinned to the numpy and ai-edge-litert versions of the x86 side (fallback: tflite-runtime
#     2.14.0 with numpy<2)
#   - pycache-*/: bytecode of both sides (PYTHONPYCACHEPREFIX: nothing is written into the repo)
# Before each emulated run ROOTFS/proc/cpuinfo is written for the emulated core: qemu-user
# shows the host's x86 /proc/cpuinfo otherwise, and LiteRT's cpuinfo library (XNNPACK) crashes
# (SIGSEGV in Interpreter()) when it finds no ARM "CPU part" there. qemu resolves absolute paths
# inside the -L prefix first, so the emulated process reads the file from the rootfs.
#
# Environment: EDGELSTM_AARCH64_CACHE, EDGELSTM_AARCH64_CPUS ("cortex-a72 cortex-a76"),
# EDGELSTM_AARCH64_MIRROR (http://deb.debian.org/debian), EDGELSTM_AARCH64_INTERPRETER
# (litert|tflite_runtime|tensorflow, default: first importable), EDGELSTM_REPO (the edgelstm
# source tree to test, default: this script's repository), PYTHON (x86 python, default python3).

set -uo pipefail

T0=$EPOCHREALTIME
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECK_PY="$SCRIPT_DIR/aarch64_check.py"
REPO=${EDGELSTM_REPO:-$(cd "$SCRIPT_DIR/.." && pwd)}
CACHE=${EDGELSTM_AARCH64_CACHE:-$HOME/.cache/edgelstm-aarch64}
MIRROR=${EDGELSTM_AARCH64_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-python3}
INTERP=${EDGELSTM_AARCH64_INTERPRETER:-}
SUITE=bookworm
GLIBC_MINOR=36          # bookworm's glibc 2.36: newest manylinux tag the rootfs can load
PYVER=3.11              # bookworm's python3.11
STEPS=500
KEEP=0
BUNDLE=""
WINDOW_BUNDLE=""
CPUS=()

die() { echo "SETUP FAILED: $*"; exit 2; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

cpuinfo_for() {  # cpuinfo_for CPU: /proc/cpuinfo of that core (implementer, variant, part, revision, features)
    local fields
    case "$1" in
        cortex-a53) fields="0x41 0x0 0xd03 4|fp asimd evtstrm crc32 cpuid" ;;            # Pi 3, Zero 2
        cortex-a55) fields="0x41 0x2 0xd05 0|fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
        cortex-a72) fields="0x41 0x0 0xd08 3|fp asimd evtstrm crc32 cpuid" ;;            # Pi 4 (BCM2711)
        cortex-a76) fields="0x41 0x4 0xd0b 1|fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;  # Pi 5 (BCM2712)
        neoverse-n1) fields="0x41 0x3 0xd0c 1|fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs" ;;
        *) return 1 ;;
    esac
    local ids=${fields%%|*} features=${fields#*|} impl variant part rev possible last n
    read -r impl variant part rev <<< "$ids"
    # as many processors as the (host's) /sys/devices/system/cpu/possible, which cpuinfo also reads
    possible=$(cat /sys/devices/system/cpu/possible 2>/dev/null || echo 0)
    last=${possible##*[-,]}
    for n in $(seq 0 "$last"); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: %s\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$n" "$features" "$impl" "$variant" "$part" "$rev"
    done
}

while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) [ $# -ge 2 ] || die "--cpu needs a value"; CPUS+=("$2"); shift 2 ;;
        --steps) [ $# -ge 2 ] || die "--steps needs a value"; STEPS=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) [ -z "$BUNDLE" ] || die "only one BUNDLE_DIR"; BUNDLE=$1; shift ;;
    esac
done
[ ${#CPUS[@]} -gt 0 ] || read -r -a CPUS <<< "${EDGELSTM_AARCH64_CPUS:-cortex-a72 cortex-a76}"
for cpu in "${CPUS[@]}"; do
    cpuinfo_for "$cpu" > /dev/null || die "no /proc/cpuinfo template for -cpu $cpu in $0 (known: cortex-a53 cortex-a55 cortex-a72 cortex-a76 neoverse-n1)"
done
[ -f "$CHECK_PY" ] || die "$CHECK_PY is missing"
[ -d "$REPO/edgelstm" ] || die "no edgelstm package in $REPO"
if [ -n "$BUNDLE" ]; then
    [ -d "$BUNDLE" ] || die "bundle directory $BUNDLE does not exist"
    BUNDLE=$(cd "$BUNDLE" && pwd)
    [ -f "$BUNDLE/step_int8.tflite" ] || die "$BUNDLE/step_int8.tflite does not exist"
fi

mkdir -p "$CACHE/logs" || die "cannot create cache directory $CACHE"
CACHE=$(cd "$CACHE" && pwd)
LOGS="$CACHE/logs"
# One run at a time per cache: set-up is shared, and ROOTFS/proc/cpuinfo is rewritten per CPU.
if command -v flock >/dev/null; then
    exec 9>"$CACHE/.lock"
    flock 9
fi
echo "edgelstm aarch64 check: repo $REPO, cache $CACHE"

# ---------------------------------------------------------------- tools
T_SETUP=$EPOCHREALTIME
SETUP_NOTES=()
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || die "qemu-user-static and debootstrap are missing and this is not root: apt-get install -y qemu-user-static debootstrap"
    echo "setup: apt-get install -y qemu-user-static debootstrap"
    { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap; } > "$LOGS/apt.log" 2>&1 ||
        die "apt-get install qemu-user-static debootstrap failed (log: $LOGS/apt.log)"
    SETUP_NOTES+=("installed qemu-user-static debootstrap")
fi
QEMU=$(command -v qemu-aarch64-static) || die "qemu-aarch64-static not found after install"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
QEMU_VERSION=$("$QEMU" --version | head -n1)
QEMU_CPUS=$("$QEMU" -cpu help 2>/dev/null)

# ---------------------------------------------------------------- rootfs
ROOTFS="$CACHE/rootfs-$SUITE-arm64"
if [ ! -f "$ROOTFS/.edgelstm-complete" ]; then
    echo "setup: debootstrap --foreign $SUITE arm64 (first run only, ~1 min)"
    TMP_ROOTFS="$ROOTFS.tmp"
    rm -rf "$TMP_ROOTFS" "$ROOTFS"
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3.11,libpython3.11-stdlib,python3-minimal \
        "$SUITE" "$TMP_ROOTFS" "$MIRROR" > "$LOGS/debootstrap.log" 2>&1 ||
        die "debootstrap --arch=arm64 --foreign $SUITE failed (log: $LOGS/debootstrap.log)"
    if [ ! -x "$TMP_ROOTFS/usr/bin/python3.11" ] || [ ! -d "$TMP_ROOTFS/usr/lib/python3.11" ]; then
        # The foreign stage unpacks only the required set; the included packages (python3.11 and
        # its libraries) are left as .debs in the tree's apt cache.
        debs=("$TMP_ROOTFS"/var/cache/apt/archives/*.deb)
        [ -e "${debs[0]}" ] || die "debootstrap left no .deb files in $TMP_ROOTFS/var/cache/apt/archives"
        for deb in "${debs[@]}"; do
            dpkg-deb -x "$deb" "$TMP_ROOTFS" 2>>"$LOGS/debootstrap.log" || die "dpkg-deb -x $deb failed"
        done
    fi
    [ -x "$TMP_ROOTFS/usr/bin/python3.11" ] || die "no usr/bin/python3.11 in the arm64 rootfs"
    [ -d "$TMP_ROOTFS/usr/lib/python3.11/encodings" ] || die "no usr/lib/python3.11 in the arm64 rootfs"
    rm -f "$TMP_ROOTFS"/var/cache/apt/archives/*.deb
    mv "$TMP_ROOTFS" "$ROOTFS" || die "cannot move the rootfs into $ROOTFS"
    touch "$ROOTFS/.edgelstm-complete"
    SETUP_NOTES+=("built rootfs")
fi
mkdir -p "$ROOTFS/proc"
ARM_MACHINE=$("$QEMU" -cpu cortex-a72 -L "$ROOTFS" "$ROOTFS/usr/bin/python3.11" -I -c \
    'import platform; print(platform.machine(), platform.python_version())' 2>"$LOGS/python-smoke.log") ||
    die "the arm64 python3.11 does not start under $QEMU (log: $LOGS/python-smoke.log)"
[ "${ARM_MACHINE%% *}" = aarch64 ] || die "emulated python reports machine '$ARM_MACHINE', not aarch64"

# ---------------------------------------------------------------- aarch64 wheels
dist_version() {
    "$PY" -c 'import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass' "$1" 2>/dev/null
}
X86_NUMPY=$(dist_version numpy)
X86_LITERT=$(dist_version ai-edge-litert)
[ -n "$X86_NUMPY" ] || die "numpy is not installed for $PY (the x86 side)"
PLATFORMS=(--platform manylinux2014_aarch64)
for minor in $(seq 17 "$GLIBC_MINOR"); do PLATFORMS+=(--platform "manylinux_2_${minor}_aarch64"); done

install_site() {  # install_site DIR REQUIREMENT...; 0 when done
    local dir=$1; shift
    [ -f "$dir/.edgelstm-complete" ] && return 0
    rm -rf "$dir.tmp" "$dir"
    echo "setup: pip install --platform manylinux_2_${GLIBC_MINOR}_aarch64 --target $(basename "$dir") $*"
    {
        echo "== $*"
        "$PY" -m pip install --disable-pip-version-check --no-warn-script-location -q \
            --only-binary=:all: "${PLATFORMS[@]}" --python-version "$PYVER" --implementation cp \
            --target "$dir.tmp" "$@"
    } >> "$LOGS/pip.log" 2>&1 || { rm -rf "$dir.tmp"; return 1; }
    mv "$dir.tmp" "$dir" && touch "$dir/.edgelstm-complete" && SETUP_NOTES+=("installed wheels: $*")
}
site_name() { echo "$CACHE/site-aarch64-cp${PYVER/./}-$(echo "$*" | tr -c 'A-Za-z0-9.\n' '_')"; }

SITE=""
ATTEMPTS=()
# jsonschema: the runtime validates every manifest against its schema (edgelstm/runtime/bundle.py)
[ -n "$X86_LITERT" ] && ATTEMPTS+=("numpy==$X86_NUMPY ai-edge-litert==$X86_LITERT jsonschema")
ATTEMPTS+=("numpy ai-edge-litert jsonschema" "numpy<2 tflite-runtime==2.14.0 jsonschema")
for reqs in "${ATTEMPTS[@]}"; do
    # shellcheck disable=SC2086  # word splitting of the requirement list is intended
    dir=$(site_name $reqs)
    # shellcheck disable=SC2086
    if install_site "$dir" $reqs; then
        SITE=$dir
        SITE_REQS=$reqs
        break
    fi
    echo "note: no cp${PYVER/./} manylinux aarch64 wheels for: $reqs (log: $LOGS/pip.log)"
done
[ -n "$SITE" ] || die "no aarch64 wheels of ai-edge-litert or tflite-runtime for cp${PYVER/./} could be installed (log: $LOGS/pip.log)"
SETUP_S=$(elapsed "$T_SETUP")
if [ ${#SETUP_NOTES[@]} -eq 0 ]; then SETUP_NOTES=("all cached"); fi
echo "setup: $(IFS=';'; echo "${SETUP_NOTES[*]}") in ${SETUP_S} s; $QEMU_VERSION; rootfs python ${ARM_MACHINE#* }; aarch64 wheels: $SITE_REQS"

# ---------------------------------------------------------------- bundle
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgelstm-aarch64.XXXXXX") || die "mktemp failed"
cleanup() { if [ "$KEEP" = 1 ]; then echo "kept: $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
cd "$WORK" || die "cannot cd to $WORK"
X86_ENV=(env "PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}" "PYTHONPYCACHEPREFIX=$CACHE/pycache-x86_64")
DEMO_S=0
if [ -z "$BUNDLE" ]; then
    T_DEMO=$EPOCHREALTIME
    BUNDLE="$WORK/bundle"
    "${X86_ENV[@]}" "$PY" -m edgelstm convert "$REPO/examples/cmapss_fd001_lstm.keras" \
        --calibration "$REPO/calibration/cmapss-fd001.json" --scaler "$REPO/examples/cmapss_fd001_lstm.scaler.json" \
        --formats tflite --quant int8 --long-steps 1000 --out "$BUNDLE" --quiet > "$WORK/demo.log" 2>&1 ||
        { KEEP=1; die "python -m edgelstm convert failed: $(grep -v '^ ' "$WORK/demo.log" | tail -n1) (log: $WORK/demo.log)"; }
    [ -f "$BUNDLE/step_int8.tflite" ] || { KEEP=1; die "python -m edgelstm convert wrote no step_int8.tflite (log: $WORK/demo.log)"; }
    WINDOW_BUNDLE="$WORK/window_bundle"  # and a window model: the shipped C-MAPSS autoencoder
    "${X86_ENV[@]}" "$PY" -m edgelstm convert "$REPO/examples/cmapss_fd001_autoencoder.keras" \
        --calibration "$REPO/calibration/cmapss_fd001_healthy.npz" \
        --scaler "$REPO/examples/cmapss_fd001_autoencoder.scaler.json" --formats tflite --quant int8 \
        --window-samples 200 --eval-windows 100 --out "$WINDOW_BUNDLE" --quiet > "$WORK/window.log" 2>&1 ||
        { KEEP=1; die "python -m edgelstm convert of the autoencoder failed: $(grep -v '^ ' "$WORK/window.log" | tail -n1) (log: $WORK/window.log)"; }
    DEMO_S=$(elapsed "$T_DEMO")
    echo "bundles: the shipped C-MAPSS example and autoencoder converted in ${DEMO_S} s"
else
    echo "bundle: $BUNDLE"
fi

# ---------------------------------------------------------------- runs
T_RUNS=$EPOCHREALTIME

run_or_die() {  # run_or_die NAME COMMAND...: run, show its stdout; exit 2 when it fails
    local name=$1; shift
    "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
    local rc=$?
    cat "$WORK/$name.out"
    if [ $rc -ne 0 ]; then
        KEEP=1
        grep -q '^SETUP FAILED' "$WORK/$name.out" && exit 2
        die "the $name run of aarch64_check.py exited with status $rc: $(tail -n1 "$WORK/$name.err") (log: $WORK/$name.err)"
    fi
}

mkdir -p "$CACHE/pycache-aarch64"
RESULTS=()
WORST=0
check_bundle() {  # check_bundle DIR TAG [MODEL]: x86-64 run, then each emulated CPU, compared bit for bit
    local dir=$1 tag=$2 model=${3:-} cpu label rc
    local run_args=(run --bundle "$dir" --steps "$STEPS")
    [ -n "$model" ] && run_args+=(--model "$model")
    [ -n "$INTERP" ] && run_args+=(--interpreter "$INTERP")
    run_or_die "x86_64$tag" "${X86_ENV[@]}" "$PY" "$CHECK_PY" "${run_args[@]}" --out "$WORK/x86_64$tag.npz" --label "x86_64$tag"
    for cpu in "${CPUS[@]}"; do
        if ! grep -qx "  *$cpu" <<< "$QEMU_CPUS"; then
            echo "SKIP aarch64 $cpu: not supported by $QEMU_VERSION"
            RESULTS+=("$cpu$tag SKIP")
            continue
        fi
        cpuinfo_for "$cpu" > "$ROOTFS/proc/cpuinfo"
        label="aarch64 $cpu$tag"
        run_or_die "$cpu$tag" env -i PATH=/usr/bin:/bin HOME="$HOME" LANG=C.UTF-8 \
            PYTHONPATH="$SITE:$REPO" PYTHONNOUSERSITE=1 PYTHONPYCACHEPREFIX="$CACHE/pycache-aarch64" \
            "$QEMU" -cpu "$cpu" -L "$ROOTFS" "$ROOTFS/usr/bin/python3.11" "$CHECK_PY" "${run_args[@]}" \
            --out "$WORK/$cpu$tag.npz" --label "$label"
        "$PY" "$CHECK_PY" compare "$WORK/x86_64$tag.npz" "$WORK/$cpu$tag.npz"
        rc=$?
        case $rc in
            0) RESULTS+=("$cpu$tag PASS") ;;
            1) RESULTS+=("$cpu$tag FAIL"); KEEP=1; [ $WORST -lt 1 ] && WORST=1 ;;
            *) KEEP=1; exit 2 ;;
        esac
    done
}

check_bundle "$BUNDLE" ""
if [ -f "$BUNDLE/step_int8_stream.tflite" ]; then  # the CPU runtime's model: raw float readings, normalised in the graph
    check_bundle "$BUNDLE" " (stream model)" step_int8_stream.tflite
fi
if [ -n "$WINDOW_BUNDLE" ]; then
    check_bundle "$WINDOW_BUNDLE" " (window model)"
fi
RUNS_S=$(elapsed "$T_RUNS")

PASSED=0
for r in "${RESULTS[@]}"; do [ "${r##* }" = PASS ] && PASSED=$((PASSED + 1)); done
[ $PASSED -gt 0 ] || [ $WORST -gt 0 ] || die "no aarch64 CPU could be emulated (${CPUS[*]})"
VERDICT=PASS
[ $WORST -eq 0 ] || VERDICT=FAIL
echo "RESULT: $VERDICT [$(IFS=','; echo "${RESULTS[*]}" | sed 's/,/, /g')] int8 y of $STEPS steps (+ final state), aarch64 vs x86_64;" \
     "wall time $(elapsed "$T0") s (setup $SETUP_S s, demo $DEMO_S s, runs $RUNS_S s)"
exit $WORST

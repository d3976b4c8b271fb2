#!/bin/bash
# tradeops.remediation.evidence: capture one host's incident evidence into a private temp folder.
#
# Run by the role as `bash -s`: its stdin is EVIDENCE_*=<shell-quoted value> lines (lists are
# newline-separated), then this script. It never stops at a failing or missing command: each
# failure becomes an entry of "errors" in manifest.json.
# Redaction is not done here: everything is captured into a private folder (mode 0700, umask 077)
# on this host, then finish_evidence.py (Python, with the collection's _redact.py, both sent in
# EVIDENCE_FINISH / EVIDENCE_REDACT_MODULE) redacts EVERY file of it, by the secret values the run
# knows (EVIDENCE_REDACT_VALUES, handed over on a pipe, never on disk or on a command line) and by
# pattern, before anything is hashed, written to the manifest or archived. If that fails, or this
# script stops half-way, the folder is removed. Nothing of the captured files reaches stdout/stderr.
# Its stdout is one JSON line: {"workdir": ..., "manifest": {...}}, or {"fatal": "..."} with exit
# status 1 when the evidence cannot be produced (then nothing is left on the host).
set -o nounset -o pipefail
umask 077
shopt -s nullglob globstar

errors=()
entries=()

# The capture forks as little as it can: a fork costs about 2 ms here, and a host with 200 logs has 200 of
# everything below. So the JSON quoting and the folders' names are done in bash itself, not in $(...).
json_to() {  # json_to <var> <string>: sets <var> to the string as a JSON string literal, without a subshell
  local s=$2
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/\\t}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}
  s=${s//[[:cntrl:]]/?}
  printf -v "$1" '"%s"' "$s"
}
json() {  # a JSON string literal, on stdout
  local quoted
  json_to quoted "$1"
  printf '%s' "$quoted"
}
fail() { errors+=("$1"); }
run() {  # every command is bounded: a hung NFS mount or D-state process must not hang the capture
  if command -v timeout >/dev/null 2>&1; then timeout "$EVIDENCE_COMMAND_TIMEOUT" "$@"; else "$@"; fi
}
record() {  # record <archive member> <source>: listed in the manifest (size and sha256 after redaction)
  local name source
  json_to name "$1"
  json_to source "$2"
  entries+=("{\"name\":$name,\"source\":$source}")
}
expand() {  # expand <path or glob>: sets found=(matching regular files, absolute paths)
  local spec=$1 m IFS=$'\n'
  found=()
  # shellcheck disable=SC2206 # the glob must expand; IFS is newline only, so spaces are safe
  local matches=($spec)
  if [ "${#matches[@]}" -eq 0 ]; then
    fail "no file matches $spec"
  fi
  for m in "${matches[@]}"; do
    if [ -f "$m" ]; then
      case $m in /*) found+=("$m") ;; *) found+=("$PWD/$m") ;; esac
    elif [ "$m" = "$spec" ]; then  # named explicitly, not a glob match
      if [ -e "$m" ]; then fail "not a regular file: $m"; else fail "not found: $m"; fi
    fi
  done
}

fatal() {
  printf '{"fatal":%s}\n' "$(json "$1")"
  exit 1
}
work=$(mktemp -d "${EVIDENCE_TMP%/}/tradeops-evidence.XXXXXXXX" 2>&1) \
  || fatal "cannot create a temporary folder under ${EVIDENCE_TMP}: $work"
out="$work/$EVIDENCE_NAME"
mkdir -p "$out/logs" "$out/env" || { rm -rf -- "$work"; fatal "cannot create $out"; }

# Until finish_evidence.py has redacted it, the folder holds raw captures: remove it if this
# script stops before that (a signal, a bug), so no unredacted file is ever left behind.
trap 'rm -rf -- "$work"' EXIT
python=""
for candidate in "${EVIDENCE_PYTHON:-}" python3 /usr/bin/python3 /usr/libexec/platform-python python; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
done
[ -n "$python" ] || fatal "no Python on the host: the evidence cannot be redacted, so none is captured"

# System: what the runbooks check first (load, disk, memory).
{
  echo "## date -u"; date -u
  echo "## uname -a"; uname -a
  echo "## uptime"; run uptime
  echo "## df -hPl"; run df -hPl
  echo "## free -m"; run free -m
} >"$out/system.txt" 2>&1
record system.txt "date, uname, uptime, df, free"

# Processes.
if run ps -eww -o pid,ppid,user,lstart,etime,args >"$out/processes.txt" 2>"$work/ps.err"; then
  record processes.txt "ps -eww -o pid,ppid,user,lstart,etime,args"
elif run ps aux >"$out/processes.txt" 2>>"$work/ps.err"; then
  record processes.txt "ps aux"
else
  fail "process list: ps failed: $(head -c 300 "$work/ps.err")"
  rm -f -- "$out/processes.txt"
fi

# Listening sockets: ss, else netstat; if neither works, say why in the manifest.
sockets=""
why=()
for cmd in "ss -ltnup" "netstat -ltnup"; do
  tool=${cmd%% *}
  if ! command -v "$tool" >/dev/null 2>&1; then
    why+=("$tool is not installed")
    continue
  fi
  # shellcheck disable=SC2086 # the command and its flags are split on purpose
  if run $cmd >"$out/sockets.txt" 2>"$work/sockets.err"; then
    sockets=$cmd
    break
  fi
  why+=("$cmd failed: $(head -c 300 "$work/sockets.err")")
done
if [ -n "$sockets" ]; then
  record sockets.txt "$sockets"
else
  rm -f -- "$out/sockets.txt"
  msg=""
  for w in "${why[@]}"; do msg+="${msg:+; }$w"; done
  fail "listening sockets not captured: $msg"
fi

# Log tails and recent errors (per log: the last EVIDENCE_ERROR_LINES matching lines among its
# last EVIDENCE_ERROR_SCAN_LINES lines).
logs=0
: >"$out/recent_errors.txt"
declare -A seen=()
log_files=()
log_dirs=()
while IFS= read -r spec; do
  [ -n "$spec" ] || continue
  expand "$spec"
  for f in "${found[@]}"; do
    [ -n "${seen[$f]:-}" ] && continue  # listed twice
    seen[$f]=1
    log_files+=("$f")
    log_dirs+=("$out/logs${f%/*}")
  done
done <<<"$EVIDENCE_LOG_PATHS"
# every log's folder in one mkdir, not one per log
[ "${#log_dirs[@]}" -eq 0 ] || mkdir -p -- "${log_dirs[@]}"
# Per log, four processes: its last EVIDENCE_ERROR_SCAN_LINES lines read once (bounded by `run`) into the
# private folder, its tail cut from that copy, grep on that copy, and grep's matches kept by mapfile in this
# shell (lastpipe), of which the last EVIDENCE_ERROR_LINES are written. A tail longer than the scan is read
# from the log itself.
shopt -s lastpipe
scan="$work/scan"
for f in "${log_files[@]}"; do
  if ! run tail -n "$EVIDENCE_ERROR_SCAN_LINES" -- "$f" >"$scan" 2>"$work/tail.err"; then
    fail "log $f: $(head -c 300 "$work/tail.err")"
    continue
  fi
  if [ "$EVIDENCE_TAIL_LINES" -le "$EVIDENCE_ERROR_SCAN_LINES" ]; then
    tail -n "$EVIDENCE_TAIL_LINES" -- "$scan" >"$out/logs$f" 2>"$work/tail.err"
  else
    run tail -n "$EVIDENCE_TAIL_LINES" -- "$f" >"$out/logs$f" 2>"$work/tail.err"
  fi
  if [ $? -eq 0 ]; then
    record "logs$f" "tail -n $EVIDENCE_TAIL_LINES $f"
    logs=$((logs + 1))
  else
    fail "log $f: $(head -c 300 "$work/tail.err")"
    rm -f -- "$out/logs$f"
    continue
  fi
  # grep's status 1 is "no match", not a failure (read from PIPESTATUS, without a subshell per log)
  printf '==> %s <==\n' "$f" >>"$out/recent_errors.txt"
  grep -E -i -e "$EVIDENCE_ERROR_PATTERN" -- "$scan" 2>"$work/grep.err" | mapfile -t matched
  status=${PIPESTATUS[0]}
  if [ "$status" -gt 1 ]; then
    fail "recent errors of $f: $(head -c 300 "$work/grep.err")"
  elif [ "${#matched[@]}" -gt 0 ]; then
    from=$(( ${#matched[@]} > EVIDENCE_ERROR_LINES ? ${#matched[@]} - EVIDENCE_ERROR_LINES : 0 ))
    printf '%s\n' "${matched[@]:from}" >>"$out/recent_errors.txt"
  fi
done
rm -f -- "$scan"
if [ "$logs" -gt 0 ]; then
  record recent_errors.txt "grep -E -i '$EVIDENCE_ERROR_PATTERN' (last $EVIDENCE_ERROR_LINES per log)"
else
  rm -rf -- "$out/recent_errors.txt" "$out/logs"
fi

# Env files (redacted with every other file by finish_evidence.py, below).
envs=0
while IFS= read -r spec; do
  [ -n "$spec" ] || continue
  expand "$spec"
  for f in "${found[@]}"; do
    mkdir -p -- "$(dirname -- "$out/env$f")"
    if run cat -- "$f" >"$out/env$f" 2>/dev/null; then
      record "env$f" "$f (redacted)"
      envs=$((envs + 1))
    else
      fail "env file $f: cannot be read"
      rm -f -- "$out/env$f"
    fi
  done
done <<<"$EVIDENCE_ENV_FILES"
[ "$envs" -gt 0 ] || rm -rf -- "$out/env"

# Checksums of the files an investigator wants to compare (binaries, configs): sha256sum -c ready.
sums=0
while IFS= read -r spec; do
  [ -n "$spec" ] || continue
  expand "$spec"
  for f in "${found[@]}"; do
    if run sha256sum -- "$f" >>"$out/checksums.sha256" 2>"$work/sum.err"; then
      sums=$((sums + 1))
    else
      fail "checksum of $f: $(head -c 300 "$work/sum.err")"
    fi
  done
done <<<"$EVIDENCE_CHECKSUM_PATHS"
[ "$sums" -eq 0 ] || record checksums.sha256 "sha256sum of evidence_checksum_paths"

# Redact every file, then the manifest: who, when, what was captured (with the sizes and checksums
# of the redacted files), and what failed. The job goes to Python on a pipe (printf is a builtin:
# the secret values are on no command line and in no file).
join() { local IFS=,; printf '%s' "$*"; }
errs=()
for e in "${errors[@]}"; do errs+=("$(json "$e")"); done
manifest="{\"incident_id\":$(json "$EVIDENCE_INCIDENT_ID"),\"host\":$(json "$EVIDENCE_HOST"),\
\"hostname\":$(json "$(uname -n)"),\"run_timestamp\":$(json "$EVIDENCE_TIMESTAMP"),\
\"captured_at\":$(json "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),\"tail_lines\":$EVIDENCE_TAIL_LINES,\
\"error_pattern\":$(json "$EVIDENCE_ERROR_PATTERN"),\"error_lines\":$EVIDENCE_ERROR_LINES,\
\"redact_pattern\":$(json "$EVIDENCE_REDACT_PATTERN"),\"redact_logs\":$EVIDENCE_REDACT_LOGS,\
\"redact_min_value_length\":$EVIDENCE_REDACT_MIN_LENGTH}"
rm -f -- "$work"/*.err
printf '%s\n' "$EVIDENCE_REDACT_MODULE" >"$work/_redact.py"
printf '%s\n' "$EVIDENCE_FINISH" >"$work/finish_evidence.py"
result=$(printf '{"values":%s,"pattern":%s,"min_length":%s,"redact_logs":%s,"entries":[%s],"errors":[%s],"manifest":%s}' \
  "$EVIDENCE_REDACT_VALUES" "$(json "$EVIDENCE_REDACT_PATTERN")" "$EVIDENCE_REDACT_MIN_LENGTH" "$EVIDENCE_REDACT_LOGS" \
  "$(join "${entries[@]}")" "$(join "${errs[@]}")" "$manifest" \
  | "$python" -I -B "$work/finish_evidence.py" "$work" "$EVIDENCE_NAME" 2>/dev/null)
status=$?
rm -f -- "$work/_redact.py" "$work/finish_evidence.py"
if [ "$status" -ne 0 ] || [ -z "$result" ]; then
  case $result in '{"fatal":'*) printf '%s\n' "$result" ;; *) fatal "evidence could not be redacted ($python exited $status): nothing was kept" ;; esac
  exit 1
fi
trap - EXIT
printf '%s\n' "$result"

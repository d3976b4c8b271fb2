#!/bin/bash
# tradeops.remediation.evidence: capture one host's incident evidence into a private temp folder.
#
# Run by the role as `bash -s`: its stdin is EVIDENCE_*=<shell-quoted value> lines (lists are
# newline-separated), then this script. It never stops at a failing or missing command: each
# failure becomes an entry of "errors" in manifest.json. Raw env files are read only by sed, which
# writes the redacted copy; nothing of them reaches stdout or stderr.
# Its stdout is one JSON line: {"workdir": ..., "manifest": {...}}, or {"fatal": "..."} with exit
# status 1 when it cannot create its temporary folder (then nothing is left on the host).
set -o nounset -o pipefail
umask 077
shopt -s nullglob globstar

errors=()
entries=()

json() {  # a JSON string literal
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/\\t}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}
  s=${s//[[:cntrl:]]/?}
  printf '"%s"' "$s"
}
fail() { errors+=("$1"); }
run() {  # every command is bounded: a hung NFS mount or D-state process must not hang the capture
  if command -v timeout >/dev/null 2>&1; then timeout "$EVIDENCE_COMMAND_TIMEOUT" "$@"; else "$@"; fi
}
record() {  # record <archive member> <source>: size and sha256 of a captured file for the manifest
  local path="$out/$1" sum
  sum=$(sha256sum -- "$path" 2>/dev/null) || sum=""
  entries+=("{\"name\":$(json "$1"),\"source\":$(json "$2"),\"bytes\":$(wc -c <"$path"),\"sha256\":$(json "${sum%% *}")}")
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

# Redaction, as sed programs (GNU sed -E; the I flag makes the key pattern case-insensitive).
key="[A-Za-z0-9_.-]*(${EVIDENCE_REDACT_PATTERN//\//\\/})[A-Za-z0-9_.-]*"
assign="^([[:space:]]*(#[[:space:]]*)?(export[[:space:]]+)?${key}[[:space:]]*=)"
# scheme://user:secret@host -> scheme://user:<redacted>@host; and any word=value whose word matches
text_rules="s/([A-Za-z][A-Za-z0-9+.-]*:\\/\\/[^:\\/@[:space:]]*:)[^[:space:]\\/]*@/\\1<redacted>@/g
s/(^|[^A-Za-z0-9_.-])(${key}=)[^[:space:]&\"',;]*/\\1\\2<redacted>/Ig"
cat >"$work/text.sed" <<SED
$text_rules
SED
# env files: KEY=value lines whose KEY matches become KEY=<redacted>, including quoted values that
# span lines; private key blocks are dropped; then the text rules catch URLs and inline tokens.
cat >"$work/env.sed" <<SED
/${assign}[[:space:]]*"[^"]*\$/I,/"/ {
  s/${assign}.*/\\1<redacted>/I
  t
  d
}
/${assign}[[:space:]]*'[^']*\$/I,/'/ {
  s/${assign}.*/\\1<redacted>/I
  t
  d
}
/-----BEGIN [A-Z ]*PRIVATE KEY-----/,/-----END [A-Z ]*PRIVATE KEY-----/c\\
<redacted private key>
s/${assign}.*/\\1<redacted>/I
$text_rules
SED
redact_ok=true
if ! sed -E -f "$work/env.sed" </dev/null >/dev/null 2>&1 || ! sed -E -f "$work/text.sed" </dev/null >/dev/null 2>&1; then
  redact_ok=false
  fail "evidence_redact_pattern is not a valid extended regular expression: env files not captured"
fi
redact_text() {
  if [ "$EVIDENCE_REDACT_LOGS" = true ]; then sed -E -f "$work/text.sed"; else cat; fi
}
if [ "$redact_ok" = false ] && [ "$EVIDENCE_REDACT_LOGS" = true ]; then
  redact_text() { echo "<not captured: evidence_redact_pattern is invalid>"; cat >/dev/null; }
fi

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
if run ps -eww -o pid,ppid,user,lstart,etime,args 2>"$work/ps.err" | redact_text >"$out/processes.txt"; then
  record processes.txt "ps -eww -o pid,ppid,user,lstart,etime,args"
elif run ps aux 2>>"$work/ps.err" | redact_text >"$out/processes.txt"; then
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
while IFS= read -r spec; do
  [ -n "$spec" ] || continue
  expand "$spec"
  for f in "${found[@]}"; do
    [ -e "$out/logs$f" ] && continue  # listed twice
    mkdir -p -- "$(dirname -- "$out/logs$f")"
    if run tail -n "$EVIDENCE_TAIL_LINES" -- "$f" 2>"$work/tail.err" | redact_text >"$out/logs$f"; then
      record "logs$f" "tail -n $EVIDENCE_TAIL_LINES $f"
      logs=$((logs + 1))
    else
      fail "log $f: $(head -c 300 "$work/tail.err")"
      rm -f -- "$out/logs$f"
      continue
    fi
    {
      printf '==> %s <==\n' "$f"
      run tail -n "$EVIDENCE_ERROR_SCAN_LINES" -- "$f" \
        | { grep -E -i -e "$EVIDENCE_ERROR_PATTERN" || [ $? -eq 1 ]; } \
        | tail -n "$EVIDENCE_ERROR_LINES" | redact_text
    } >>"$out/recent_errors.txt" 2>"$work/grep.err" || fail "recent errors of $f: $(head -c 300 "$work/grep.err")"
  done
done <<<"$EVIDENCE_LOG_PATHS"
if [ "$logs" -gt 0 ]; then
  record recent_errors.txt "grep -E -i '$EVIDENCE_ERROR_PATTERN' (last $EVIDENCE_ERROR_LINES per log)"
else
  rm -rf -- "$out/recent_errors.txt" "$out/logs"
fi

# Env files, redacted. The raw file is only ever read by sed.
envs=0
if [ "$redact_ok" = true ]; then
  while IFS= read -r spec; do
    [ -n "$spec" ] || continue
    expand "$spec"
    for f in "${found[@]}"; do
      mkdir -p -- "$(dirname -- "$out/env$f")"
      if sed -E -f "$work/env.sed" -- "$f" >"$out/env$f" 2>/dev/null; then
        record "env$f" "$f (redacted)"
        envs=$((envs + 1))
      else
        fail "env file $f: cannot be read"
        rm -f -- "$out/env$f"
      fi
    done
  done <<<"$EVIDENCE_ENV_FILES"
fi
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

# The manifest: who, when, what was captured (with sizes and checksums), and what failed.
join() { local IFS=,; printf '%s' "$*"; }
errs=()
for e in "${errors[@]}"; do errs+=("$(json "$e")"); done
manifest="{\"incident_id\":$(json "$EVIDENCE_INCIDENT_ID"),\"host\":$(json "$EVIDENCE_HOST"),\
\"hostname\":$(json "$(uname -n)"),\"run_timestamp\":$(json "$EVIDENCE_TIMESTAMP"),\
\"captured_at\":$(json "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),\"tail_lines\":$EVIDENCE_TAIL_LINES,\
\"error_pattern\":$(json "$EVIDENCE_ERROR_PATTERN"),\"error_lines\":$EVIDENCE_ERROR_LINES,\
\"redact_pattern\":$(json "$EVIDENCE_REDACT_PATTERN"),\"redact_logs\":$EVIDENCE_REDACT_LOGS,\
\"files\":[$(join "${entries[@]}")],\"errors\":[$(join "${errs[@]}")]}"
printf '%s\n' "$manifest" >"$out/manifest.json"
rm -f -- "$work"/*.err "$work"/*.sed
printf '{"workdir":%s,"manifest":%s}\n' "$(json "$work")" "$manifest"

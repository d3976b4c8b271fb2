#!/bin/bash
# Baseline for the kill switch, the seeds' way: one curl per engine, one after the other.
#   seed 001: curl -X POST http://localhost:8001/api/v1/emergency/kill_switch \
#               -H "Content-Type: application/json" -d '{"reason": "emergency_stop", "user_id": "operator"}'
#   seed 004: curl -X POST -H "X-Admin-Token: $ADMIN_TOKEN" ...
# The admin token comes from HEADER_FILE (a 0600 file holding the "X-Admin-Token: ..." line), read by curl
# itself (-H @file), so that it never appears on a command line. No verification, as in the seeds.
#   bench/halt_curl_loop.sh URLS_FILE HEADER_FILE
set -u
urls=$1 headers=$2
failed=0
while IFS= read -r url; do
  [ -n "$url" ] || continue
  /usr/bin/curl -sf -o /dev/null --max-time 10 -X POST "$url" \
    -H "Content-Type: application/json" -H @"$headers" \
    -d '{"reason": "emergency_stop", "user_id": "operator"}' || failed=$((failed + 1))
done < "$urls"
exit $((failed > 0))

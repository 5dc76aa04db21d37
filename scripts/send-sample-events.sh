#!/usr/bin/env bash
# Posts a few realistic Bitrix24 events to a running b24-journal, encoded the
# way Bitrix24 sends them: application/x-www-form-urlencoded with PHP bracket
# keys, brackets percent-encoded (PHP's http_build_query).
#
# Usage: scripts/send-sample-events.sh [BASE_URL]
#   BASE_URL    default http://127.0.0.1:8080
#   MEMBER_ID   default the sample portal a223c6b3710f85df22e9377d6c4f7553
#   APP_TOKEN   default the sample token 51856fefc120afa4b628cc82d3935cce
#   DOMAIN      default some-domain.bitrix24.com
# The defaults match the README's quick start (`--portal MEMBER_ID=APP_TOKEN`).
set -euo pipefail

base=${1:-http://127.0.0.1:8080}
member=${MEMBER_ID:-a223c6b3710f85df22e9377d6c4f7553}
token=${APP_TOKEN:-51856fefc120afa4b628cc82d3935cce}
domain=${DOMAIN:-some-domain.bitrix24.com}
now=$(date +%s)

# The auth block an application receives (the OAuth tokens are fake; the
# journal strips them before storing anything).
app_auth="auth%5Baccess_token%5D=s6p6eclrvim6da22ft9ch94ekreb52lv&auth%5Bexpires_in%5D=3600&auth%5Bscope%5D=crm&auth%5Bdomain%5D=${domain}&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F&auth%5Bstatus%5D=L&auth%5Bclient_endpoint%5D=https%3A%2F%2F${domain}%2Frest%2F&auth%5Bmember_id%5D=${member}&auth%5Brefresh_token%5D=4s386p3q0tr8dy89xvmt96234v3dljg8&auth%5Bapplication_token%5D=${token}"
# The short auth block of an outgoing webhook / automation event.
hook_auth="auth%5Bdomain%5D=${domain}&auth%5Bclient_endpoint%5D=https%3A%2F%2F${domain}%2Frest%2F&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F&auth%5Bmember_id%5D=${member}&auth%5Bapplication_token%5D=${token}"

post() {
  local label=$1 body=$2
  printf '%-34s ' "$label"
  curl -sS -X POST "$base/v1/bitrix24/events" \
    -H 'Content-Type: application/x-www-form-urlencoded' \
    --data-binary "$body"
  echo
}

post "ONCRMACTIVITYADD 1001" \
  "event=ONCRMACTIVITYADD&event_handler_id=12&data%5BFIELDS%5D%5BID%5D=1001&ts=$((now - 60))&${app_auth}"
post "ONCRMACTIVITYUPDATE 1001" \
  "event=ONCRMACTIVITYUPDATE&event_handler_id=13&data%5BFIELDS%5D%5BID%5D=1001&ts=$((now - 30))&${app_auth}"
post "ONCRMACTIVITYUPDATE 1001 (resent)" \
  "event=ONCRMACTIVITYUPDATE&event_handler_id=13&data%5BFIELDS%5D%5BID%5D=1001&ts=$((now - 30))&${app_auth}"
post "ONCRMACTIVITYDELETE 1000 (webhook)" \
  "event=ONCRMACTIVITYDELETE&event_handler_id=77&data%5BFIELDS%5D%5BID%5D=1000&ts=$((now - 10))&${hook_auth}"
post "ONCRMDYNAMICITEMUPDATE 7" \
  "event=ONCRMDYNAMICITEMUPDATE&data%5BFIELDS%5D%5BID%5D=7&data%5BFIELDS%5D%5BENTITY_TYPE_ID%5D=128&ts=$((now - 5))&${app_auth}"
post "ONTASKUPDATE 42" \
  "event=ONTASKUPDATE&data%5BFIELDS_BEFORE%5D=undefined&data%5BFIELDS_AFTER%5D%5BID%5D=42&data%5BIS_ACCESSIBLE_BEFORE%5D=undefined&data%5BIS_ACCESSIBLE_AFTER%5D=undefined&ts=${now}&${app_auth}"

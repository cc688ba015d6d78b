#!/usr/bin/env bash
# Re-record the libiscsi-against-tgtd captures in testdata/ (see
# testdata/README.md).
#
# Starts a private tgtd on 127.0.0.1:$PORT (default 3260, so that tshark and
# Wireshark decode the captures as iSCSI without -d), then, for each client
# run, captures loopback traffic on that port with tshark into
# testdata/NAME.pcap (pcap format, whole packets).
#
# Needs root (capturing on lo), tgt, libiscsi-bin and tshark. Only loopback
# addresses are used. Every process it starts is stopped by PID.
#
#   PORT=13260 scripts/record-captures.sh   # if 3260 is taken; then update
#                                           # testdata/README.md
set -euo pipefail

cd "$(dirname "$0")/.."
PORT=${PORT:-3260}
OUT=${OUT:-testdata}
IQN=iqn.2026-01.test.goiscsi:disk
CHAP_IQN=iqn.2026-01.test.goiscsi:chap
CHAP_USER=goiscsi
CHAP_PASS=recordsecret12
LUN_SIZE=$((16 << 20))

die() { echo "record-captures: $*" >&2; exit 1; }

for b in tgtd tgtadm tshark iscsi-inq iscsi-readcapacity16 iscsi-swp iscsi-perf iscsi-ls stdbuf ss; do
	command -v "$b" >/dev/null || die "$b not on PATH (make deps)"
done
[ "$(id -u)" = 0 ] || die "must run as root to capture on lo"
if ss -Htln "sport = :$PORT" | grep -q .; then
	die "port $PORT is in use; rerun with PORT=<free port> and update testdata/README.md"
fi

WORK=$(mktemp -d)
TGTD_PID=
TSHARK_PID=
CTL=$((16384 + RANDOM % 16384)) # tgtd accepts 0..32767

tgtadm_() { timeout 10 tgtadm -C "$CTL" "$@"; }

# stop_pid PID GRACE_SECONDS: wait for PID to exit, SIGKILL after GRACE.
stop_pid() {
	local pid=$1 grace=$2 i
	for ((i = 0; i < grace * 20; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	set +e
	if [ -n "$TSHARK_PID" ]; then
		kill -INT "$TSHARK_PID" 2>/dev/null
		stop_pid "$TSHARK_PID" 5
	fi
	if [ -n "$TGTD_PID" ]; then
		# tgtd ignores SIGTERM and will not stop while targets exist.
		for tid in 1 2; do tgtadm_ --lld iscsi --op delete --mode target --tid "$tid" --force 2>/dev/null; done
		tgtadm_ --op delete --mode system 2>/dev/null
		stop_pid "$TGTD_PID" 5
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

# --- tgtd ---------------------------------------------------------------
MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=67108864 \
	tgtd -f --iscsi "portal=127.0.0.1:$PORT" -C "$CTL" >"$WORK/tgtd.log" 2>&1 &
TGTD_PID=$!
ready=
for ((i = 0; i < 200; i++)); do # 10 s
	if grep -q "failed to create/bind to portal\|another tgtd is using" "$WORK/tgtd.log"; then
		cat "$WORK/tgtd.log" >&2
		die "tgtd could not start on 127.0.0.1:$PORT with control port $CTL"
	fi
	kill -0 "$TGTD_PID" 2>/dev/null || { cat "$WORK/tgtd.log" >&2; die "tgtd exited"; }
	if tgtadm_ --op show --mode system >/dev/null 2>&1 &&
		ss -Htlnp "sport = :$PORT" | grep -q "pid=$TGTD_PID,"; then
		ready=1
		break
	fi
	sleep 0.05
done
[ -n "$ready" ] || { cat "$WORK/tgtd.log" >&2; die "tgtd not ready"; }

truncate -s "$LUN_SIZE" "$WORK/lun1.img" "$WORK/lun2.img"
tgtadm_ --lld iscsi --op new --mode target --tid 1 -T "$IQN"
tgtadm_ --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$WORK/lun1.img"
tgtadm_ --lld iscsi --op bind --mode target --tid 1 -I ALL
tgtadm_ --lld iscsi --op new --mode target --tid 2 -T "$CHAP_IQN"
tgtadm_ --lld iscsi --op new --mode logicalunit --tid 2 --lun 1 -b "$WORK/lun2.img"
tgtadm_ --lld iscsi --op bind --mode target --tid 2 -I ALL
tgtadm_ --lld iscsi --op new --mode account --user "$CHAP_USER" --password "$CHAP_PASS"
tgtadm_ --lld iscsi --op bind --mode account --tid 2 --user "$CHAP_USER"

URL="iscsi://127.0.0.1:$PORT/$IQN/1"
CHAP_URL="iscsi://$CHAP_USER%$CHAP_PASS@127.0.0.1:$PORT/$CHAP_IQN/1"

# --- capture ------------------------------------------------------------
count() { # count PCAP FILTER: packets matching, tolerating a file being written
	tshark -r "$1" -n -Y "$2" -T fields -e frame.number 2>/dev/null | grep -c . || true
}

start_capture() {
	local pcap=$1 i
	rm -f "$pcap" "$WORK/tshark.err"
	tshark -q -i lo -F pcap -f "tcp port $PORT" -w "$pcap" 2>"$WORK/tshark.err" &
	TSHARK_PID=$!
	for ((i = 0; i < 200; i++)); do # 10 s
		if grep -q "Capturing on" "$WORK/tshark.err" 2>/dev/null && [ "$(stat -c %s "$pcap" 2>/dev/null || echo 0)" -ge 24 ]; then
			return 0
		fi
		kill -0 "$TSHARK_PID" 2>/dev/null || break
		sleep 0.05
	done
	cat "$WORK/tshark.err" >&2
	die "tshark did not start capturing"
}

# stop_capture PCAP: wait until every connection in the capture has both
# FINs and the file stops growing (dumpcap delivers packets in batches, and
# stopping it at once loses the last ones), then stop tshark.
stop_capture() {
	local pcap=$1 i syn fin size last=-1 stable=0
	for ((i = 0; i < 100; i++)); do # 10 s
		sleep 0.1
		syn=$(count "$pcap" "tcp.flags.syn==1 && tcp.flags.ack==0")
		fin=$(count "$pcap" "tcp.flags.fin==1")
		size=$(stat -c %s "$pcap")
		if [ "$syn" -gt 0 ] && [ "$fin" -ge $((2 * syn)) ] && [ "$size" -eq "$last" ]; then
			stable=$((stable + 1))
			[ "$stable" -ge 3 ] && break
		else
			stable=0
		fi
		last=$size
	done
	[ "$stable" -ge 3 ] || echo "record-captures: warning: $pcap may lack the end of a connection ($syn SYN, $fin FIN)" >&2
	kill -INT "$TSHARK_PID"
	stop_pid "$TSHARK_PID" 10
	TSHARK_PID=
	chmod 644 "$pcap"
}

# record NAME COMMAND...: capture the traffic of COMMAND into $OUT/NAME.pcap.
record() {
	local name=$1
	shift
	local tmp="$WORK/$name.pcap"
	start_capture "$tmp"
	"$@" >"$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out" >&2; die "$name: $* failed"; }
	stop_capture "$tmp"
	mv "$tmp" "$OUT/$name.pcap"
	printf '%-28s %8d bytes  opcodes: %s\n' "$name.pcap" "$(stat -c %s "$OUT/$name.pcap")" \
		"$(tshark -r "$OUT/$name.pcap" -n -d "tcp.port==$PORT,iscsi" -T fields -e iscsi.opcode 2>/dev/null |
			tr ',' '\n' | grep . | sort | uniq -c | awk '{printf "%s×%s ", $2, $1}')"
}

swp_on_off() {
	timeout 30 iscsi-swp -s on "$URL" && timeout 30 iscsi-swp -s off "$URL"
}

# iscsi-perf runs for whole seconds only (-t), which is ~10 MB of traffic on
# loopback. To keep the capture small but complete (login, reads, logout),
# it is paused by PID with SIGSTOP as soon as its reads start and resumed a
# second later, when its run time is over: it then finishes the reads in
# flight and logs out.
perf_throttled() {
	local out="$WORK/perf.stdout" pid i
	stdbuf -oL iscsi-perf -m 4 -b 1 -t 1 "$URL" >"$out" 2>&1 &
	pid=$!
	for ((i = 0; i < 2000; i++)); do # 10 s
		grep -q "will run for" "$out" && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.005
	done
	kill -STOP "$pid"
	sleep 1
	kill -CONT "$pid"
	wait "$pid"
	cat "$out"
}

mkdir -p "$OUT"
record iscsi-inq timeout 30 iscsi-inq "$URL"
record iscsi-readcapacity16 timeout 30 iscsi-readcapacity16 "$URL"
record iscsi-swp swp_on_off
record iscsi-perf perf_throttled
record iscsi-inq-chap timeout 30 iscsi-inq "$CHAP_URL"
record iscsi-ls timeout 30 iscsi-ls "iscsi://127.0.0.1:$PORT"

echo "recorded on 127.0.0.1:$PORT with tgt $(dpkg-query -W -f='${Version}' tgt 2>/dev/null || echo "?") and libiscsi-bin $(dpkg-query -W -f='${Version}' libiscsi-bin 2>/dev/null || echo "?")"
[ "$PORT" = 3260 ] || echo "NOTE: port $PORT is not 3260: update testdata/README.md (decode with -d tcp.port==$PORT,iscsi)"

package agent

import (
	"net"

	"golang.org/x/sys/unix"
)

// tcpInfoSupported: Linux reports a connection's byte counts (TCP_INFO).
const tcpInfoSupported = true

// tcpBytes returns the bytes the peer acknowledged and the bytes received on
// tc; ok is false once tc is closed.
func tcpBytes(tc *net.TCPConn) (sent, recv uint64, ok bool) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || serr != nil {
		return 0, 0, false
	}
	return info.Bytes_acked, info.Bytes_received, true
}

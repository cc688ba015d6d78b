//go:build !linux

package agent

import "net"

// tcpInfoSupported: no byte counts of a connection outside Linux.
const tcpInfoSupported = false

func tcpBytes(*net.TCPConn) (sent, recv uint64, ok bool) { return 0, 0, false }

// Package sockio reads and writes TCP sockets with raw non-blocking system
// calls, for the pdu.Reader and pdu.Writer of a connection. It keeps the
// socket code out of package pdu, which knows nothing of sockets.
//
// Why raw system calls (on Linux; elsewhere NewReader and NewWriter return
// nil, and a connection is read and written as it is): the descriptor is
// non-blocking, so a read or write never sleeps in the kernel, and a raw
// system call spares the scheduler's entersyscall, which wakes the runtime's
// sysmon thread out of its deep sleep whenever every P was idle. A connection
// doing one command at a time is idle (waiting for the target) between
// commands: each I/O then woke sysmon, which polls every 20 µs for a while:
// on a 2-core VM that was a third of the context switches of a 4 KiB read at
// queue depth 1 (perf sched_switch call graphs: runtime.sysmon's notetsleep
// and usleep, and entersyscallWakeSysmon from the socket read).
package sockio

import (
	"io"
	"net"
)

// ReaderOf returns what to build a pdu.Reader of nc on: a Reader when nc is
// a *net.TCPConn and raw I/O is available, otherwise nc itself.
func ReaderOf(nc net.Conn) io.Reader {
	if c, ok := nc.(*net.TCPConn); ok {
		if r := NewReader(c); r != nil {
			return r
		}
	}
	return nc
}

// WriterOf returns what to build a pdu.Writer of nc on: a Writer when nc is
// a *net.TCPConn and raw I/O is available, otherwise nc itself.
func WriterOf(nc net.Conn) io.Writer {
	if c, ok := nc.(*net.TCPConn); ok {
		if w := NewWriter(c); w != nil {
			return w
		}
	}
	return nc
}

//go:build !linux

package peers

import (
	"net"
	"strconv"
	"syscall"
	"time"
)

func daemonSysProcAttr() *syscall.SysProcAttr { return nil }

// listeningBy falls back to a dial where /proc is not available; it cannot
// tell which process owns the listener.
func listeningBy(pid, port int) (bool, error) {
	c, err := net.DialTimeout("tcp4", net.JoinHostPort(Loopback, strconv.Itoa(port)), time.Second)
	if err != nil {
		return false, nil
	}
	c.Close()
	return true, nil
}

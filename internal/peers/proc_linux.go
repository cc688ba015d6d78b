//go:build linux

package peers

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// daemonSysProcAttr makes a peer die with the process that started it, so a
// crashed test binary does not leave daemons holding ports.
func daemonSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// listeningBy reports whether process pid holds a listening TCP socket on
// 127.0.0.1:port, by matching the socket inode in /proc/net/tcp against the
// process's file descriptors. Unlike a dial, it proves the listener is that
// process's and sends no traffic.
func listeningBy(pid, port int) (bool, error) {
	inodes, err := loopbackListenInodes(port)
	if err != nil || len(inodes) == 0 {
		return false, err
	}
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return false, nil // process gone or not yet visible
	}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil {
			continue
		}
		if strings.HasPrefix(link, "socket:[") {
			if inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] {
				return true, nil
			}
		}
	}
	return false, nil
}

// loopbackListenInodes returns the inodes of sockets listening on
// 127.0.0.1:port.
func loopbackListenInodes(port int) (map[string]bool, error) {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	want := fmt.Sprintf("0100007F:%04X", port)
	inodes := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || fs[1] != want || fs[3] != "0A" {
			continue
		}
		if _, err := strconv.ParseUint(fs[9], 10, 64); err == nil {
			inodes[fs[9]] = true
		}
	}
	return inodes, sc.Err()
}

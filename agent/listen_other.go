//go:build !unix

package agent

import (
	"errors"
	"net"
)

// ListenUnix is not available without Unix sockets.
func ListenUnix(path string) (net.Listener, error) {
	return nil, errors.New("the agent's Unix socket needs a Unix system")
}

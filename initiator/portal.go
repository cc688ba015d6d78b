package initiator

import (
	"net"
	"strings"
)

// DefaultPort is the iSCSI port (RFC 7143 §13.7): Login and Discover add
// it to a portal given without one.
const DefaultPort = "3260"

// withDefaultPort returns portal as host:port, adding DefaultPort when it
// has none: "192.0.2.1" and "[2001:db8::1]" and "2001:db8::1" become
// "192.0.2.1:3260" and "[2001:db8::1]:3260". A portal with a port is
// returned as is.
func withDefaultPort(portal string) string {
	if _, _, err := net.SplitHostPort(portal); err == nil {
		return portal
	}
	host := strings.TrimSuffix(strings.TrimPrefix(portal, "["), "]")
	if host == "" || strings.ContainsAny(host, "[]") {
		// Malformed: the dial says so.
		return portal
	}
	return net.JoinHostPort(host, DefaultPort)
}

package main

import (
	"strings"
	"testing"

	"github.com/goiscsi/iscsi/internal/peers"
)

// TestIstgt: discovery, I/O with MC/S, and logouts of both strategies
// against istgt.
func TestIstgt(t *testing.T) {
	s := peers.StartIstgt(t, peers.IstgtOptions{})
	portal := s.Addr

	v := iscsictl(t, "discover", "--portal", portal, "--json").want(t, exitOK).json(t)
	if got := path(t, v, "targets", 0, "name"); !strings.EqualFold(got.(string), s.IQN) {
		t.Errorf("discover: %v, want %s", v, s.IQN)
	}
	iscsictl(t, "write", "--portal", portal, "--target", s.IQN, "--lun", "0", "--lba", "8", "--blocks", "128", "--random", "--verify").want(t, exitOK)
	for _, strategy := range []string{"per-connection", "per-session"} {
		v = iscsictl(t, "logout", "--portal", portal, "--target", s.IQN, "--sessions", "2", "--conns", "2",
			"--strategy", strategy, "--io", "--io-lun", "0", "--drain", "2s", "--json").want(t, exitOK).json(t)
		if path(t, v, "logout", "outcome") != "success" || path(t, v, "io", "failed") != 0.0 {
			t.Errorf("%s: %v", strategy, v)
		}
	}
}

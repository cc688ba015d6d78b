package initiator

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
)

// TestFewerConnections: asking for more connections than the target
// allows (tgtd allows one) logs in with what it allows and says so.
func TestFewerConnections(t *testing.T) {
	tg := iscsitest.NewTarget(iscsitest.Config{MaxConnections: 1})
	defer tg.Close()
	in, err := New(Config{Name: "iqn.2026-01.org.goiscsi:test"})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var allowed, asked int
	s, err := in.Login(ctx, tg.Addr(), iscsitest.DefaultName, LoginOptions{Connections: 3,
		OnFewerConnections: func(a, b int) { allowed, asked = a, b }})
	if err != nil {
		t.Fatalf("Login with 3 connections where 1 is allowed: %v", err)
	}
	if n := len(s.Conns()); n != 1 || allowed != 1 || asked != 3 {
		t.Errorf("%d connections, told allowed %d of %d; want 1, 1 of 3", n, allowed, asked)
	}
	for asked, want := range map[[2]int]int{{3, 1}: 1, {2, 4}: 2, {0, 4}: 1, {3, 0}: 3} {
		if got := fewerConnections(asked[0], asked[1]); got != want {
			t.Errorf("fewerConnections(%d, %d) = %d, want %d", asked[0], asked[1], got, want)
		}
	}
}

// TestLoginTimeout: LoginOptions.LoginTimeout bounds a login that a
// target never answers.
func TestLoginTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c // holds the connection open, silent
		}
		close(accepted)
	}()
	in, err := New(Config{Name: "iqn.2026-01.org.goiscsi:test"})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err = in.Login(ctx, ln.Addr().String(), "iqn.2026-01.org.goiscsi:t", LoginOptions{LoginTimeout: 200 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("Login to a silent target: %v after %s; want a deadline within the 200 ms login timeout", err, time.Since(start))
	}
	ln.Close()
	if c, ok := <-accepted; ok {
		c.Close()
	}
}

package initiator

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestWithDefaultPort(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1": "192.0.2.1:3260", "192.0.2.1:3261": "192.0.2.1:3261", "host.example": "host.example:3260",
		"[2001:db8::1]": "[2001:db8::1]:3260", "2001:db8::1": "[2001:db8::1]:3260", "[2001:db8::1]:860": "[2001:db8::1]:860",
	} {
		if got := withDefaultPort(in); got != want {
			t.Errorf("withDefaultPort(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLoginDefaultPort: a portal without a port is dialed at 3260.
func TestLoginDefaultPort(t *testing.T) {
	var dialed string
	in, err := New(Config{Name: "iqn.2026-01.org.goiscsi:test", Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = addr
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError("test")}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := in.Login(ctx, "192.0.2.7", "iqn.2026-01.org.goiscsi:t", LoginOptions{}); err == nil || dialed != "192.0.2.7:3260" {
		t.Errorf("Login dialed %q (err %v), want 192.0.2.7:3260", dialed, err)
	}
	if _, err := in.Discover(ctx, "192.0.2.8", nil); err == nil || dialed != "192.0.2.8:3260" {
		t.Errorf("Discover dialed %q (err %v), want 192.0.2.8:3260", dialed, err)
	}
}

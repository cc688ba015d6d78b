package initiator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/capture"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
)

const (
	targetA = "iqn.2026-11.org.goiscsi:logout-a"
	targetB = "iqn.2026-11.org.goiscsi:logout-b"
)

// tapDir records every connection into its own pcap under dir.
type tapDir struct {
	dir  string
	n    atomic.Int32
	mu   sync.Mutex
	taps []*capture.TapConn
}

func (d *tapDir) wrap(t *testing.T) func(net.Conn) net.Conn {
	return func(c net.Conn) net.Conn {
		path := filepath.Join(d.dir, fmt.Sprintf("conn%03d.pcap", d.n.Add(1)))
		tc, err := capture.NewFileTap(c, path, capture.TapOptions{})
		if err != nil {
			t.Errorf("tap: %v", err)
			return c
		}
		d.mu.Lock()
		d.taps = append(d.taps, tc)
		d.mu.Unlock()
		return tc
	}
}

// waitNexus polls tgtd's own view of target tid until it has want sessions.
// tgtd removes an I_T nexus when the connection closes, shortly after the
// Logout Response: there is no event to wait on but its table.
func waitNexus(t *testing.T, tg *peers.Tgtd, tid, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ns, err := tg.Sessions(tid)
		if err != nil {
			t.Fatalf("tgtadm show: %v", err)
		}
		if len(ns) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("tgtd lists %d sessions on tid %d, want %d", len(ns), tid, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLogoutFromTargetTgtd(t *testing.T) {
	peers.Require(t, "tgtd", "tgtadm", "tshark")
	tg := peers.StartTgtd(t)
	for tid, name := range map[int]string{1: targetA, 2: targetB} {
		if _, err := tg.AddDiskTarget(tid, name, 16<<20); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{1, 4, 64} {
		t.Run(fmt.Sprintf("%d sessions", n), func(t *testing.T) {
			taps := &tapDir{dir: t.TempDir()}
			cfg := Config{Name: "iqn.2026-11.org.goiscsi:initiator"}
			if n == 4 {
				cfg.WrapConn = taps.wrap(t)
			}
			in, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := in.Login(ctx, tg.Addr, targetA, LoginOptions{})
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("login: %v", err)
				}
			}
			other, err := in.Login(ctx, tg.Addr, targetB, LoginOptions{})
			if err != nil {
				t.Fatal(err)
			}
			waitNexus(t, tg, 1, n)
			waitNexus(t, tg, 2, 1)

			op, err := in.LogoutFromTarget(targetA)
			if err != nil {
				t.Fatal(err)
			}
			res, err := op.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if res.Outcome != logout.Success || res.HRESULT() != 0 || res.Err() != nil {
				t.Fatalf("outcome %v (0x%08x), want success", res.Outcome, res.HRESULT())
			}
			if len(res.Sessions) != n {
				t.Fatalf("%d sessions in the result, want %d", len(res.Sessions), n)
			}
			for _, s := range res.Sessions {
				if !s.LoggedOut || len(s.Conns) != 1 {
					t.Fatalf("session %d: %+v", s.TSIH, s)
				}
				c := s.Conns[0]
				if c.State != logout.ConnLoggedOut || c.Reason != pdu.LogoutCloseSession || !c.Responded || c.Response != 0 {
					t.Fatalf("session %d connection: %s (%+v)", s.TSIH, c.Detail(), c)
				}
			}
			t.Logf("%d sessions logged out in %v", n, res.Duration)
			// The target's own view: none left on A, B untouched.
			waitNexus(t, tg, 1, 0)
			waitNexus(t, tg, 2, 1)
			if got := in.Sessions(targetA); len(got) != 0 {
				t.Fatalf("%d sessions to A still in the table", len(got))
			}
			if got := in.Sessions(targetB); len(got) != 1 || got[0] != other {
				t.Fatalf("session to B gone from the table")
			}
			if _, err := other.Inquiry(ctx, 1); err != nil {
				t.Fatalf("session to B broken by the logout of A: %v", err)
			}

			// A second call finds nothing, at once.
			op2, err := in.LogoutFromTarget(targetA)
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-op2.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("second logout did not complete at once")
			}
			res2, _ := op2.Wait(ctx)
			if res2.Outcome != logout.SessionNotFound || res2.HRESULT() != 0x8004270A || !errors.Is(res2.Err(), logout.ErrSessionNotFound) {
				t.Fatalf("second logout: %v 0x%08x", res2.Outcome, res2.HRESULT())
			}

			opB, _ := in.LogoutFromTarget(targetB)
			if r, _ := opB.Wait(ctx); r.Outcome != logout.Success {
				t.Fatalf("logout of B: %v", r.Outcome)
			}
			waitNexus(t, tg, 2, 0)
			if n == 4 {
				checkCaptures(t, taps, 4+1, tg.Port)
			}
		})
	}
}

// checkCaptures checks every connection's pcap in tshark: no malformed
// packet, and a Logout Request and a Logout Response on each.
func checkCaptures(t *testing.T, taps *tapDir, want, port int) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(taps.dir, "*.pcap"))
	if len(files) != want {
		t.Fatalf("%d captures, want %d", len(files), want)
	}
	for _, tc := range taps.taps {
		if err := tc.Err(); err != nil {
			t.Fatalf("tap: %v", err)
		}
	}
	for _, f := range files {
		if fi, err := os.Stat(f); err != nil || fi.Size() == 0 {
			t.Fatalf("capture %s empty: %v", f, err)
		}
		bad, err := peers.TsharkMalformed(f, port)
		if err != nil {
			t.Fatal(err)
		}
		if bad != 0 {
			t.Fatalf("%s: %d malformed packets", f, bad)
		}
		rows, err := peers.TsharkFields(f, port, "iscsi.opcode")
		if err != nil {
			t.Fatal(err)
		}
		var req, resp int
		for _, r := range rows {
			switch r[0] {
			case "0x06", "0x46":
				req++
			case "0x26":
				resp++
			}
		}
		if req != 1 || resp != 1 {
			t.Fatalf("%s: %d Logout Requests and %d Responses, want 1 and 1 (opcodes %v)", f, req, resp, rows)
		}
	}
}

func TestLogoutFromTargetInvalidName(t *testing.T) {
	in, err := New(Config{Name: "iqn.2026-11.org.goiscsi:initiator"})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	for _, name := range []string{"", "disk1", "iqn.2026-13.org.example:x", "eui.123"} {
		op, err := in.LogoutFromTarget(name)
		if !errors.Is(err, ErrInvalidArg) || op != nil {
			t.Errorf("LogoutFromTarget(%q) = %v, %v; want nil and ErrInvalidArg", name, op, err)
		}
	}
	if _, err := New(Config{Name: "not a name"}); !errors.Is(err, ErrInvalidArg) {
		t.Errorf("New with a bad name: %v", err)
	}
}

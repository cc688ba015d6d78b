package initiator

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/logout"
)

// A target that stops reading (a zero window) while a logout's requests go
// out: LogoutFromTarget ends at its Timeout, or at once on Cancel, and
// never reports the stuck sessions as logged out (issue 12, finding 2).
func TestLogoutTargetStoppedReading(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		cancel  bool
		bound   time.Duration // from the call to the end of Wait
	}{
		{"timeout", time.Second, false, 3 * time.Second},
		{"cancel", time.Minute, true, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var conns []*faketarget.StallConn
			cfg := Config{WrapConn: func(c net.Conn) net.Conn {
				sc := faketarget.NewStallConn(c)
				mu.Lock()
				conns = append(conns, sc)
				mu.Unlock()
				return sc
			}}
			_, in := memSetup(t, 2, 2, nil, cfg)
			mu.Lock()
			for _, sc := range conns {
				sc.Stall()
			}
			mu.Unlock()
			start := time.Now()
			op, err := in.LogoutFromTargetWith(memTarget, logout.Options{Timeout: tc.timeout})
			if err != nil {
				t.Fatal(err)
			}
			if tc.cancel {
				time.AfterFunc(200*time.Millisecond, func() { op.Cancel() })
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r, err := op.Wait(ctx)
			took := time.Since(start)
			if err != nil {
				t.Fatalf("Wait: %v after %v", err, took)
			}
			if took > tc.bound {
				t.Errorf("Wait returned after %v, want within %v", took, tc.bound)
			}
			if r.Outcome == logout.Success {
				t.Fatalf("outcome %v: success for sessions whose Logout Requests never went out", r.Outcome)
			}
			for _, sr := range r.Sessions {
				if sr.LoggedOut {
					t.Errorf("session 0x%04x reported logged out: %+v", sr.TSIH, sr)
				}
			}
		})
	}
}

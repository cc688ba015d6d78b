package initiator

import (
	"context"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
)

// Issue 15 on tgtd: one session by TSIH, one connection by CID (tgtd
// sessions have one connection: reason 0), then the ladder (PerSession)
// on the rest within a deadline, every step recorded; tgtd's own table
// follows each step.
func TestLadderTgtd(t *testing.T) {
	peers.Require(t, "tgtd", "tgtadm")
	tg := peers.StartTgtd(t)
	if _, err := tg.AddDiskTarget(1, targetA, 16<<20); err != nil {
		t.Fatal(err)
	}
	in, err := New(Config{Name: "iqn.2026-11.org.goiscsi:initiator"})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 4; i++ {
		if _, err := in.Login(ctx, tg.Addr, targetA, LoginOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitNexus(t, tg, 1, 4)
	ss := in.Sessions(targetA)

	r := waitOp(t)(in.LogoutSession(targetA, ss[0].TSIH(), logout.Options{}))
	if r.Outcome != logout.Success || len(r.Sessions) != 1 || r.Sessions[0].TSIH != ss[0].TSIH() {
		t.Fatalf("session logout: %v %+v", r.Outcome, r.Sessions)
	}
	waitNexus(t, tg, 1, 3)
	r = waitOp(t)(in.LogoutConnection(targetA, ss[1].TSIH(), 0, logout.Options{}))
	if c := r.Sessions[0].Conns[0]; r.Outcome != logout.Success || c.Reason != pdu.LogoutCloseSession || c.State != logout.ConnLoggedOut {
		t.Fatalf("connection logout: %v %+v", r.Outcome, c)
	}
	waitNexus(t, tg, 1, 2)

	opts := logout.Options{Strategy: logout.PerSession, Deadline: 5 * time.Second}
	r = waitOp(t)(in.LogoutFromTargetWith(targetA, opts))
	if r.Outcome != logout.Success || len(r.Sessions) != 2 || r.Deadline != 5*time.Second || r.Duration > r.Deadline {
		t.Fatalf("ladder: %v, %d sessions, deadline %v, took %v", r.Outcome, len(r.Sessions), r.Deadline, r.Duration)
	}
	for _, s := range r.Sessions {
		c := s.Conns[0]
		if len(c.Steps) != 1 || c.Steps[0].Kind != logout.StepLogout || c.Steps[0].Reason != pdu.LogoutCloseSession ||
			!c.Steps[0].Responded || c.Steps[0].State != logout.ConnLoggedOut || c.Steps[0].Duration > c.Duration {
			t.Fatalf("session 0x%04x: steps %+v", s.TSIH, c.Steps)
		}
	}
	waitNexus(t, tg, 1, 0)
	r = waitOp(t)(in.LogoutFromTargetWith(targetA, opts))
	if r.Outcome != logout.SessionNotFound || !r.LoggedOutOrGone() {
		t.Fatalf("again: %v", r.Outcome)
	}
}

package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/testutil"
)

// Helpers shared by the interop tests against real targets.

const initiatorIQN = "iqn.2026-01.org.goiscsi:session-test"

// ioSizes are the transfer sizes every target is checked with: around the
// immediate-data, first-burst and burst limits, and large.
var ioSizes = []int{512, 4 << 10, 64 << 10, 64<<10 + 512, 256 << 10, 1<<20 + 512, 8 << 20}

func interopCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// mustLogin logs in and makes sure the session ends with the test.
func mustLogin(t testing.TB, ctx context.Context, cfg Config) *Session {
	t.Helper()
	s, err := Login(ctx, cfg)
	if err != nil {
		t.Fatalf("Login to %s at %s: %v", cfg.TargetName, cfg.Portal, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustLogout(t testing.TB, ctx context.Context, s *Session) {
	t.Helper()
	res, err := s.Logout(ctx, LogoutOptions{DrainTimeout: 5 * time.Second, Timeout: 10 * time.Second})
	if err != nil || !res.OK() {
		t.Fatalf("Logout: %+v %v", res, err)
	}
	if !s.LoggedOut() || len(s.Conns()) != 0 {
		t.Fatalf("after logout: LoggedOut %v, %d connections", s.LoggedOut(), len(s.Conns()))
	}
}

func randomData(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// verifyIO writes random data of each size at lba and reads it back.
func verifyIO(t testing.TB, ctx context.Context, s *Session, lun int, lba uint64, blockSize int, sizes []int) {
	t.Helper()
	for _, n := range sizes {
		if err := testutil.WriteVerify(ctx, s, lun, lba, blockSize, randomData(t, n)); err != nil {
			t.Fatal(err)
		}
	}
}

// verifyConnIO writes and reads back on one connection.
func verifyConnIO(t testing.TB, ctx context.Context, c *Conn, lun int, lba uint64, sizes []int) {
	t.Helper()
	exec := func(cmd *Command) error {
		for i := 0; ; i++ {
			_, err := c.Execute(ctx, cmd)
			if err == nil || !IsUnitAttention(err) || i == unitAttentionRetries {
				return err
			}
		}
	}
	for _, n := range sizes {
		data := randomData(t, n)
		if err := exec(&Command{LUN: lun, CDB: rw16(0x8a, lba, n, 512), Write: data}); err != nil {
			t.Fatalf("CID %d write %d: %v", c.CID(), n, err)
		}
		got := make([]byte, n)
		if err := exec(&Command{LUN: lun, CDB: rw16(0x88, lba, n, 512), Read: got}); err != nil {
			t.Fatalf("CID %d read %d: %v", c.CID(), n, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("CID %d, %d bytes: data differs", c.CID(), n)
		}
	}
}

// logParams prints what a target negotiated.
func logParams(t testing.TB, target string, p Params) {
	t.Helper()
	t.Logf("%s negotiated: HeaderDigest=%v DataDigest=%v MaxConnections=%d InitialR2T=%v ImmediateData=%v "+
		"MaxRecvDataSegmentLength=%d (target's %d) MaxBurstLength=%d FirstBurstLength=%d DefaultTime2Wait=%d "+
		"DefaultTime2Retain=%d MaxOutstandingR2T=%d DataPDUInOrder=%v DataSequenceInOrder=%v ErrorRecoveryLevel=%d "+
		"TargetPortalGroupTag=%d TargetAlias=%q",
		target, p.HeaderDigest, p.DataDigest, p.MaxConnections, p.InitialR2T, p.ImmediateData,
		p.MaxRecvDataSegmentLength, p.TargetMaxRecvDataSegmentLength, p.MaxBurstLength, p.FirstBurstLength,
		p.DefaultTime2Wait, p.DefaultTime2Retain, p.MaxOutstandingR2T, p.DataPDUInOrder, p.DataSequenceInOrder,
		p.ErrorRecoveryLevel, p.TargetPortalGroupTag, p.TargetAlias)
}

//go:build linux && !race

// The race detector's sync.Pool drops pooled objects at random, so these
// counts hold only without it.

package bench_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/bench/internal/benchkit"
	"github.com/goiscsi/iscsi/session"
)

// TestExecuteNoAllocs checks that the synchronous path allocates nothing
// per I/O in steady state: Session.Read and Session.Write (Execute with a
// READ(16) or WRITE(16)) and Execute itself with a Command reused, on one
// connection of the in-memory target (in a child process, so that the
// count is the initiator's), with a context that can be canceled.
// AllocsPerRun divides the process's mallocs by the runs, rounding down:
// 0 means fewer than one allocation per 1,000 I/Os (before issue 16's
// Execute work: 4 to 6 per I/O with context.Background, 7 to 9 with this
// context).
func TestExecuteNoAllocs(t *testing.T) {
	c := memTarget(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ini, err := benchkit.NewInitiator()
	if err != nil {
		t.Fatal(err)
	}
	defer ini.Close()
	if err := benchkit.LoginN(ctx, ini, c.ISCSIAddr, benchkit.MemTargetName, 1, 1, 1); err != nil {
		t.Fatal(err)
	}
	s := ini.Sessions(benchkit.MemTargetName)[0]
	defer s.Logout(ctx, session.LogoutOptions{})
	buf := make([]byte, 4096)
	var ioErr error
	check := func(name string, io func() error) {
		t.Helper()
		for range 50 { // warm up: pools, buffers, the connection's writers
			if err := io(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		n := testing.AllocsPerRun(1000, func() {
			if err := io(); err != nil && ioErr == nil {
				ioErr = err
			}
		})
		if ioErr != nil {
			t.Fatalf("%s: %v", name, ioErr)
		}
		if n != 0 {
			t.Errorf("%s: %v allocations per I/O, want 0", name, n)
		}
	}
	// A context that can be canceled, as iscsictl perf's deadline: the
	// commands share one watch of it (session.ctxWatch), where each
	// registered its own before (3 allocations per I/O).
	bg, bgCancel := context.WithCancel(context.Background())
	defer bgCancel()
	lba := uint64(0)
	check("Read", func() error { lba = (lba + 8) % 4096; return s.Read(bg, 0, lba, 512, buf) })
	check("Write", func() error { lba = (lba + 8) % 4096; return s.Write(bg, 0, lba, 512, buf) })
	cdb := make([]byte, 16)
	cmd := &session.Command{CDB: cdb, Read: buf}
	check("Execute", func() error {
		cdb[0], cdb[13] = 0x88, 8
		res, err := s.Execute(bg, cmd)
		if err == nil && res.N != len(buf) {
			return fmt.Errorf("READ(16) returned %d of %d bytes", res.N, len(buf))
		}
		return err
	})
}

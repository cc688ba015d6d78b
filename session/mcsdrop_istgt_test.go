package session

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/testutil"
)

// TestIstgtMCSDropRecovers cuts one connection of a 4-connection session
// on istgt (ErrorRecoveryLevel 0, MaxConnections 4) mid-I/O, from the
// initiator's side: at ERL 0 the loss is the session's, so the initiator
// (recovery on) reinstates it with a new TSIH and its four connections,
// the writers and readers go on without an error, every region holds its
// last acknowledged write, no ERL 2 recovery runs, and the session logs
// out cleanly.
//
//	go test -race -count=1 -v -run TestIstgtMCSDropRecovers ./session/
func TestIstgtMCSDropRecovers(t *testing.T) {
	pt := istgtPeer().start(t)
	ctx := interopCtx(t)
	rec := testutil.NewRecorder(t, pt.port)
	cfg := pt.config(rec)
	cfg.Recovery = &RecoveryConfig{ReplacementTimeout: time.Minute}
	s := mustLogin(t, ctx, cfg)
	t.Cleanup(func() { s.Close() })
	if got := s.Params().ErrorRecoveryLevel; got != 0 {
		t.Fatalf("negotiated ErrorRecoveryLevel %d, want istgt's 0", got)
	}
	for i := 1; i < 4; i++ {
		if _, err := s.AddConnection(ctx); err != nil {
			t.Fatalf("adding connection %d: %v", i, err)
		}
	}
	tsih := s.TSIH()
	const workers, blocks = 8, 128
	ld := startMCSDropLoad(ctx, s, pt.lun, workers, blocks)
	ld.waitOps(t, 64)
	victim := s.Conns()[2]
	waitFor(t, func() bool { return len(victim.inFlight()) > 0 })
	victim.nc.Close()
	ld.waitOps(t, 128)
	acked, errs := ld.finish()
	for _, err := range errs {
		t.Errorf("I/O failed: %v", err)
	}
	ri := s.Recovery()
	t.Logf("ERL 0 recovery: %d reconnects, %d commands sent again", ri.Reconnects, ri.Retries)
	if ri.Reconnects != 1 || s.TSIH() == tsih {
		t.Errorf("%d reconnects, TSIH %#x (was %#x): want one reinstatement", ri.Reconnects, s.TSIH(), tsih)
	}
	if info := s.ConnRecovery(); info.Recoveries != 0 {
		t.Errorf("ERL 2 connection recoveries %d at ERL 0, want 0", info.Recoveries)
	}
	testutil.Eventually(t, 30*time.Second, "the reinstated session's connections", func() (bool, string) {
		n := len(s.Conns())
		return n == 4, fmt.Sprintf("%d connections, want 4", n)
	})
	if len(acked) != workers {
		t.Errorf("%d regions written, want %d", len(acked), workers)
	}
	back := make([]byte, blocks*512)
	for w, data := range acked {
		if err := s.Read(ctx, pt.lun, uint64(w*blocks), 512, back); err != nil {
			t.Errorf("reading region %d back: %v", w, err)
		} else if !bytes.Equal(back, data) {
			t.Errorf("region %d does not hold its last acknowledged write (first difference at byte %d)", w, testutil.FirstDiff(back, data))
		}
	}
	pt.logout(t, ctx, s)
}

// mcsDropLoad is writers that each own a region of blocks, write it and
// read it back over and over; it keeps each region's last acknowledged
// write.
type mcsDropLoad struct {
	wg   sync.WaitGroup
	stop chan struct{}
	ops  atomic.Int64

	mu    sync.Mutex
	acked map[int][]byte
	errs  []error
}

func startMCSDropLoad(ctx context.Context, s *Session, lun, workers, blocks int) *mcsDropLoad {
	ld := &mcsDropLoad{stop: make(chan struct{}), acked: map[int][]byte{}}
	for w := range workers {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			lba := uint64(w * blocks)
			back := make([]byte, blocks*512)
			for i := 0; ; i++ {
				select {
				case <-ld.stop:
					return
				default:
				}
				data := make([]byte, blocks*512)
				for off := 0; off < len(data); off += 8 {
					binary.BigEndian.PutUint64(data[off:], uint64(w)<<56|uint64(i)<<24|uint64(off))
				}
				err := s.Write(ctx, lun, lba, 512, data)
				if err == nil {
					ld.mu.Lock()
					ld.acked[w] = data
					ld.mu.Unlock()
					if err = s.Read(ctx, lun, lba, 512, back); err == nil && !bytes.Equal(back, data) {
						err = fmt.Errorf("read back differs from the write just acknowledged at byte %d", testutil.FirstDiff(back, data))
					}
				}
				ld.ops.Add(1)
				if err != nil {
					ld.mu.Lock()
					ld.errs = append(ld.errs, fmt.Errorf("worker %d, operation %d: %w", w, i, err))
					ld.mu.Unlock()
					if ctx.Err() != nil {
						return
					}
				}
			}
		}()
	}
	return ld
}

// waitOps waits, up to a minute, until the load has done n more
// operations.
func (ld *mcsDropLoad) waitOps(t *testing.T, n int64) {
	t.Helper()
	want := ld.ops.Load() + n
	deadline := time.Now().Add(time.Minute)
	for ld.ops.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("I/O stalled: %d operations after a minute, want %d", ld.ops.Load(), want)
		}
		time.Sleep(5 * time.Millisecond) // polling a counter: no signal to wait on
	}
}

// finish stops the load and returns each region's last acknowledged write
// and the errors met.
func (ld *mcsDropLoad) finish() (map[int][]byte, []error) {
	close(ld.stop)
	ld.wg.Wait()
	return ld.acked, ld.errs
}

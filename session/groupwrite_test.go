package session

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/iscsitest"
)

// TestGroupCommitWrites: commands from many goroutines share vectored
// writes (flushLocked); writes carrying immediate, unsolicited and solicited
// data, some canceled on the way, land whole and in place, and a buffer
// handed back by a canceled write is not sent afterwards.
func TestGroupCommitWrites(t *testing.T) {
	for _, wrap := range []bool{false, true} {
		t.Run(fmt.Sprintf("wrapped=%v", wrap), func(t *testing.T) {
			tg := newTestTarget(t, iscsitest.Config{InitialR2T: false, ImmediateData: true})
			var rec *testutil.Recorder
			if wrap {
				rec = testutil.NewRecorder(t, targetPort(tg))
			}
			ctx := interopCtx(t)
			s := mustLogin(t, ctx, testTargetConfig(tg, rec))
			const workers, per, size = 16, 12, 96 << 10 // past FirstBurstLength: R2Ts too
			const scratch = workers * per * size / 512  // where the canceled writes go
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, size)
					for i := range per {
						lba := uint64((w*per + i) * size / 512)
						if i%4 == 3 {
							// A write that may be canceled anywhere, to a
							// region of its own; its buffer is scribbled on
							// once it returns, which must never reach the
							// target.
							cctx, cancel := context.WithTimeout(ctx, 200*time.Microsecond)
							for j := range buf {
								buf[j] = 0xEE
							}
							s.Write(cctx, 0, scratch+lba, 512, buf)
							cancel()
							for j := range buf {
								buf[j] = 0x11
							}
						}
						for j := range buf {
							buf[j] = byte(w*31 + i*7 + j%251)
						}
						if err := s.Write(ctx, 0, lba, 512, buf); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			lun := tg.LUNData(0)
			want := make([]byte, size)
			for w := range workers {
				for i := range per {
					for j := range want {
						want[j] = byte(w*31 + i*7 + j%251)
					}
					off := (w*per + i) * size
					if !bytes.Equal(lun[off:off+size], want) {
						t.Fatalf("worker %d write %d: the LUN does not hold what was written last", w, i)
					}
				}
			}
			for off := scratch * 512; off < 2*scratch*512; off += 512 {
				if b := lun[off]; b == 0x11 || !bytes.Equal(lun[off:off+512], bytes.Repeat([]byte{b}, 512)) {
					t.Fatalf("byte %d of the canceled writes' region is %#x: a buffer was sent after its write returned", off, b)
				}
			}
			mustLogout(t, ctx, s)
			if rec != nil {
				rec.Check()
			}
		})
	}
}

package session

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
)

// These tests run on plain TCP connections (no WrapConn), where a command
// whose goroutine finds nobody reading reads its own response (reader.go).

func directSession(t *testing.T, tg *iscsitest.Target, cfg Config) (*Session, *Conn) {
	t.Helper()
	ctx := interopCtx(t)
	s := mustLogin(t, ctx, cfg)
	c := s.Conns()[0]
	if !c.direct {
		t.Fatal("a plain TCP connection does not let commands read for themselves")
	}
	return s, c
}

// TestDirectReadsAtEveryDepth reads back what was written, one command at a
// time (the commands read their own responses) and many at a time (the
// reader goroutine reads), mixed with writes, and checks every byte.
func TestDirectReadsAtEveryDepth(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{UnitAttentionOnLogin: true})
	ctx := interopCtx(t)
	s, _ := directSession(t, tg, testTargetConfig(tg, nil))
	data := randomData(t, 2<<20)
	if err := s.Write(ctx, 0, 0, 512, data); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		n := 512 << (i % 10) // 512 B to 256 KiB
		off := (i * 4096) % (len(data) - n)
		off -= off % 512
		buf := make([]byte, n)
		if err := s.Read(ctx, 0, uint64(off/512), 512, buf); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if !bytes.Equal(buf, data[off:off+n]) {
			t.Fatalf("read %d: wrong data at %d", i, off)
		}
	}
	for _, qd := range []int{2, 8, 32} {
		var wg sync.WaitGroup
		errs := make(chan error, qd)
		for w := range qd {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(w), uint64(qd)))
				for range 40 {
					n := 512 * (1 + r.IntN(64))
					off := 512 * r.IntN((len(data)-n)/512)
					buf := make([]byte, n)
					if err := s.Read(ctx, 0, uint64(off/512), 512, buf); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(buf, data[off:off+n]) {
						errs <- errors.New("wrong data")
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("qd %d: %v", qd, err)
		}
	}
	mustLogout(t, ctx, s)
}

// TestDirectReadCanceled: a command waiting for its own response, which
// the target holds back, ends when its context does, as it did when
// another goroutine read for it; the connection stays in step and usable.
func TestDirectReadCanceled(t *testing.T) {
	var hold atomic.Bool
	tg := newTestTarget(t, iscsitest.Config{Hook: func(ev *iscsitest.Event) iscsitest.Action {
		if cmd, ok := ev.PDU.(*pdu.SCSICommand); ok && cmd.CDB[0] == 0x88 && hold.Load() {
			return iscsitest.Delay(300 * time.Millisecond)
		}
		return iscsitest.Continue
	}})
	ctx := interopCtx(t)
	s, c := directSession(t, tg, testTargetConfig(tg, nil))
	buf := make([]byte, 4096)
	if err := s.Read(ctx, 0, 0, 512, buf); err != nil { // the unit attention, if any
		t.Fatal(err)
	}
	for i := range 5 {
		hold.Store(true)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
		start := time.Now()
		err := s.Read(cctx, 0, uint64(i), 512, buf)
		took := time.Since(start)
		cancel()
		hold.Store(false)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("round %d: got %v, want the context's deadline", i, err)
		}
		if took > 250*time.Millisecond {
			t.Fatalf("round %d: the canceled read returned after %v", i, took)
		}
		// The held-back response arrives later and is dropped; the next
		// reads work, whoever reads.
		for j := range 3 {
			if err := s.Read(ctx, 0, uint64(j), 512, buf); err != nil {
				t.Fatalf("round %d, read %d after the cancel: %v", i, j, err)
			}
		}
		if c.Err() != nil {
			t.Fatalf("round %d: the connection ended: %v", i, c.Err())
		}
	}
	mustLogout(t, ctx, s)
}

// TestDirectCancelStorm: many commands with contexts that end at random
// moments, some while they read for themselves, some while the reader
// goroutine does; then everything still works and logs out.
func TestDirectCancelStorm(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{Hook: func(ev *iscsitest.Event) iscsitest.Action {
		if cmd, ok := ev.PDU.(*pdu.SCSICommand); ok && cmd.CDB[0] == 0x88 && rand.IntN(4) == 0 {
			return iscsitest.Delay(time.Duration(rand.IntN(3000)) * time.Microsecond)
		}
		return iscsitest.Continue
	}})
	ctx := interopCtx(t)
	s, c := directSession(t, tg, testTargetConfig(tg, nil))
	data := randomData(t, 1<<20)
	if err := s.Write(ctx, 0, 0, 512, data); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			buf := make([]byte, 64<<10)
			for range 150 {
				n := 512 * (1 + r.IntN(128))
				off := 512 * r.IntN((len(data)-n)/512)
				cctx, cancel := context.WithTimeout(ctx, time.Duration(r.IntN(2000))*time.Microsecond)
				err := s.Read(cctx, 0, uint64(off/512), 512, buf[:n])
				cancel()
				if err == nil && !bytes.Equal(buf[:n], data[off:off+n]) {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d reads returned nil with wrong data", bad.Load())
	}
	if c.Err() != nil {
		t.Fatalf("the connection ended: %v", c.Err())
	}
	buf := make([]byte, 8192)
	for i := range 20 {
		if err := s.Read(ctx, 0, uint64(i*16), 512, buf); err != nil || !bytes.Equal(buf, data[i*16*512:i*16*512+8192]) {
			t.Fatalf("read %d after the storm: %v", i, err)
		}
	}
	mustLogout(t, ctx, s)
}

// TestDirectTargetPDUsWhenIdle: once commands stop, the reader goroutine
// reads again, so a message from the target is seen without any command.
func TestDirectTargetPDUsWhenIdle(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{})
	ctx := interopCtx(t)
	events := make(chan AsyncEvent, 4)
	cfg := testTargetConfig(tg, nil)
	cfg.OnAsync = func(c *Conn, ev AsyncEvent) bool {
		events <- ev
		return false
	}
	s, c := directSession(t, tg, cfg)
	buf := make([]byte, 4096)
	for range 3 {
		for i := range 20 {
			s.Read(ctx, 0, uint64(i), 512, buf)
		}
		// A vendor-specific event: reported, nothing else.
		if err := tg.SendAsync(s.TSIH(), c.CID(), pdu.AsyncMessage{AsyncEvent: 255}, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-events:
			if ev.Event != 255 {
				t.Fatalf("event %d", ev.Event)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("the target's message was not read within 2 s of the last command")
		}
	}
	// The target closing the idle connection is seen too.
	tg.Conn(s.TSIH(), c.CID()).Close()
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("the target's FIN was not read within 2 s")
	}
	s.Close()
}

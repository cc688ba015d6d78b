package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
)

// submitAll runs calls (each with Cmd set) through s.Submit, qd at a time,
// each Done submitting the next from the reader goroutine, and waits for all
// of them (at most 30 s).
func submitAll(t *testing.T, s *Session, calls []*Call, qd int) {
	t.Helper()
	var next atomic.Int64
	next.Store(int64(qd))
	var left sync.WaitGroup
	left.Add(len(calls))
	var done func(*Call)
	done = func(c *Call) {
		if n := next.Add(1) - 1; n < int64(len(calls)) {
			calls[n].Done = done
			if err := s.Submit(calls[n]); err != nil {
				calls[n].Err = err
				left.Done()
			}
		}
		left.Done()
	}
	for i := 0; i < qd && i < len(calls); i++ {
		calls[i].Done = done
		if err := s.Submit(calls[i]); err != nil {
			t.Fatalf("Submit: %v", err)
		}
	}
	waited := make(chan struct{})
	go func() { left.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		t.Fatal("calls not done within 30 s")
	}
}

// TestSubmitIO: writes and reads submitted with Submit, their next ones
// submitted from Done on the reader, land where they should on the
// in-memory target, over TCP and over a pipe, with writes sent as immediate
// data and as answers to R2Ts (which the reader queues without waiting).
func TestSubmitIO(t *testing.T) {
	for _, pipe := range []bool{false, true} {
		for _, initialR2T := range []bool{false, true} {
			t.Run(fmt.Sprintf("pipe=%v,InitialR2T=%v", pipe, initialR2T), func(t *testing.T) {
				tg := newTestTarget(t, iscsitest.Config{ImmediateData: true})
				ctx := interopCtx(t)
				cfg := testTargetConfig(tg, nil)
				if pipe {
					cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) { return tg.Pipe(), nil }
				}
				p := DefaultParams()
				p.InitialR2T, p.ImmediateData = initialR2T, !initialR2T
				p.FirstBurstLength = 8192
				cfg.Params = &p
				s := mustLogin(t, ctx, cfg)
				defer s.Close()
				const n, bs = 96, 64 << 10
				data := randomData(t, n*bs)
				calls := make([]*Call, n)
				for i := range calls {
					calls[i] = &Call{Cmd: Command{CDB: rw16(0x8a, uint64(i*bs/512), bs, 512), Write: data[i*bs : (i+1)*bs]}}
				}
				submitAll(t, s, calls, 16)
				for i, c := range calls {
					if c.Err != nil || c.Result.N != bs {
						t.Fatalf("write %d: N %d, %v", i, c.Result.N, c.Err)
					}
				}
				if !bytes.Equal(tg.LUNData(0)[:n*bs], data) {
					t.Fatal("the LUN does not hold what was written")
				}
				got := make([]byte, n*bs)
				for i := range calls {
					calls[i] = &Call{Cmd: Command{CDB: rw16(0x88, uint64(i*bs/512), bs, 512), Read: got[i*bs : (i+1)*bs]}}
				}
				submitAll(t, s, calls, 16)
				for i, c := range calls {
					if c.Err != nil || c.Result.N != bs {
						t.Fatalf("read %d: N %d, %v", i, c.Result.N, c.Err)
					}
				}
				if !bytes.Equal(got, data) {
					t.Fatal("reads returned other data than was written")
				}
				mustLogout(t, ctx, s)
			})
		}
	}
}

// TestSubmitDoneOnceOnClose: calls in flight when the session closes each
// end exactly once, with their status or an error saying the outcome is
// unknown; none is lost, and Close returns only after every Done ran.
func TestSubmitDoneOnceOnClose(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{})
	ctx := interopCtx(t)
	s := mustLogin(t, ctx, testTargetConfig(tg, nil))
	const qd = 32
	var ran [qd]atomic.Int32
	var ended atomic.Int32
	for i := range qd {
		c := &Call{Cmd: Command{CDB: rw16(0x88, uint64(i*8), 4096, 512), Read: make([]byte, 4096)}, Tag: uint64(i)}
		c.Done = func(c *Call) {
			ran[c.Tag].Add(1)
			if c.Err != nil && !errors.Is(c.Err, ErrOutcomeUnknown) && !errors.Is(c.Err, ErrNotSent) {
				t.Errorf("call %d: %v: want nil, ErrOutcomeUnknown or ErrNotSent", c.Tag, c.Err)
			}
			ended.Add(1)
		}
		if err := s.Submit(c); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if n := ended.Load(); n != qd {
		t.Fatalf("%d of %d calls ended by the time Close returned", n, qd)
	}
	for i := range ran {
		if n := ran[i].Load(); n != 1 {
			t.Errorf("call %d: Done ran %d times", i, n)
		}
	}
}

// TestSubmitReusesTasks: a call submitted again and again from its own Done
// reuses the task of its last run (no allocation per command), and every
// run gets a new tag: an answer for a tag already answered finds no task.
func TestSubmitReusesTasks(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{})
	ctx := interopCtx(t)
	s := mustLogin(t, ctx, testTargetConfig(tg, nil))
	defer s.Close()
	const runs = 200
	tags := map[uint32]bool{}
	finished := make(chan error, 1)
	call := &Call{Cmd: Command{CDB: rw16(0x88, 0, 4096, 512), Read: make([]byte, 4096)}}
	count := 0
	call.Done = func(c *Call) {
		if c.Err != nil {
			finished <- c.Err
			return
		}
		if tags[c.itt] {
			finished <- fmt.Errorf("tag %#x used twice", c.itt)
			return
		}
		tags[c.itt] = true
		if count++; count == runs {
			finished <- nil
			return
		}
		if err := c.conn.Submit(c); err != nil {
			finished <- err
		}
	}
	if err := s.Submit(call); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-finished:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("not done in 30 s")
	}
	c := s.Conns()[0]
	c.mu.Lock()
	free := len(c.as.free)
	c.mu.Unlock()
	if free != 1 {
		t.Errorf("%d tasks kept for reuse after %d runs of one call, want 1", free, runs)
	}
	mustLogout(t, ctx, s)
}

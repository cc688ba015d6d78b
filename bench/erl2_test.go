//go:build linux

package bench_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/session"
)

// BenchmarkERL2ConnDrop measures ERL 2 connection recovery: each iteration
// runs 16 writers of 64 KiB over a 4-connection session, closes one TCP
// connection from the initiator's side mid-I/O and waits for the recovery
// (Logout reason 2, a replacement connection, TASK REASSIGN) to end. It
// reports the commands that failed (goal, issue 14: none) and moved per
// drop, and the time from the drop to the last command moved.
//
//	go test -run '^$' -bench ERL2ConnDrop -benchtime 20x ./bench/
func BenchmarkERL2ConnDrop(b *testing.B) {
	tg := iscsitest.NewTarget(iscsitest.Config{ErrorRecoveryLevel: 2, MaxConnections: 4, QueueDepth: 128})
	defer tg.Close()
	var mu sync.Mutex
	var socks []net.Conn
	p := session.DefaultParams()
	p.ErrorRecoveryLevel, p.DefaultTime2Retain, p.DefaultTime2Wait = 2, 20, 0
	cfg := session.Config{InitiatorName: "iqn.2026-11.org.goiscsi:bench-erl2", TargetName: iscsitest.DefaultName,
		Portal: tg.Addr(), NOPInterval: -1, Params: &p,
		WrapConn: func(c net.Conn) net.Conn {
			mu.Lock()
			socks = append(socks, c)
			mu.Unlock()
			return c
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s, err := session.Login(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for range 3 {
		if _, err := s.AddConnection(ctx); err != nil {
			b.Fatal(err)
		}
	}
	var failed, ops atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				buf[0] = byte(i)
				if err := s.Write(ctx, 0, uint64(w*128), 512, buf); err != nil {
					if failed.Add(1) == 1 {
						b.Logf("first failure: %v", err)
					}
				}
				ops.Add(1)
			}
		}()
	}
	b.ResetTimer()
	var resume time.Duration
	for i := 0; i < b.N; i++ {
		before := s.ConnRecovery().Recoveries
		for n := ops.Load() + 64; ops.Load() < n; {
			time.Sleep(100 * time.Microsecond) // polling a counter: no signal
		}
		mu.Lock()
		victim := socks[len(socks)-1]
		mu.Unlock()
		victim.Close()
		deadline := time.Now().Add(30 * time.Second)
		for s.ConnRecovery().Recoveries == before {
			if time.Now().After(deadline) {
				b.Fatal("connection recovery did not end in 30 s")
			}
			time.Sleep(100 * time.Microsecond) // polling a counter: no signal
		}
		resume += s.ConnRecovery().LastDuration
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	info := s.ConnRecovery()
	b.ReportMetric(float64(failed.Load())/float64(b.N), "failed/drop")
	b.ReportMetric(float64(info.Moved)/float64(b.N), "moved/drop")
	b.ReportMetric(float64(resume.Microseconds())/float64(b.N)/1000, "ms-resume/drop")
}

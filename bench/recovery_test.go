//go:build linux

package bench_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/session"
)

// BenchmarkRecoveryFirstIO measures session recovery (ERL 0): the time from
// the target accepting connections again to the first I/O completed. Each
// iteration resets the session's connection with the target unreachable,
// waits until the recovery is past Time2Wait (a reconnect attempt has
// failed), opens the target again and times one 4 KiB write, which waited
// for the reinstatement. The in-memory target runs in this process: the
// figure is the initiator's backoff plus a login. Goal (issue 14): under
// 1 s.
//
//	go test -run '^$' -bench RecoveryFirstIO -benchtime 5x ./bench/
func BenchmarkRecoveryFirstIO(b *testing.B) {
	tg := iscsitest.NewTarget(iscsitest.Config{})
	defer tg.Close()
	var down atomic.Bool
	dials := make(chan struct{}, 1)
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if down.Load() {
			select {
			case dials <- struct{}{}:
			default:
			}
			return nil, fmt.Errorf("dial %s: target down (benchmark)", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	ups := make(chan struct{}, 1)
	cfg := session.Config{InitiatorName: "iqn.2026-11.org.goiscsi:bench-recovery", TargetName: iscsitest.DefaultName,
		Portal: tg.Addr(), Dial: dial, NOPInterval: -1, Recovery: &session.RecoveryConfig{},
		OnState: func(s *session.Session, ev session.StateEvent) {
			if ev.To == session.SessionRecovering {
				select {
				case ups <- struct{}{}:
				default:
				}
			}
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s, err := session.Login(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data := make([]byte, 4096)
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		down.Store(true)
		for _, c := range s.Conns() {
			if tc := tg.Conn(s.TSIH(), c.CID()); tc != nil {
				tc.Reset()
			}
		}
		<-ups
		<-dials // past Time2Wait: the recovery is in its backoff
		b.StartTimer()
		start := time.Now()
		down.Store(false)
		if err := s.Write(ctx, 0, 0, 512, data); err != nil {
			b.Fatalf("write after the target came back: %v", err)
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/first-io")
}

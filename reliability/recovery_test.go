package reliability

// Sessions that survive: tgtd is killed (SIGKILL) mid-I/O and restarted on
// the same port with the same target and backing file; the session
// reinstates itself, the writers see no failure, and every acknowledged
// write reads back byte for byte. 5 restarts by default, 200 with SOAK=1.

import (
	"bytes"
	"context"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/session"
)

const restartIQN = "iqn.2026-11.org.goiscsi:restart"

// restartTgtd kills tgtd and starts a new one on the same portal and
// control port, serving the same backing file as target 1, LUN 1.
func restartTgtd(t *testing.T, old *peers.Tgtd, path string) *peers.Tgtd {
	t.Helper()
	if err := syscall.Kill(old.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill tgtd %d: %v", old.Pid, err)
	}
	old.Stop() // reaps it; its error is the kill's
	s, err := peers.StartTgtdProcess(peers.TgtdOptions{Port: old.Port, CtlPort: old.CtlPort, Dir: old.Dir})
	if err != nil {
		t.Fatalf("restart tgtd on %s: %v\n%s", old.Addr, err, old.LogTail(20))
	}
	if err := s.AddTarget(1, restartIQN); err != nil {
		t.Fatal(err)
	}
	if err := s.AddLUN(1, 1, path); err != nil {
		t.Fatal(err)
	}
	if err := s.BindAll(1); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTgtdKilledAndRestartedMidIO(t *testing.T) {
	peers.Require(t, "tgtd", "tgtadm")
	restarts := 5
	if soak() {
		restarts = 200
	}
	dir := t.TempDir()
	tg, err := peers.StartTgtdProcess(peers.TgtdOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { tg.Stop() }()
	path, err := tg.AddDiskTarget(1, restartIQN, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	ups := make(chan session.StateEvent, 16)
	in, err := initiator.New(initiator.Config{Name: "iqn.2026-11.org.goiscsi:restart-initiator", NOPInterval: -1,
		RecoveryConfig: initiator.RecoveryConfig{ReplacementTimeout: 60 * time.Second,
			OnState: func(s *session.Session, ev session.StateEvent) {
				if ev.To == session.SessionUp {
					select {
					case ups <- ev:
					default:
					}
				}
			}}})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(restarts)*30*time.Second+time.Minute)
	defer cancel()
	s, err := in.Login(ctx, tg.Addr, restartIQN, initiator.LoginOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadCapacity(ctx, 1); err != nil {
		t.Fatal(err)
	}
	const writers, blocks, slots = 4, 8, 32
	acked := make([]map[uint64][]byte, writers)
	var writes, failed atomic.Int64
	progress := make(chan struct{}, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		acked[w] = map[uint64][]byte{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				lba := uint64((w*slots + i%slots) * blocks)
				data := make([]byte, blocks*512)
				rand.Read(data)
				if err := s.Write(ctx, 1, lba, 512, data); err != nil {
					failed.Add(1)
					t.Errorf("writer %d: write at LBA %d: %v", w, lba, err)
					return
				}
				acked[w][lba] = data
				writes.Add(1)
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		}()
	}
	var worst time.Duration
	for r := 0; r < restarts && failed.Load() == 0; r++ {
		<-progress
		before := writes.Load()
		tg = restartTgtd(t, tg, path)
		back := time.Now()
		select {
		case <-ups:
		case <-ctx.Done():
			t.Fatalf("restart %d: the session did not recover (%+v)", r, s.Recovery())
		}
		for writes.Load() <= before && failed.Load() == 0 {
			select {
			case <-progress:
			case <-ctx.Done():
				t.Fatalf("restart %d: no write completed after the recovery", r)
			}
		}
		worst = max(worst, time.Since(back))
	}
	close(stop)
	wg.Wait()
	info := s.Recovery()
	t.Logf("%d restarts, %d writes, %d retried, %d reconnects; worst restart-to-write %v", restarts, writes.Load(),
		info.Retries, info.Reconnects, worst)
	if info.Reconnects < restarts {
		t.Errorf("%d reinstatements for %d restarts", info.Reconnects, restarts)
	}
	for w := range acked {
		for lba, data := range acked[w] {
			got := make([]byte, len(data))
			if err := s.Read(ctx, 1, lba, 512, got); err != nil {
				t.Fatalf("read back LBA %d: %v", lba, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("writer %d: LBA %d does not hold its acknowledged write", w, lba)
			}
		}
	}
	op, err := in.LogoutFromTarget(restartIQN)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := op.Wait(ctx); err != nil || !r.LoggedOutOrGone() {
		t.Fatalf("logout: %v %v", r.Outcome, err)
	}
}

package sockio

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// coalesceBound is how soon bytes queued below a raised mark must be read:
// the watchdog drops the mark within about 2*CoalesceWait; the rest is
// slack for the race detector on a loaded machine (the session's tests
// needed 100 ms in a full -race run beside qemu).
const coalesceBound = 2*CoalesceWait + 90*time.Millisecond

// socketLowWater returns c's SO_RCVLOWAT as the kernel has it.
func socketLowWater(t *testing.T, r *Reader) int {
	t.Helper()
	var v int
	var gerr error
	if err := r.rc.Control(func(fd uintptr) {
		v, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT)
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// coalesceReader returns a Reader of one end of a loopback TCP connection
// and the other end, skipping where there is no raw socket I/O (failing
// where there should be).
func coalesceReader(t *testing.T) (*Reader, *net.TCPConn) {
	t.Helper()
	c, peer := tcpPair(t)
	r := NewReader(c)
	if r == nil {
		if rawIO {
			t.Fatal("no Reader of a *net.TCPConn")
		}
		t.Skip("no raw socket I/O here")
	}
	return r, peer
}

// waitDropped waits, within coalesceBound of start, for the watchdog to
// have dropped the mark to 1 (no signal says so: polled), and checks the
// socket agrees.
func waitDropped(t *testing.T, r *Reader, start time.Time) {
	t.Helper()
	for {
		if n, _ := r.LowWater(); n == 1 {
			break
		}
		if took := time.Since(start); took > coalesceBound {
			t.Fatalf("mark still raised %v after it was set, want dropped within %v", took, coalesceBound)
		}
		time.Sleep(50 * time.Microsecond)
	}
	r.lwMu.Lock() // the watchdog's system call is done
	defer r.lwMu.Unlock()
	if v := socketLowWater(t, r); v != 1 {
		t.Errorf("SO_RCVLOWAT %d after the watchdog dropped the mark, want 1", v)
	}
}

// TestCoalesceWatchdog: a mark above what comes is dropped by the watchdog
// so that a waiting read returns within coalesceBound; the mark is set
// only when it changes (one system call each), and within its bounds.
func TestCoalesceWatchdog(t *testing.T) {
	r, peer := coalesceReader(t)
	r.Coalesce(1)
	r.Coalesce(0)
	if n, sets := r.LowWater(); n != 1 || sets != 0 {
		t.Fatalf("after Coalesce(1) and Coalesce(0) on a new socket: mark %d, %d sets; want 1, 0", n, sets)
	}

	// A read waits with a mark of 4096 bytes; 100 come.
	start := time.Now()
	r.Coalesce(4096)
	if _, sets := r.LowWater(); sets != 1 {
		t.Fatalf("Coalesce(4096): %d sets, want 1", sets)
	}
	got := make(chan int, 1)
	go func() {
		buf := make([]byte, 512)
		n, _ := r.Read(buf)
		got <- n
	}()
	if _, err := peer.Write(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-got:
		if took := time.Since(start); took > coalesceBound {
			t.Errorf("read returned %v after the mark was set, want within %v", took, coalesceBound)
		}
		if n != 100 {
			t.Errorf("read %d bytes, want 100", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read stalled below the mark: the watchdog did not drop it")
	}
	waitDropped(t, r, start)
	if _, sets := r.LowWater(); sets != 2 {
		t.Errorf("%d sets after one raise and the watchdog's drop, want 2", sets)
	}

	// With no read at all the watchdog drops it too; a mark above
	// MaxCoalesce is MaxCoalesce.
	start = time.Now()
	r.Coalesce(1 << 30)
	r.lwMu.Lock()
	if n, v := int(r.lowat.Load()), socketLowWater(t, r); n != 1 && (n != MaxCoalesce || v != MaxCoalesce) {
		t.Errorf("Coalesce(1<<30): mark %d, SO_RCVLOWAT %d; want %d", n, v, MaxCoalesce)
	}
	r.lwMu.Unlock()
	waitDropped(t, r, start)
	if _, sets := r.LowWater(); sets != 4 {
		t.Errorf("%d sets after two raises and two drops, want 4", sets)
	}
}

// TestCoalesceNoAllocs: asking for the mark the socket has allocates
// nothing and makes no system call.
func TestCoalesceNoAllocs(t *testing.T) {
	r, _ := coalesceReader(t)
	if a := testing.AllocsPerRun(100, func() { r.Coalesce(1) }); a != 0 {
		t.Errorf("Coalesce at the current mark: %v allocations, want 0", a)
	}
	if _, sets := r.LowWater(); sets != 0 {
		t.Errorf("Coalesce at the current mark: %d system calls, want 0", sets)
	}
}

// TestCoalesceWatchdogQuietWhileReading: while reads keep coming, each
// after the caller asked for the raised mark again before waiting, the
// watchdog does not run: it runs only once a wait has lasted CoalesceWait
// (a firing is a goroutine, and on an idle process a thread woken; run
// every CoalesceWait while the mark is up, it was about a fifth of the
// context switches of a queue depth of 32).
func TestCoalesceWatchdogQuietWhileReading(t *testing.T) {
	r, peer := coalesceReader(t)
	const mark = 4096
	chunk := make([]byte, mark+512)
	buf := make([]byte, len(chunk))
	start := time.Now()
	for time.Since(start) < 30*CoalesceWait {
		r.Coalesce(mark)
		if _, err := peer.Write(chunk); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(chunk); {
			n, err := r.Read(buf[got:])
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}
	elapsed := time.Since(start)
	r.lwMu.Lock()
	runs := r.lw.runs
	r.lwMu.Unlock()
	// One run per CoalesceWait is what a periodic watchdog makes; a few
	// are a wait that a busy machine stretched past CoalesceWait.
	if limit := uint64(elapsed / (3 * CoalesceWait)); runs > limit {
		t.Errorf("watchdog ran %d times in %v of steady reads, want at most %d", runs, elapsed, limit)
	}
	if n, _ := r.LowWater(); n != mark {
		t.Logf("mark %d at the end (a stretched wait dropped it)", n)
	}
}

// TestStopCoalesce: once stopped (its connection closing), the watchdog of
// a raised mark does not run, and no mark is set after.
func TestStopCoalesce(t *testing.T) {
	r, _ := coalesceReader(t)
	r.Coalesce(4096)
	r.StopCoalesce()
	_, sets := r.LowWater()
	r.Coalesce(8192)
	r.Coalesce(4096)
	time.Sleep(3 * CoalesceWait) // what is checked is that nothing happens
	r.lwMu.Lock()
	runs := r.lw.runs
	r.lwMu.Unlock()
	if runs != 0 {
		t.Errorf("watchdog ran %d times after StopCoalesce, want 0", runs)
	}
	if _, now := r.LowWater(); now != sets {
		t.Errorf("%d marks set after StopCoalesce, want none", now-sets)
	}
	r.StopCoalesce() // twice is fine
}

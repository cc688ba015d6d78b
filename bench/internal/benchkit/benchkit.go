//go:build linux

// Package benchkit holds what the benchmark harness (bench/harness) and the Go
// benchmarks of bench/ share: an in-memory target and a raw TCP
// server run in a child process (so that the initiator's process measures
// only itself), a raw TCP client, logins of many sessions, the timing of
// LogoutFromTarget and the memory of idle sessions.
//
// Speed is measured here, never in tests: every figure is meant to be read
// as a ratio taken in one run on one machine.
package benchkit

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
)

// MemTargetName is the name of the in-memory target the child serves.
const MemTargetName = "iqn.2026-01.org.goiscsi:bench-mem"

// InitiatorName is the name the harness logs in with.
const InitiatorName = "iqn.2026-01.org.goiscsi:bench"

// childEnv selects what a binary that calls MaybeServeChild does instead of
// its own work: "serve" (in-memory target and raw server) or "rawclient".
const childEnv = "GOISCSI_BENCH_CHILD"

// rawClientEnv carries the raw client's arguments: addr,bs,qd,duration.
const rawClientEnv = "GOISCSI_BENCH_RAW"

// memLUNEnv is the size in bytes of the in-memory target's LUN.
const memLUNEnv = "GOISCSI_BENCH_LUN"

// MaybeServeChild turns the process into a benchmark child when the
// environment says so, and then exits; otherwise it returns at once. The
// harness's main and the test binaries' TestMain call it first.
func MaybeServeChild() {
	switch os.Getenv(childEnv) {
	case "":
		return
	case "serve":
		if err := serve(); err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
	case "rawclient":
		if err := rawClientMain(); err != nil {
			fmt.Fprintln(os.Stderr, "bench raw client:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "bench child: unknown %s=%q\n", childEnv, os.Getenv(childEnv))
		os.Exit(2)
	}
	os.Exit(0)
}

// serve runs the in-memory target and the raw TCP server until stdin ends.
func serve() error {
	size := int64(1 << 30)
	if v := os.Getenv(memLUNEnv); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("%s: %w", memLUNEnv, err)
		}
		size = n
	}
	t := iscsitest.NewTarget(iscsitest.Config{
		Name:           MemTargetName,
		LUNs:           []int64{size},
		MaxConnections: 4,
		QueueDepth:     128,
		// An idle target must not cost the initiator anything: no pings.
		NopInInterval: 0,
	})
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Close()
		return err
	}
	rawChunk = make([]byte, 8<<20)
	go serveRaw(raw)
	// GOISCSI_BENCH_TARGET_CPUPROFILE=FILE profiles the target's process
	// for its whole life: what bounds the in-memory rows on its side.
	if f := os.Getenv("GOISCSI_BENCH_TARGET_CPUPROFILE"); f != "" {
		if w, err := os.Create(f); err == nil {
			pprof.StartCPUProfile(w)
			defer func() {
				pprof.StopCPUProfile()
				w.Close()
			}()
		}
	}
	fmt.Printf("iscsi %s\nraw %s\n", t.Addr(), raw.Addr())
	io.Copy(io.Discard, os.Stdin)
	raw.Close()
	t.Close()
	return nil
}

// rawChunk is what the raw server sends from: as a target, it keeps the
// data in memory and writes it out. Only the child allocates it.
var rawChunk []byte

// serveRaw answers each 4-byte request (a length) on a connection with that
// many bytes, in order: the shape of a SCSI read without any iSCSI.
func serveRaw(ln net.Listener) {
	for {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer nc.Close()
			br := bufio.NewReader(nc)
			var req [4]byte
			for {
				if _, err := io.ReadFull(br, req[:]); err != nil {
					return
				}
				n := int(binary.BigEndian.Uint32(req[:]))
				if n > len(rawChunk) {
					return
				}
				if _, err := nc.Write(rawChunk[:n]); err != nil {
					return
				}
			}
		}()
	}
}

// RawResult is what a raw TCP client run measured.
type RawResult struct {
	IOs     int64   `json:"ios"`
	Seconds float64 `json:"seconds"`
}

// RawClient reads bs-byte responses over one connection to the raw server at
// addr for d, with qd requests outstanding, into one bs-byte buffer (as a
// read lands in the caller's buffer).
func RawClient(addr string, bs, qd int, d time.Duration) (RawResult, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return RawResult{}, err
	}
	defer nc.Close()
	buf := make([]byte, bs)
	var req [4]byte
	binary.BigEndian.PutUint32(req[:], uint32(bs))
	for range qd {
		if _, err := nc.Write(req[:]); err != nil {
			return RawResult{}, err
		}
	}
	start := time.Now()
	end := start.Add(d)
	var ios int64
	for time.Now().Before(end) {
		if _, err := io.ReadFull(nc, buf); err != nil {
			return RawResult{}, err
		}
		ios++
		if _, err := nc.Write(req[:]); err != nil {
			return RawResult{}, err
		}
	}
	el := time.Since(start)
	return RawResult{IOs: ios, Seconds: el.Seconds()}, nil
}

func rawClientMain() error {
	f := strings.Split(os.Getenv(rawClientEnv), ",")
	if len(f) != 4 {
		return fmt.Errorf("%s=%q: want addr,bs,qd,duration", rawClientEnv, os.Getenv(rawClientEnv))
	}
	bs, err1 := strconv.Atoi(f[1])
	qd, err2 := strconv.Atoi(f[2])
	d, err3 := time.ParseDuration(f[3])
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	res, err := RawClient(f[0], bs, qd, d)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// RawClientCommand returns the command that runs RawClient in a child
// process of the binary exe (one that calls MaybeServeChild).
func RawClientCommand(exe, addr string, bs, qd int, d time.Duration) *exec.Cmd {
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=rawclient",
		fmt.Sprintf("%s=%s,%d,%d,%s", rawClientEnv, addr, bs, qd, d))
	return cmd
}

// Child is the in-memory target and the raw TCP server, running in a child
// process.
type Child struct {
	// ISCSIAddr is the in-memory target's portal; RawAddr the raw server.
	ISCSIAddr, RawAddr string
	Pid                int

	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
}

// StartChild starts exe (a binary that calls MaybeServeChild, usually
// os.Args[0]) as the in-memory target with a LUN of lunBytes.
func StartChild(exe string, lunBytes int64) (*Child, error) {
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=serve", fmt.Sprintf("%s=%d", memLUNEnv, lunBytes))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &Child{cmd: cmd, stdin: stdin, Pid: cmd.Process.Pid, done: make(chan struct{})}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	timeout := time.After(15 * time.Second)
	for c.ISCSIAddr == "" || c.RawAddr == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				c.kill()
				return nil, errors.New("bench: the target child exited before giving its addresses")
			}
			if a, ok := strings.CutPrefix(l, "iscsi "); ok {
				c.ISCSIAddr = a
			} else if a, ok := strings.CutPrefix(l, "raw "); ok {
				c.RawAddr = a
			}
		case <-timeout:
			c.kill()
			return nil, errors.New("bench: the target child did not start within 15 s")
		}
	}
	go func() {
		for range lines {
		}
	}()
	go func() {
		cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// Stop ends the child (closing its stdin; SIGKILL by pid after 10 s).
func (c *Child) Stop() {
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.kill()
	}
}

func (c *Child) kill() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	if c.done != nil {
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
		}
	}
}

// NewInitiator returns an initiator for the benchmarks: keepalives as by
// default, nothing logged.
func NewInitiator() (*initiator.Initiator, error) {
	return initiator.New(initiator.Config{Name: InitiatorName})
}

// LoginN logs n sessions of conns connections each in to target at portal,
// parallel at a time.
func LoginN(ctx context.Context, ini *initiator.Initiator, portal, target string, n, conns, parallel int) error {
	if parallel < 1 {
		parallel = 1
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range min(parallel, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				var err error
				for attempt := 0; attempt < 3; attempt++ {
					if _, err = ini.Login(ctx, portal, target, initiator.LoginOptions{Connections: conns}); err == nil {
						break
					}
					if ctx.Err() != nil {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("bench: login %d of %d: %w", i, n, err)
					}
					mu.Unlock()
					next.Store(int64(n)) // stop the others
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// LogoutTiming is one LogoutFromTarget measured.
type LogoutTiming struct {
	Sessions, Conns int
	// Wall is from the call to LogoutFromTarget to Wait's return.
	Wall    time.Duration
	Outcome logout.Outcome
}

// TimeLogout logs out of every session to target and measures the wall time
// from the call to the end of Wait. The error says when the outcome is not
// Success or not every session took part.
func TimeLogout(ctx context.Context, ini *initiator.Initiator, target string, wantSessions int) (LogoutTiming, error) {
	conns := 0
	for _, s := range ini.Sessions(target) {
		conns += len(s.Conns())
	}
	start := time.Now()
	op, err := ini.LogoutFromTarget(target)
	if err != nil {
		return LogoutTiming{}, err
	}
	res, err := op.Wait(ctx)
	wall := time.Since(start)
	if err != nil {
		return LogoutTiming{}, err
	}
	lt := LogoutTiming{Sessions: len(res.Sessions), Conns: conns, Wall: wall, Outcome: res.Outcome}
	if res.Outcome != logout.Success {
		return lt, fmt.Errorf("bench: logout of %d sessions: outcome %s: %v", len(res.Sessions), res.Outcome, res.Err())
	}
	if len(res.Sessions) != wantSessions {
		return lt, fmt.Errorf("bench: logout covered %d sessions, want %d", len(res.Sessions), wantSessions)
	}
	return lt, nil
}

// MemSample is the Go runtime's view of the process's memory.
type MemSample struct {
	HeapAlloc  uint64
	StackInuse uint64
	Goroutines int
}

// SampleMem collects garbage, lets it settle and samples the memory in use.
func SampleMem() MemSample {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return MemSample{HeapAlloc: ms.HeapAlloc, StackInuse: ms.StackInuse, Goroutines: runtime.NumGoroutine()}
}

// PerSession is the memory an idle session costs, from two samples around
// the login of n sessions.
type PerSession struct {
	N          int
	HeapBytes  float64
	StackBytes float64
	Goroutines float64
}

// Total is heap plus goroutine stacks per session.
func (p PerSession) Total() float64 { return p.HeapBytes + p.StackBytes }

// Diff returns the cost per session between before and after for n sessions.
func Diff(before, after MemSample, n int) PerSession {
	f := float64(n)
	return PerSession{
		N:          n,
		HeapBytes:  (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / f,
		StackBytes: (float64(after.StackInuse) - float64(before.StackInuse)) / f,
		Goroutines: float64(after.Goroutines-before.Goroutines) / f,
	}
}

// IdleMemory logs n single-connection sessions in to target at portal with a
// new initiator, waits for them to be idle and returns what each costs,
// then logs out of them. During, when set, runs while the sessions are up
// (to write a heap profile, say).
func IdleMemory(ctx context.Context, portal, target string, n int, settle time.Duration, during func()) (PerSession, error) {
	before := SampleMem()
	ini, err := NewInitiator()
	if err != nil {
		return PerSession{}, err
	}
	defer ini.Close()
	if err := LoginN(ctx, ini, portal, target, n, 1, 32); err != nil {
		return PerSession{}, err
	}
	time.Sleep(settle)
	after := SampleMem()
	ps := Diff(before, after, n)
	if during != nil {
		during()
	}
	if _, err := TimeLogout(ctx, ini, target, n); err != nil {
		return ps, err
	}
	return ps, nil
}

// RaiseOpenFiles raises the open-file limit to want (soft and hard) where it
// may, and else the soft limit to the hard one; it returns the limit in
// force, and an error saying why when that is less than want. Children
// started afterwards inherit it: tgtd needs one descriptor per connection,
// and so do the initiator and the in-memory target.
func RaiseOpenFiles(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	n := syscall.Rlimit{Cur: want, Max: max(want, lim.Max)}
	err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &n)
	if err != nil {
		// Not root, or no CAP_SYS_RESOURCE: the hard limit is the most.
		n = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		if err2 := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &n); err2 != nil {
			return lim.Cur, err2
		}
		err = fmt.Errorf("raising the open-file limit to %d: %w; the hard limit %d holds", want, err, lim.Max)
	}
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim.Cur, err
}

// SelfCPU returns the user+system CPU time this process has used.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ProcCPU returns the user+system CPU time of process pid from
// /proc/PID/stat (in clock ticks of 10 ms), or -1 when it cannot be read.
func ProcCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name may hold spaces: fields count from the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	// utime and stime are fields 14 and 15 of the whole line: 12 and 13
	// after the state.
	if len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(u+s) * 10 * time.Millisecond
}

//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/goiscsi/iscsi/bench/internal/benchkit"
	"github.com/goiscsi/iscsi/internal/peers"
)

// TgtdTarget is the name of the target the harness creates on tgtd.
const TgtdTarget = "iqn.2026-01.org.goiscsi:bench-tgtd"

// ioConfig is one I/O configuration of the comparison.
type ioConfig struct {
	Name    string
	BS, QD  int
	Write   bool
	Random  bool
	PeerNA  string // why the peer has no counterpart; empty when it has
	OnlyMem bool
}

// The configurations on tgtd, iscsi-perf against iscsictl perf.
var tgtdConfigs = []ioConfig{
	{Name: "4k-randread-qd1", BS: 4096, QD: 1, Random: true},
	{Name: "4k-randread-qd8", BS: 4096, QD: 8, Random: true},
	{Name: "4k-randread-qd32", BS: 4096, QD: 32, Random: true},
	{Name: "4k-randwrite-qd32", BS: 4096, QD: 32, Random: true, Write: true,
		PeerNA: "libiscsi has no write load tool (iscsi-perf only reads)"},
	{Name: "256k-seqread-qd8", BS: 256 << 10, QD: 8},
	{Name: "1m-seqread-qd8", BS: 1 << 20, QD: 8},
}

// The configurations on the in-memory target, iscsictl perf against the
// raw TCP client.
var memConfigs = []ioConfig{
	{Name: "mem-1m-seqread-qd8", BS: 1 << 20, QD: 8},
	{Name: "mem-4k-randread-qd32", BS: 4096, QD: 32, Random: true},
}

func (c ioConfig) pattern() string {
	if c.Random {
		return "random"
	}
	return "sequential"
}

func (c ioConfig) rw() string {
	if c.Write {
		return "write"
	}
	return "read"
}

// sample is one I/O run of one initiator.
type sample struct {
	IOPS  float64
	MiBps float64
	// CPUus is the initiator process's CPU time (user+sys, from its
	// rusage) per I/O.
	CPUus float64
	// TargetCPU is the target process's CPU time over the run's wall time,
	// in percent of one core.
	TargetCPU float64
	Err       error
}

type ioRow struct {
	cfg        ioConfig
	peer, ours []sample
}

type logoutRow struct {
	target          string
	sessions, conns int
	walls           []time.Duration
	// selfCPU is the harness's CPU time during each logout (the
	// initiator's), targetCPU the target process's.
	selfCPU, targetCPU []time.Duration
	err                error
	check              string // the target's own view afterwards
	skipped            string // why the row was not run
}

// fdMargin is what a process needs in open files beside its connections.
const fdMargin = 200

type memRow struct {
	target    string
	per       benchkit.PerSession
	targetRSS float64 // bytes per session on the target's side; 0 if unknown
	err       error
}

type microRow struct {
	name                         string
	nsOp, mbs, bytesOp, allocsOp string
}

// report is everything a run measured.
type report struct {
	cfg       config
	start     time.Time
	end       time.Time
	machine   []string
	commands  []string
	notes     []string
	loadStart string
	loadEnd   string
	tgtdIO    []*ioRow
	memIO     []*ioRow
	logouts   []*logoutRow
	memory    []*memRow
	micro     []microRow
	microRaw  string
	errs      []string
}

func (r *report) fail(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// run does every section of cfg and returns what it measured; the error
// says which measurements failed (their rows say so too).
func run(ctx context.Context, cfg config) (*report, error) {
	rep := &report{cfg: cfg, start: time.Now(), loadStart: loadavg()}
	rep.machine = machineInfo()
	limit, err := benchkit.RaiseOpenFiles(1 << 17)
	if cfg.gomaxprocs > 0 {
		rep.notes = append(rep.notes, fmt.Sprintf("iscsictl perf runs with GOMAXPROCS=%d (-gomaxprocs).", cfg.gomaxprocs))
	}
	note := fmt.Sprintf("open-file limit of the harness, tgtd and the in-memory target (inherited): %d", limit)
	if err != nil {
		note += fmt.Sprintf(" (%v)", err)
	}
	rep.notes = append(rep.notes, note)
	defer func() {
		rep.end = time.Now()
		rep.loadEnd = loadavg()
	}()

	if cfg.iscsictl == "" {
		dir, err := os.MkdirTemp("", "goiscsi-bench-")
		if err != nil {
			return rep, err
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "iscsictl")
		cfg.logf("building iscsictl")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/goiscsi/iscsi/cmd/iscsictl").CombinedOutput(); err != nil {
			return rep, fmt.Errorf("go build iscsictl: %v: %s", err, out)
		}
		cfg.iscsictl = bin
	}
	exe, err := os.Executable()
	if err != nil {
		return rep, err
	}

	needTgtd := cfg.sections["tgtd-io"] || cfg.sections["logout"] || cfg.sections["memory"]
	var tg *tgtdRun
	if needTgtd {
		bins := []string{"tgtd", "tgtadm"}
		if cfg.sections["tgtd-io"] {
			bins = append(bins, "iscsi-perf")
		}
		if m := peers.Missing(bins...); len(m) > 0 {
			rep.fail("peers missing, tgtd rows skipped: %s (apt-get install tgt libiscsi-bin)", strings.Join(m, ", "))
		} else {
			tg, err = startTgtd(cfg, rep)
			if err != nil {
				rep.fail("tgtd: %v", err)
			} else {
				defer tg.stop()
			}
		}
	}
	needMem := cfg.sections["mem-io"] || cfg.sections["logout"] || cfg.sections["memory"]
	var child *benchkit.Child
	if needMem {
		size := int64(1 << 30)
		if cfg.smoke {
			size = 64 << 20
		}
		child, err = benchkit.StartChild(exe, size)
		if err != nil {
			rep.fail("in-memory target: %v", err)
		} else {
			defer child.Stop()
			rep.notes = append(rep.notes, fmt.Sprintf("in-memory target (iscsitest, CmdSN window 128, no NOP-In) and raw TCP server in a child process, pid %d, on %s and %s",
				child.Pid, child.ISCSIAddr, child.RawAddr))
		}
	}

	if cfg.sections["tgtd-io"] && tg != nil {
		runIO(ctx, cfg, rep, &rep.tgtdIO, tgtdConfigs, ioTarget{name: "tgtd", addr: tg.Addr, iqn: TgtdTarget, lun: 1, pid: tg.Pid})
	}
	if cfg.sections["mem-io"] && child != nil {
		runIO(ctx, cfg, rep, &rep.memIO, memConfigs, ioTarget{name: "mem", addr: child.ISCSIAddr, iqn: benchkit.MemTargetName,
			lun: 0, pid: child.Pid, raw: child.RawAddr, exe: exe})
	}
	if cfg.sections["memory"] {
		if tg != nil {
			runMemory(ctx, cfg, rep, "tgtd", tg.Addr, TgtdTarget, tg.Pid, tg.Tgtd)
		}
		if child != nil {
			runMemory(ctx, cfg, rep, "in-memory", child.ISCSIAddr, benchkit.MemTargetName, 0, nil)
		}
	}
	if cfg.sections["logout"] {
		if tg != nil {
			for _, n := range cfg.tgtdLogoutN {
				runLogout(ctx, cfg, rep, "tgtd", tg.Addr, TgtdTarget, tg.Pid, n, 1, tg.Tgtd)
			}
		}
		if child != nil {
			for _, conns := range []int{1, 2} {
				ns := cfg.memLogoutN
				if conns == 2 {
					ns = cfg.memLogoutN2
				}
				for _, n := range ns {
					if need := uint64(n*conns) + fdMargin; need > limit {
						// The initiator holds a descriptor per connection,
						// and so does the target's process.
						rep.logouts = append(rep.logouts, &logoutRow{target: "in-memory", sessions: n, conns: conns,
							skipped: fmt.Sprintf("needs %d open files per process; the limit is %d", need, limit)})
						continue
					}
					runLogout(ctx, cfg, rep, "in-memory", child.ISCSIAddr, benchkit.MemTargetName, child.Pid, n, conns, nil)
				}
			}
		}
	}
	if cfg.sections["micro"] {
		runMicro(ctx, cfg, rep)
	}
	if len(rep.errs) > 0 {
		return rep, errors.New(strings.Join(rep.errs, "; "))
	}
	return rep, ctx.Err()
}

// tgtdRun is the harness's tgtd: a private one with a LUN on a file in
// /dev/shm.
type tgtdRun struct {
	*peers.Tgtd
	dir string
}

func (t *tgtdRun) stop() {
	t.Tgtd.Stop()
	os.RemoveAll(t.dir)
}

func startTgtd(cfg config, rep *report) (*tgtdRun, error) {
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "goiscsi-bench-tgtd-")
	if err != nil {
		return nil, err
	}
	tg, err := peers.StartTgtdProcess(peers.TgtdOptions{Dir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	t := &tgtdRun{Tgtd: tg, dir: dir}
	path, err := tg.AddDiskTarget(1, TgtdTarget, cfg.lunBytes)
	if err != nil {
		t.stop()
		return nil, err
	}
	// Real pages, not a sparse file's holes: reads then cost what they
	// cost on a disk in memory.
	if f, err := os.OpenFile(path, os.O_RDWR, 0); err == nil {
		syscall.Fallocate(int(f.Fd()), 0, 0, cfg.lunBytes)
		f.Close()
	}
	rep.notes = append(rep.notes, fmt.Sprintf("tgtd pid %d on %s (control port %d), started with %s; LUN 1 = %d MiB file %s (fallocated); tgtd's own open-file limit: %s",
		tg.Pid, tg.Addr, tg.CtlPort, strings.Join(peers.TgtdMallocEnv, " "), cfg.lunBytes>>20, path, procLimit(tg.Pid, "Max open files")))
	return t, nil
}

// ioTarget is where runIO runs.
type ioTarget struct {
	name string
	addr string
	iqn  string
	lun  int
	pid  int    // the target process, for its CPU time
	raw  string // the raw server, for the in-memory rows
	exe  string // the harness binary, for the raw client
}

// runIO runs every configuration for cfg.rounds rounds, the two initiators
// alternating which goes first.
func runIO(ctx context.Context, cfg config, rep *report, rows *[]*ioRow, cfgs []ioConfig, tgt ioTarget) {
	for _, c := range cfgs {
		*rows = append(*rows, &ioRow{cfg: c})
	}
	for round := 0; round < cfg.rounds; round++ {
		for _, row := range *rows {
			if ctx.Err() != nil {
				return
			}
			c := row.cfg
			peer := func() {
				if c.PeerNA != "" {
					return
				}
				var s sample
				if tgt.raw != "" {
					s = runRaw(ctx, cfg, tgt, c)
				} else {
					s = runLibiscsi(ctx, cfg, tgt, c)
				}
				row.peer = append(row.peer, s)
				cfg.logf("%s round %d %s: %s", c.Name, round+1, peerName(tgt), s)
			}
			ours := func() {
				s := runIscsictl(ctx, cfg, tgt, c)
				row.ours = append(row.ours, s)
				cfg.logf("%s round %d goiscsi: %s", c.Name, round+1, s)
			}
			if round%2 == 0 {
				peer()
				ours()
			} else {
				ours()
				peer()
			}
		}
	}
	for _, row := range *rows {
		for _, s := range slices.Concat(row.peer, row.ours) {
			if s.Err != nil {
				rep.fail("%s: %v", row.cfg.Name, s.Err)
				break
			}
		}
	}
}

func peerName(t ioTarget) string {
	if t.raw != "" {
		return "raw TCP"
	}
	return "libiscsi"
}

func (s sample) String() string {
	if s.Err != nil {
		return "error: " + s.Err.Error()
	}
	return fmt.Sprintf("%.0f IOPS, %.1f MiB/s, %.2f µs CPU/IO, target %.0f%%", s.IOPS, s.MiBps, s.CPUus, s.TargetCPU)
}

// childCPU returns the user+sys time of a finished child.
func childCPU(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	return ps.UserTime() + ps.SystemTime()
}

// measured runs cmd and returns its stdout, its CPU time, and the target's
// CPU percentage over the run.
func measured(cmd *exec.Cmd, targetPid int) (out []byte, cpu time.Duration, targetPct float64, err error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := benchkit.ProcCPU(targetPid)
	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	t1 := benchkit.ProcCPU(targetPid)
	if t0 >= 0 && t1 >= 0 && wall > 0 {
		targetPct = (t1 - t0).Seconds() / wall.Seconds() * 100
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 400 {
			msg = msg[len(msg)-400:]
		}
		return nil, 0, 0, fmt.Errorf("%s: %v: %s", filepath.Base(cmd.Path), err, msg)
	}
	return stdout.Bytes(), childCPU(cmd.ProcessState), targetPct, nil
}

// perfJSON is the part of iscsictl perf --json the harness reads.
type perfJSON struct {
	IOs         int64   `json:"ios"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"firstError"`
	IOPS        float64 `json:"iops"`
	DurationSec float64 `json:"durationSec"`
}

func runIscsictl(ctx context.Context, cfg config, tgt ioTarget, c ioConfig) sample {
	cmd := exec.CommandContext(ctx, cfg.iscsictl, "perf", "--portal", tgt.addr, "--target", tgt.iqn,
		"--lun", strconv.Itoa(tgt.lun), "--bs", strconv.Itoa(c.BS), "--qd", strconv.Itoa(c.QD),
		"--duration", cfg.duration.String(), "--rw", c.rw(), "--pattern", c.pattern(), "--json", "--log-level", "error")
	if cfg.gomaxprocs > 0 {
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(cfg.gomaxprocs))
	}
	out, cpu, tpct, err := measured(cmd, tgt.pid)
	if err != nil {
		return sample{Err: err}
	}
	var p perfJSON
	if err := json.Unmarshal(out, &p); err != nil {
		return sample{Err: fmt.Errorf("iscsictl perf --json: %v: %q", err, out)}
	}
	if p.IOs == 0 || p.Errors > 0 {
		return sample{Err: fmt.Errorf("iscsictl perf: %d I/Os, %d errors (%s)", p.IOs, p.Errors, p.FirstError)}
	}
	return sample{IOPS: p.IOPS, MiBps: p.IOPS * float64(c.BS) / (1 << 20),
		CPUus: float64(cpu.Microseconds()) / float64(p.IOs), TargetCPU: tpct}
}

// libiscsiSeconds is the -t of iscsi-perf: whole seconds, at least 1.
func libiscsiSeconds(d time.Duration) int {
	return max(1, int((d+500*time.Millisecond)/time.Second))
}

var iopsAverage = regexp.MustCompile(`iops average (\d+)`)

func runLibiscsi(ctx context.Context, cfg config, tgt ioTarget, c ioConfig) sample {
	bin, err := peers.LibiscsiBin("perf")
	if err != nil {
		return sample{Err: err}
	}
	secs := libiscsiSeconds(cfg.duration)
	args := []string{"-t", strconv.Itoa(secs), "-m", strconv.Itoa(c.QD), "-b", strconv.Itoa(c.BS / 512)}
	if c.Random {
		args = append(args, "-r")
	}
	args = append(args, peers.LibiscsiURL(tgt.addr, tgt.iqn, tgt.lun, "", ""))
	cmd := exec.CommandContext(ctx, bin, args...)
	out, cpu, tpct, err := measured(cmd, tgt.pid)
	if err != nil {
		return sample{Err: err}
	}
	m := iopsAverage.FindAllSubmatch(out, -1)
	if len(m) == 0 {
		return sample{Err: fmt.Errorf("iscsi-perf printed no \"iops average\": %q", lastBytes(out, 300))}
	}
	iops, _ := strconv.ParseFloat(string(m[len(m)-1][1]), 64)
	if iops == 0 {
		return sample{Err: fmt.Errorf("iscsi-perf: 0 IOPS: %q", lastBytes(out, 300))}
	}
	ios := iops * float64(secs)
	return sample{IOPS: iops, MiBps: iops * float64(c.BS) / (1 << 20), CPUus: float64(cpu.Microseconds()) / ios, TargetCPU: tpct}
}

func runRaw(ctx context.Context, cfg config, tgt ioTarget, c ioConfig) sample {
	cmd := benchkit.RawClientCommand(tgt.exe, tgt.raw, c.BS, c.QD, cfg.duration)
	// The raw server lives in the target's process: its CPU is the
	// target's.
	out, cpu, tpct, err := measured(cmd, tgt.pid)
	if err != nil {
		return sample{Err: err}
	}
	var r benchkit.RawResult
	if err := json.Unmarshal(out, &r); err != nil || r.IOs == 0 {
		return sample{Err: fmt.Errorf("raw client: %v: %q", err, out)}
	}
	iops := float64(r.IOs) / r.Seconds
	return sample{IOPS: iops, MiBps: iops * float64(c.BS) / (1 << 20), CPUus: float64(cpu.Microseconds()) / float64(r.IOs), TargetCPU: tpct}
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// runLogout measures LogoutFromTarget of n sessions of conns connections,
// cfg.rounds times.
func runLogout(ctx context.Context, cfg config, rep *report, name, addr, iqn string, pid, n, conns int, tg *peers.Tgtd) {
	row := &logoutRow{target: name, sessions: n, conns: conns}
	rep.logouts = append(rep.logouts, row)
	for round := 0; round < cfg.rounds && row.err == nil; round++ {
		if ctx.Err() != nil {
			row.err = ctx.Err()
			break
		}
		ini, err := benchkit.NewInitiator()
		if err != nil {
			row.err = err
			break
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		err = benchkit.LoginN(lctx, ini, addr, iqn, n, conns, 64)
		if err == nil {
			time.Sleep(200 * time.Millisecond) // let the logins' goroutines settle
			var lt benchkit.LogoutTiming
			self0, t0 := benchkit.SelfCPU(), benchkit.ProcCPU(pid)
			lt, err = benchkit.TimeLogout(lctx, ini, iqn, n)
			self1, t1 := benchkit.SelfCPU(), benchkit.ProcCPU(pid)
			if err == nil {
				row.walls = append(row.walls, lt.Wall)
				row.selfCPU = append(row.selfCPU, self1-self0)
				if t0 >= 0 && t1 >= 0 {
					row.targetCPU = append(row.targetCPU, t1-t0)
				}
				cfg.logf("logout %s %d x %d round %d: %v", name, n, conns, round+1, lt.Wall)
			}
		}
		cancel()
		ini.Close()
		if err != nil {
			row.err = err
			break
		}
		if tg != nil {
			left, werr := waitNoSessions(tg, 10*time.Second)
			switch {
			case werr != nil:
				row.check = "tgtadm: " + werr.Error()
			case left > 0:
				row.err = fmt.Errorf("tgtd still shows %d sessions 10 s after the logout", left)
			default:
				row.check = "tgtadm shows no session left"
			}
		}
	}
	if row.err != nil {
		rep.fail("logout %s %d x %d: %v", name, n, conns, row.err)
	}
}

// waitNoSessions waits until tgtd shows no I_T nexus on target 1.
func waitNoSessions(tg *peers.Tgtd, d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	for {
		ss, err := tg.Sessions(1)
		if err != nil {
			return 0, err
		}
		if len(ss) == 0 || time.Now().After(deadline) {
			return len(ss), nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func runMemory(ctx context.Context, cfg config, rep *report, name, addr, iqn string, pid int, tg *peers.Tgtd) {
	row := &memRow{target: name}
	rep.memory = append(rep.memory, row)
	rss0 := procRSS(pid)
	// The target's side is sampled while the sessions are up: IdleMemory
	// logs out at its end, so sample from a goroutine at the right time is
	// not needed: log in, sample, and log out here.
	before := benchkit.SampleMem()
	ini, err := benchkit.NewInitiator()
	if err != nil {
		row.err = err
		rep.fail("memory %s: %v", name, err)
		return
	}
	defer ini.Close()
	if err := benchkit.LoginN(ctx, ini, addr, iqn, cfg.memSessions, 1, 32); err != nil {
		row.err = err
		rep.fail("memory %s: %v", name, err)
		return
	}
	settle := 2 * time.Second
	if cfg.smoke {
		settle = 100 * time.Millisecond
	}
	time.Sleep(settle)
	after := benchkit.SampleMem()
	row.per = benchkit.Diff(before, after, cfg.memSessions)
	if rss1 := procRSS(pid); rss0 > 0 && rss1 > 0 {
		row.targetRSS = float64(rss1-rss0) / float64(cfg.memSessions)
	}
	cfg.logf("memory %s: %d sessions: %.0f B heap, %.0f B stacks, %.2f goroutines per session", name,
		cfg.memSessions, row.per.HeapBytes, row.per.StackBytes, row.per.Goroutines)
	if _, err := benchkit.TimeLogout(ctx, ini, iqn, cfg.memSessions); err != nil {
		row.err = err
		rep.fail("memory %s: logout: %v", name, err)
	}
	if tg != nil {
		waitNoSessions(tg, 10*time.Second)
	}
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+)\s+\d+\s+(.*)$`)

func runMicro(ctx context.Context, cfg config, rep *report) {
	root, err := moduleRoot(ctx)
	if err != nil {
		rep.fail("micro-benchmarks: %v", err)
		return
	}
	args := []string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", cfg.benchtime, "./pdu/"}
	rep.commands = append(rep.commands, "go "+strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	rep.microRaw = string(out)
	if err != nil {
		rep.fail("micro-benchmarks: %v: %s", err, lastBytes(out, 500))
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		r := microRow{name: m[1], nsOp: "", mbs: "", bytesOp: "", allocsOp: ""}
		f := strings.Fields(m[2])
		for i := 1; i < len(f); i++ {
			switch f[i] {
			case "ns/op":
				r.nsOp = f[i-1]
			case "MB/s":
				r.mbs = f[i-1]
			case "B/op":
				r.bytesOp = f[i-1]
			case "allocs/op":
				r.allocsOp = f[i-1]
			}
		}
		rep.micro = append(rep.micro, r)
	}
	cfg.logf("micro-benchmarks: %d", len(rep.micro))
	if len(rep.micro) == 0 {
		rep.fail("micro-benchmarks: no result lines in the output")
	}
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the module (go env GOMOD is empty)")
	}
	return filepath.Dir(mod), nil
}

// procRSS returns the resident set of pid in bytes, or 0.
func procRSS(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}

// procLimit returns the soft limit of name in /proc/PID/limits.
func procLimit(pid int, name string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name); ok {
			if f := strings.Fields(v); len(f) > 0 {
				return f[0]
			}
		}
	}
	return "unknown"
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func machineInfo() []string {
	var out []string
	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	out = append(out, fmt.Sprintf("nproc %d, CPU %s", runtime.NumCPU(), model))
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		out = append(out, "Linux "+strings.TrimSpace(string(b)))
	}
	out = append(out, runtime.Version())
	if v, err := exec.Command("dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "tgt", "libiscsi-bin").Output(); err == nil {
		out = append(out, strings.ReplaceAll(strings.TrimSpace(string(v)), "\n", ", "))
	}
	return out
}

package peers

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// LIO is the Linux kernel iSCSI target (LIO) running in a throwaway qemu VM
// started by scripts/lio-vm/run-lio-vm.sh. The host reaches it only on
// 127.0.0.1 through qemu's user-mode networking; SendTargets reports
// 127.0.0.1:Port.
type LIO struct {
	Addr    string // "127.0.0.1:Port", the iSCSI portal
	Port    int    // host port of the portal
	CtlPort int    // host port of the guest's control shell (see Exec)
	Pid     int    // qemu's process id
	IQN     string // target name; LUNs are numbered from 0

	Console string        // guest console log (kernel messages, /init's progress)
	RunDir  string        // per-VM directory holding Console and qemu.log
	Kernel  string        // guest kernel version
	Ready   time.Duration // from starting qemu to the target being ready

	proc      *os.Process // pidfd-backed, so a recycled pid is never signalled
	removeDir bool        // RunDir was made by StartLIOProcess
}

// LIOOptions configures the target in the VM. The zero value gives one 64 MiB
// ramdisk LUN, no authentication and LIO's negotiation defaults.
type LIOOptions struct {
	IQN       string // target name; default iqn.2003-01.org.linux-iscsi.lio-vm:target
	LUNs      int    // number of ramdisk LUNs (0, 1, ...); default 1
	LUNSizeMB int    // size of each LUN in MiB; default 64

	// CHAPUser and CHAPSecret turn on CHAP: the initiator must prove it knows
	// the secret. MutualUser and MutualSecret add the target's credentials
	// for mutual CHAP.
	CHAPUser, CHAPSecret     string
	MutualUser, MutualSecret string

	// MaxConnections is the TPG's MaxConnections (tpgt_1/param); 0 leaves
	// LIO's default of 1.
	MaxConnections int
	// Params and Attribs set more tpgt_1/param and tpgt_1/attrib values,
	// e.g. {"ImmediateData": "No"} or {"login_timeout": "5"}.
	Params, Attribs map[string]string

	// Wait bounds the boot, from starting qemu to the target being ready;
	// default 60 s. Building the cache on a fresh machine (a 71 MB download)
	// may take up to 5 minutes more.
	Wait time.Duration
	// Cache is the directory for the kernel, busybox and the initramfs base,
	// shared by all VMs; default /tmp/lio-vm-cache (LIO_CACHE).
	Cache string
}

const (
	lioQemu           = "qemu-system-x86_64"
	lioQemuPackage    = "qemu-system-x86"
	lioDefaultWait    = 60 * time.Second
	lioPrepareTimeout = 5 * time.Minute
	lioExecTimeout    = 30 * time.Second
	lioStopTimeout    = 10 * time.Second
	lioScript         = "scripts/lio-vm/run-lio-vm.sh"
	// lioRCMarker ends the control shell's output, followed by the exit status.
	lioRCMarker = "\x01lio-rc="
)

// StartLIO boots a VM running LIO and returns it ready for logins; the VM is
// stopped when the test ends. Without qemu-system-x86_64 the test is skipped,
// or fails when the environment has CI=true.
func StartLIO(t testing.TB, opts LIOOptions) *LIO {
	t.Helper()
	lioRequire(t, lioQemu, lioQemuPackage)
	// TempDir's own cleanup runs after the one registered below (cleanups
	// run last-in first-out), so qemu is gone before its directory is.
	l, err := lioStart(opts, t.TempDir())
	if err != nil {
		t.Fatalf("peers: start LIO: %v", err)
	}
	t.Logf("LIO %s on %s (qemu pid %d, kernel %s) ready in %v", l.IQN, l.Addr, l.Pid, l.Kernel, l.Ready)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("LIO console %s:\n%s", l.Console, lioTail(l.Console, 30))
		}
		if err := l.Stop(); err != nil {
			t.Errorf("peers: stop LIO: %v", err)
		}
	})
	return l
}

// StartLIOProcess boots a VM running LIO for callers without a testing.TB,
// such as benchmarks. The caller must call Stop. If the calling process dies
// first, the VM stops within about a second.
func StartLIOProcess(opts LIOOptions) (*LIO, error) {
	if _, err := exec.LookPath(lioQemu); err != nil {
		return nil, fmt.Errorf("peers: %s not found (apt package %s): %w", lioQemu, lioQemuPackage, err)
	}
	dir, err := os.MkdirTemp("", "lio-vm.")
	if err != nil {
		return nil, fmt.Errorf("peers: start LIO: %w", err)
	}
	l, err := lioStart(opts, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("peers: start LIO: %w", err)
	}
	l.removeDir = true
	return l, nil
}

// lioStart runs the script with its working files in dir and parses what it
// prints.
func lioStart(opts LIOOptions, dir string) (*LIO, error) {
	root, err := lioRepoRoot()
	if err != nil {
		return nil, err
	}
	env, err := lioEnv(opts, dir)
	if err != nil {
		return nil, err
	}
	wait := opts.Wait
	if wait <= 0 {
		wait = lioDefaultWait
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait+lioPrepareTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, lioScript))
	cmd.Dir = root
	cmd.Env = append(lioHostEnv(), env...)
	cmd.Env = append(cmd.Env, "LIO_WAIT="+strconv.Itoa(int((wait+time.Second-1)/time.Second)))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// On the deadline the script gets SIGTERM, on which it kills qemu.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.Output()
	if err != nil {
		lioKillPidFile(filepath.Join(dir, "qemu.pid"))
		return nil, fmt.Errorf("%s: %w\n%s", lioScript, err, lioLastLines(stderr.String(), 40))
	}
	l, err := lioParse(out)
	if err != nil {
		lioKillPidFile(filepath.Join(dir, "qemu.pid"))
		return nil, fmt.Errorf("%s: %w\n%s", lioScript, err, lioLastLines(stderr.String(), 40))
	}
	// A pidfd taken now, while qemu is surely alive, keeps later signals
	// from reaching another process that reused the pid.
	if l.proc, err = os.FindProcess(l.Pid); err != nil || !lioIsQemu(l.Pid) {
		lioKillPidFile(filepath.Join(dir, "qemu.pid"))
		return nil, fmt.Errorf("qemu (pid %d) is not running", l.Pid)
	}
	return l, nil
}

// lioHostEnv is the environment without the script's LIO_ variables, so
// that a shell's leftovers do not change the target; those that describe the
// machine rather than the target (cache, accelerator, memory, debug) stay.
func lioHostEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LIO_CACHE", "LIO_ACCEL", "LIO_MEM", "LIO_DEBUG":
		default:
			if strings.HasPrefix(k, "LIO_") {
				continue
			}
		}
		env = append(env, kv)
	}
	return env
}

// lioEnv turns opts into the script's environment variables.
func lioEnv(opts LIOOptions, dir string) ([]string, error) {
	env := []string{
		"LIO_PORT=auto", "LIO_CTL_PORT=auto", "LIO_RUN=" + dir,
		"LIO_OWNER_PID=" + strconv.Itoa(os.Getpid()),
	}
	add := func(k, v string) {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	if opts.LUNs < 0 || opts.LUNSizeMB < 0 || opts.MaxConnections < 0 {
		return nil, fmt.Errorf("negative LUNs, LUNSizeMB or MaxConnections in %+v", opts)
	}
	if (opts.CHAPUser == "") != (opts.CHAPSecret == "") || (opts.MutualUser == "") != (opts.MutualSecret == "") {
		return nil, errors.New("CHAP user and secret go together")
	}
	if opts.MutualUser != "" && opts.CHAPUser == "" {
		return nil, errors.New("mutual CHAP needs one-way CHAP too")
	}
	add("LIO_IQN", opts.IQN)
	if opts.LUNs > 0 {
		add("LIO_LUNS", strconv.Itoa(opts.LUNs))
	}
	if opts.LUNSizeMB > 0 {
		add("LIO_LUN_MB", strconv.Itoa(opts.LUNSizeMB))
	}
	add("LIO_CHAP_USER", opts.CHAPUser)
	add("LIO_CHAP_PASS", opts.CHAPSecret)
	add("LIO_MUTUAL_USER", opts.MutualUser)
	add("LIO_MUTUAL_PASS", opts.MutualSecret)
	if opts.MaxConnections > 0 {
		add("LIO_MAX_CONNECTIONS", strconv.Itoa(opts.MaxConnections))
	}
	for _, kv := range []struct {
		name string
		m    map[string]string
	}{{"LIO_PARAMS", opts.Params}, {"LIO_ATTRIBS", opts.Attribs}} {
		var list []string
		for _, k := range slices.Sorted(maps.Keys(kv.m)) {
			v := kv.m[k]
			// /init splits the list on white space and writes v to a file named k
			if k == "" || strings.ContainsAny(k, " \t\n/=") || v == "" || strings.ContainsAny(v, " \t\n") {
				return nil, fmt.Errorf("%s: bad entry %q=%q", kv.name, k, v)
			}
			list = append(list, k+"="+v)
		}
		add(kv.name, strings.Join(list, " "))
	}
	add("LIO_CACHE", opts.Cache)
	return env, nil
}

// lioParse reads the script's KEY=value lines.
func lioParse(out []byte) (*LIO, error) {
	kv := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			return nil, fmt.Errorf("unexpected output line %q", sc.Text())
		}
		kv[k] = v
	}
	l := &LIO{IQN: kv["LIO_IQN"], Console: kv["LIO_CONSOLE"], RunDir: kv["LIO_RUN"], Kernel: kv["LIO_KVER"]}
	for _, f := range []struct {
		key string
		p   *int
	}{{"LIO_PORT", &l.Port}, {"LIO_CTL_PORT", &l.CtlPort}, {"LIO_QEMU_PID", &l.Pid}} {
		n, err := strconv.Atoi(kv[f.key])
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad or missing %s in output %q", f.key, out)
		}
		*f.p = n
	}
	if l.IQN == "" {
		return nil, fmt.Errorf("no LIO_IQN in output %q", out)
	}
	if s, err := strconv.ParseFloat(kv["LIO_READY_S"], 64); err == nil {
		l.Ready = time.Duration(s*1000) * time.Millisecond
	}
	l.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Port))
	return l, nil
}

// Stop kills qemu and waits until it is gone; it also removes the VM's
// directory when StartLIOProcess made it. Stop is idempotent.
func (l *LIO) Stop() error {
	if l.proc == nil {
		return nil
	}
	err := lioKill(l.proc, l.Pid)
	if err == nil {
		l.proc.Release()
		l.proc = nil
		if l.removeDir {
			err = os.RemoveAll(l.RunDir)
		}
	}
	return err
}

// lioKill sends SIGTERM, then SIGKILL, to qemu and waits for it to exit. qemu
// is not our child (the script started it), so "gone" is seen by polling.
func lioKill(p *os.Process, pid int) error {
	for _, sig := range []os.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := p.Signal(sig); errors.Is(err, os.ErrProcessDone) {
			return nil
		}
		for deadline := time.Now().Add(lioStopTimeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if lioExited(p, pid) {
				return nil
			}
		}
	}
	return fmt.Errorf("peers: qemu (pid %d) still running after SIGKILL", pid)
}

// lioExited reports whether the process has exited, counting a zombie that
// its new parent has not reaped yet as exited.
func lioExited(p *os.Process, pid int) bool {
	return errors.Is(p.Signal(syscall.Signal(0)), os.ErrProcessDone) || lioGone(pid)
}

// lioGone reports whether pid has no process or a zombie one.
func lioGone(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// state is the field after "(comm)", which may itself hold ") "
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] == 'Z' || stat[i+2] == 'X'
	}
	return false
}

// lioIsQemu reports whether pid is a running qemu, so that a pid read from a
// file is not signalled after it has been reused.
func lioIsQemu(pid int) bool {
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return err == nil && strings.HasPrefix(string(comm), "qemu-system")
}

// lioKillPidFile stops the qemu whose pid the script wrote, for when the
// script failed or was killed after starting it.
func lioKillPidFile(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return
	}
	if p, err := os.FindProcess(pid); err == nil && lioIsQemu(pid) {
		_ = lioKill(p, pid)
		p.Release()
	}
}

// Exec runs shell commands in the guest (busybox sh as root, stderr merged
// into stdout) and returns their output. The error is non-nil when the last
// command exits non-zero, or when the guest does not answer within 30 s.
// The configfs tree of the target is under /sys/kernel/config/target.
func (l *LIO) Exec(cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), lioExecTimeout)
	defer cancel()
	return l.ExecContext(ctx, cmd)
}

// ExecContext is Exec with the deadline taken from ctx (30 s when ctx has
// none).
func (l *LIO) ExecContext(ctx context.Context, cmd string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, lioExecTimeout)
		defer cancel()
	}
	for backoff := 20 * time.Millisecond; ; backoff *= 2 {
		out, ran, err := l.execOnce(ctx, cmd)
		// qemu's port forward accepts before the guest's shell does: when
		// the guest's nc is not listening (just after boot, or between two
		// connections) the connection is reset before any byte comes
		// back, and the command never ran. Only then is it tried again.
		if ran || err == nil || ctx.Err() != nil {
			return out, err
		}
		select {
		case <-ctx.Done():
			return out, err
		case <-time.After(min(backoff, time.Second)):
		}
	}
}

// execOnce runs cmd over one control-shell connection; ran is false when the
// connection ended before any byte came back.
func (l *LIO) execOnce(ctx context.Context, cmd string) (out string, ran bool, err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(l.CtlPort)))
	if err != nil {
		return "", false, fmt.Errorf("peers: LIO control shell: %w", err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return "", false, fmt.Errorf("peers: LIO control shell: %w", err)
	}
	// The commands run in a subshell, so that an "exit" in them still lets
	// the status line through; a new line ends a last line without one.
	script := "exec 2>&1\n(\n" + cmd + "\n)\nprintf '" + strings.ReplaceAll(lioRCMarker, "\x01", `\001`) + "%d\\n' $?\nexit\n"
	if _, err := io.WriteString(conn, script); err != nil {
		return "", false, fmt.Errorf("peers: LIO control shell: %w", err)
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		return string(b), len(b) > 0, fmt.Errorf("peers: LIO control shell: %w", err)
	}
	if len(b) == 0 {
		return "", false, fmt.Errorf("peers: LIO control shell: closed before any output")
	}
	out, err = lioSplitStatus(string(b), cmd)
	return out, true, err
}

// lioSplitStatus separates a command's output from the status line that
// ExecContext appends.
func lioSplitStatus(s, cmd string) (string, error) {
	i := strings.LastIndex(s, lioRCMarker)
	if i < 0 {
		return s, fmt.Errorf("peers: LIO control shell: no exit status in %q", s)
	}
	out, rc := s[:i], strings.TrimSpace(s[i+len(lioRCMarker):])
	if rc != "0" {
		return out, fmt.Errorf("peers: LIO: %q exited with status %s: %s", cmd, rc, strings.TrimSpace(out))
	}
	return out, nil
}

// Sessions returns the initiator names of the sessions logged in to the
// target, as LIO itself sees them (tpgt_1/dynamic_sessions), one entry per
// session.
func (l *LIO) Sessions() ([]string, error) {
	out, err := l.Exec("cat '/sys/kernel/config/target/iscsi/" + l.IQN + "/tpgt_1/dynamic_sessions'")
	if err != nil {
		return nil, err
	}
	return lioLines(out), nil
}

// lioLines returns the non-empty lines of s, trimmed.
func lioLines(s string) []string {
	var lines []string
	for line := range strings.Lines(s) {
		// configfs lists such as dynamic_sessions end with a NUL byte
		if line = strings.Trim(line, " \t\r\n\x00"); line != "" {
			lines = append(lines, line)
		}
	}
	return lines
}

// lioRepoRoot finds the module root by walking up from the working directory
// (a package directory under go test) to go.mod.
func lioRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, lioScript)); err != nil {
				return "", fmt.Errorf("module root %s: %w", dir, err)
			}
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// lioRequire skips the test when bin is missing, or fails it when CI=true.
func lioRequire(t testing.TB, bin, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(bin); err == nil {
		return
	}
	msg := fmt.Sprintf("%s not on PATH; install it with `apt-get install --no-install-recommends %s`", bin, pkg)
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true: %s", msg)
	}
	t.Skipf("skipping: %s", msg)
}

// lioTail returns the last n lines of the file at path.
func lioTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return lioLastLines(string(b), n)
}

// lioLastLines returns the last n lines of s.
func lioLastLines(s string, n int) string {
	lines := strings.SplitAfter(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}

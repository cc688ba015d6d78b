package peers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TgtdMallocEnv is the glibc malloc tuning tgtd runs with; without it large
// reads page-fault on every I/O.
var TgtdMallocEnv = []string{
	"MALLOC_MMAP_THRESHOLD_=33554432",
	"MALLOC_TRIM_THRESHOLD_=1073741824",
	"MALLOC_TOP_PAD_=67108864",
}

// TgtdOptions configures StartTgtdProcess.
type TgtdOptions struct {
	// Port is the portal port on 127.0.0.1; zero picks a free port and
	// retries with another on a bind failure.
	Port int
	// CtlPort is tgtd's control port (the N of tgtadm -C N); zero picks
	// one at random and retries on a collision with another tgtd.
	CtlPort int
	// Dir holds the log and the backing files made by AddDiskTarget; empty
	// means a new temporary directory that Stop removes.
	Dir string
	// Env is added to the environment after TgtdMallocEnv.
	Env []string
	// StartTimeout bounds the wait for readiness; zero means
	// DefaultStartTimeout.
	StartTimeout time.Duration
}

// Tgtd is a running tgtd (the Linux SCSI target framework daemon) serving
// iSCSI on a loopback portal.
type Tgtd struct {
	// Addr is the portal, "127.0.0.1:PORT".
	Addr string
	// Port is the portal port.
	Port int
	// CtlPort is the control port given to tgtd and tgtadm with -C.
	CtlPort int
	// Pid is the tgtd process id.
	Pid int
	// Dir is the directory holding the log and backing files.
	Dir string
	// LogPath is the file receiving tgtd's stdout and stderr.
	LogPath string

	d        *daemon
	ownDir   bool
	stopOnce sync.Once
	stopErr  error
}

// errRetry marks a start failure that another port may fix.
var errRetry = errors.New("retryable")

// StartTgtdProcess starts tgtd in the foreground and waits until its control
// socket answers and it listens on its portal.
func StartTgtdProcess(opts TgtdOptions) (*Tgtd, error) {
	dir, ownDir := opts.Dir, false
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "tgtd-"); err != nil {
			return nil, fmt.Errorf("peers: tgtd dir: %w", err)
		}
		ownDir = true
	}
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = DefaultStartTimeout
	}
	attempts := 1
	if opts.Port == 0 || opts.CtlPort == 0 {
		attempts = 5
	}
	logPath := filepath.Join(dir, "tgtd.log")
	var lastErr error
	for i := 0; i < attempts; i++ {
		port, ctl := opts.Port, opts.CtlPort
		if port == 0 {
			p, err := PickFreePort()
			if err != nil {
				lastErr = err
				continue
			}
			port = p
		}
		if ctl == 0 {
			ctl = randomControlPort()
		}
		s, err := tryStartTgtd(dir, logPath, port, ctl, opts.Env, timeout)
		if err == nil {
			s.ownDir = ownDir
			return s, nil
		}
		lastErr = err
		if !errors.Is(err, errRetry) {
			break
		}
	}
	if ownDir {
		lastErr = fmt.Errorf("%w\n--- tgtd log tail ---\n%s", lastErr, TailFile(logPath, 30))
		os.RemoveAll(dir)
	}
	return nil, lastErr
}

func tryStartTgtd(dir, logPath string, port, ctl int, env []string, timeout time.Duration) (*Tgtd, error) {
	argv := []string{"tgtd", "-f", "--iscsi", fmt.Sprintf("portal=%s:%d", Loopback, port), "-C", strconv.Itoa(ctl)}
	if err := appendLine(logPath, fmt.Sprintf("--- peers: starting %s", strings.Join(argv, " "))); err != nil {
		return nil, err
	}
	logStart := fileSize(logPath)
	d, err := startDaemon(logPath, append(append([]string{}, TgtdMallocEnv...), env...), argv...)
	if err != nil {
		return nil, err
	}
	s := &Tgtd{
		Addr:    net.JoinHostPort(Loopback, strconv.Itoa(port)),
		Port:    port,
		CtlPort: ctl,
		Pid:     d.pid(),
		Dir:     dir,
		LogPath: logPath,
		d:       d,
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err = pollUntil(ctx, 20*time.Millisecond, func() (bool, error) {
		log := readFrom(logPath, logStart)
		if strings.Contains(log, "failed to create/bind to portal") {
			// tgtd then falls back to listening on every address on
			// port 3260: never leave it running.
			d.kill()
			return false, fmt.Errorf("peers: tgtd could not bind %s: %w", s.Addr, errRetry)
		}
		if d.exited() {
			if strings.Contains(log, "another tgtd is using") {
				return false, fmt.Errorf("peers: tgtd control port %d in use: %w", ctl, errRetry)
			}
			return false, fmt.Errorf("peers: tgtd exited during start: %v", d.waitErr)
		}
		if _, err := s.tgtadmTimeout(2*time.Second, "--op", "show", "--mode", "system"); err != nil {
			return false, nil
		}
		return listeningBy(s.Pid, port)
	})
	if err != nil {
		d.kill()
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("peers: tgtd not ready on %s (control port %d) within %v", s.Addr, ctl, timeout)
		}
		return nil, err
	}
	return s, nil
}

// StartTgtd starts a tgtd for the test on a free loopback port and stops it
// when the test ends. It skips or fails the test as Require does when tgt is
// not installed.
func StartTgtd(t testing.TB) *Tgtd {
	t.Helper()
	return StartTgtdWith(t, TgtdOptions{})
}

// StartTgtdWith is StartTgtd with options; an empty opts.Dir means a
// directory from t.TempDir.
func StartTgtdWith(t testing.TB, opts TgtdOptions) *Tgtd {
	t.Helper()
	Require(t, "tgtd", "tgtadm")
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	s, err := StartTgtdProcess(opts)
	if err != nil {
		t.Fatalf("%v\n--- tgtd log tail (%s) ---\n%s", err, filepath.Join(opts.Dir, "tgtd.log"),
			TailFile(filepath.Join(opts.Dir, "tgtd.log"), 30))
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop tgtd: %v\n--- tgtd log tail ---\n%s", err, s.LogTail(30))
		}
	})
	return s
}

// Stop deletes every target (dropping their sessions), asks tgtd to exit,
// kills it by pid if it has not exited within a few seconds, and reaps it.
// It returns an error if tgtd had already exited on its own with a failure
// status. Stop may be called more than once.
func (s *Tgtd) Stop() error {
	s.stopOnce.Do(func() { s.stopErr = s.stop() })
	return s.stopErr
}

func (s *Tgtd) stop() error {
	var err error
	if s.d.exited() {
		if s.d.waitErr != nil {
			err = fmt.Errorf("peers: tgtd pid %d exited before Stop: %w", s.Pid, s.d.waitErr)
		}
	} else {
		// tgtd ignores SIGTERM and refuses to stop while targets exist.
		if targets, terr := s.Targets(); terr == nil {
			for _, tg := range targets {
				s.tgtadmTimeout(5*time.Second, "--lld", "iscsi", "--op", "delete", "--mode", "target",
					"--tid", strconv.Itoa(tg.Tid), "--force")
			}
		}
		s.tgtadmTimeout(5*time.Second, "--op", "delete", "--mode", "system")
		if !s.d.waitExit(5 * time.Second) {
			err = s.d.kill()
		}
	}
	if s.ownDir {
		os.RemoveAll(s.Dir)
	}
	return err
}

// Exited reports whether the tgtd process has exited.
func (s *Tgtd) Exited() bool { return s.d.exited() }

// LogTail returns the last n lines of tgtd's output.
func (s *Tgtd) LogTail(n int) string { return TailFile(s.LogPath, n) }

// Tgtadm runs tgtadm against this tgtd with the given arguments (after
// -C CTLPORT) and returns its output.
func (s *Tgtd) Tgtadm(args ...string) (string, error) {
	return s.tgtadmTimeout(30*time.Second, args...)
}

func (s *Tgtd) tgtadmTimeout(timeout time.Duration, args ...string) (string, error) {
	return runCmd(context.Background(), timeout, "tgtadm", append([]string{"-C", strconv.Itoa(s.CtlPort)}, args...)...)
}

func (s *Tgtd) iscsiAdm(args ...string) error {
	_, err := s.Tgtadm(append([]string{"--lld", "iscsi"}, args...)...)
	return err
}

// AddTarget creates target tid named iqn.
func (s *Tgtd) AddTarget(tid int, iqn string) error {
	return s.iscsiAdm("--op", "new", "--mode", "target", "--tid", strconv.Itoa(tid), "-T", iqn)
}

// AddLUN adds logical unit lun to target tid, backed by the file at path.
func (s *Tgtd) AddLUN(tid, lun int, path string) error {
	return s.iscsiAdm("--op", "new", "--mode", "logicalunit", "--tid", strconv.Itoa(tid),
		"--lun", strconv.Itoa(lun), "-b", path)
}

// BindAll lets every initiator log in to target tid.
func (s *Tgtd) BindAll(tid int) error {
	return s.iscsiAdm("--op", "bind", "--mode", "target", "--tid", strconv.Itoa(tid), "-I", "ALL")
}

// AddAccount creates a CHAP account.
func (s *Tgtd) AddAccount(user, pass string) error {
	return s.iscsiAdm("--op", "new", "--mode", "account", "--user", user, "--password", pass)
}

// BindAccount requires CHAP account user on target tid. With outgoing set
// the account is instead the one the target answers with in mutual CHAP.
func (s *Tgtd) BindAccount(tid int, user string, outgoing bool) error {
	args := []string{"--op", "bind", "--mode", "account", "--tid", strconv.Itoa(tid), "--user", user}
	if outgoing {
		args = append(args, "--outgoing")
	}
	return s.iscsiAdm(args...)
}

// SetParam sets the iSCSI parameter name of target tid to value for
// sessions that log in afterwards.
func (s *Tgtd) SetParam(tid int, name, value string) error {
	return s.iscsiAdm("--op", "update", "--mode", "target", "--tid", strconv.Itoa(tid),
		"--name", name, "--value", value)
}

// Params returns the iSCSI parameters of target tid as tgtd will offer
// them.
func (s *Tgtd) Params(tid int) (map[string]string, error) {
	out, err := s.Tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target", "--tid", strconv.Itoa(tid))
	if err != nil {
		return nil, err
	}
	return ParseParams(out), nil
}

// Targets returns every target with its sessions, LUNs, accounts and ACLs.
func (s *Tgtd) Targets() ([]Target, error) {
	out, err := s.Tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target")
	if err != nil {
		return nil, err
	}
	return ParseTargets(out)
}

// Sessions returns tgtd's I_T nexuses (its sessions) on target tid.
func (s *Tgtd) Sessions(tid int) ([]Nexus, error) {
	targets, err := s.Targets()
	if err != nil {
		return nil, err
	}
	for _, tg := range targets {
		if tg.Tid == tid {
			return tg.Nexuses, nil
		}
	}
	return nil, fmt.Errorf("peers: tgtd has no target %d", tid)
}

// AddDiskTarget creates target tid named iqn with LUN 1 backed by a new
// sparse file of size bytes in s.Dir, open to every initiator, and returns
// the backing file's path.
func (s *Tgtd) AddDiskTarget(tid int, iqn string, size int64) (string, error) {
	path, err := CreateSparseFile(s.Dir, fmt.Sprintf("tid%d-lun1.img", tid), size)
	if err != nil {
		return "", err
	}
	if err := s.AddTarget(tid, iqn); err != nil {
		return "", err
	}
	if err := s.AddLUN(tid, 1, path); err != nil {
		return "", err
	}
	if err := s.BindAll(tid); err != nil {
		return "", err
	}
	return path, nil
}

// CreateSparseFile creates (or truncates) dir/name as a sparse file of size
// bytes and returns its path.
func CreateSparseFile(dir, name string, size int64) (string, error) {
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("peers: create backing file: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return "", fmt.Errorf("peers: size backing file: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("peers: close backing file: %w", err)
	}
	return path, nil
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("peers: open log: %w", err)
	}
	_, err = fmt.Fprintln(f, line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the contents of path from offset on.
func readFrom(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return ""
	}
	return string(b[offset:])
}

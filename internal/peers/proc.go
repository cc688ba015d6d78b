package peers

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// daemon is a peer process started in the foreground, with its output in a
// log file and a goroutine waiting for it to exit.
type daemon struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	done    chan struct{} // closed once cmd.Wait has returned
	waitErr error         // valid after done is closed
}

// startDaemon starts argv with its stdout and stderr appended to logPath and
// env added to the current environment.
func startDaemon(logPath string, env []string, argv ...string) (*daemon, error) {
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("peers: open log: %w", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.SysProcAttr = daemonSysProcAttr()
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("peers: start %s: %w", argv[0], err)
	}
	d := &daemon{name: argv[0], cmd: cmd, logPath: logPath, logFile: lf, done: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		lf.Close()
		close(d.done)
	}()
	return d, nil
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// exited reports whether the process has exited.
func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// waitExit waits up to timeout for the process to exit and reports whether
// it did.
func (d *daemon) waitExit(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-d.done:
		return true
	case <-t.C:
		return false
	}
}

// kill sends SIGKILL to the process by pid and waits for it to be reaped.
func (d *daemon) kill() error {
	if d.exited() {
		return nil
	}
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("peers: kill %s pid %d: %w", d.name, d.pid(), err)
	}
	if !d.waitExit(10 * time.Second) {
		return fmt.Errorf("peers: %s pid %d did not exit after SIGKILL", d.name, d.pid())
	}
	return nil
}

// signalThenKill sends sig, waits up to grace for an exit, then kills.
// It reports whether SIGKILL was needed.
func (d *daemon) signalThenKill(sig os.Signal, grace time.Duration) (killed bool, err error) {
	if d.exited() {
		return false, nil
	}
	if err := d.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return false, fmt.Errorf("peers: signal %s pid %d: %w", d.name, d.pid(), err)
	}
	if d.waitExit(grace) {
		return false, nil
	}
	return true, d.kill()
}

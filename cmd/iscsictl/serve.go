package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/goiscsi/iscsi/agent"
	"github.com/goiscsi/iscsi/logout"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// runServe runs the agent until SIGTERM or SIGINT, then logs out of every
// target at once; a second signal cuts the logouts short. The exit status
// is 0 only if every session logged out.
func defServe(a *app, fs *pflag.FlagSet) runFunc {
	socket := fs.String("socket", "", "the Unix `socket` to listen on, mode 0600 (default $"+envSocket+", else "+defaultSocket()+")")
	stateDir := fs.String("state-dir", defaultStateDir(), "`directory` of the node records")
	name := fs.String("initiator-name", "", "the initiator's iSCSI `name` (default: InitiatorName= of "+etcInitiatorName+", else one derived once from /etc/machine-id and kept in --state-dir)")
	metricsAddr := fs.String("metrics-listen", "", "serve Prometheus metrics at http://`ADDR`/metrics (e.g. 127.0.0.1:9560); off by default")
	tcpAddr := fs.String("listen-tcp", "", "also serve the API on TCP `ADDR`; needs --token-file")
	tokenFile := fs.String("token-file", "", "bearer token `file` every request on --listen-tcp must present")
	logoutTimeout := fs.Duration("logout-timeout", 15*time.Second, "at shutdown, wait this long for each Logout Response")
	return func(ctx context.Context, _ []string) error {
		return runServe(ctx, a, *socket, *stateDir, *name, *metricsAddr, *tcpAddr, *tokenFile, *logoutTimeout)
	}
}

func runServe(ctx context.Context, a *app, socketv, stateDirv, namev, metricsAddrv, tcpAddrv, tokenFilev string, logoutTimeoutv time.Duration) error {
	socket, stateDir, name, metricsAddr, tcpAddr, tokenFile, logoutTimeout := &socketv, &stateDirv, &namev, &metricsAddrv, &tcpAddrv, &tokenFilev, &logoutTimeoutv
	// A second SIGTERM or SIGINT cuts the logouts short; the first is the
	// one that ends ctx (main's signal.NotifyContext keeps catching them,
	// so neither kills the process). Registered first thing, so that this
	// channel sees the first signal too.
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sigc)
	if *logoutTimeout <= 0 {
		return invalidArgf("--logout-timeout must be positive")
	}
	var token string
	switch {
	case *tcpAddr != "" && *tokenFile == "":
		return invalidArgf("--listen-tcp needs --token-file: the API is never served on TCP without authentication")
	case *tokenFile != "" && *tcpAddr == "":
		return invalidArgf("--token-file is for --listen-tcp")
	case *tokenFile != "":
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return invalidArgf("--token-file: %v", err)
		}
		token = strings.TrimSpace(string(b))
		if len(token) < 16 {
			return invalidArgf("--token-file %s: the token must be at least 16 characters", *tokenFile)
		}
	}
	sock := *socket
	if sock == "" {
		sock = os.Getenv(envSocket)
	}
	if sock == "" {
		sock = defaultSocket()
	}

	if *name == "" {
		n, err := hostInitiatorName(*stateDir)
		if err != nil {
			return err
		}
		*name = n
	}
	ag, err := agent.New(agent.Config{InitiatorName: *name, StateDir: *stateDir, Logger: a.log,
		ShutdownLogout: logout.Options{Timeout: *logoutTimeout}})
	if err != nil {
		return fmt.Errorf("starting the agent: %w", err)
	}
	// From here on Shutdown closes what New opened.
	hurry := make(chan struct{})
	started := false
	defer func() {
		if !started {
			ag.Shutdown(hurry)
		}
	}()
	ln, err := agent.ListenUnix(sock)
	if err != nil {
		return fmt.Errorf("--socket: %w", err)
	}
	if err := ag.Serve(ln, false, ""); err != nil {
		ln.Close()
		return err
	}
	if *tcpAddr != "" {
		tln, err := net.Listen("tcp", *tcpAddr)
		if err != nil {
			return fmt.Errorf("--listen-tcp: %w", err)
		}
		if err := ag.Serve(tln, true, token); err != nil {
			tln.Close()
			return err
		}
	}
	if *metricsAddr != "" {
		mln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		if err := ag.ServeMetrics(mln); err != nil {
			mln.Close()
			return err
		}
	}
	if _, err := ag.Start(); err != nil {
		return fmt.Errorf("reading the node records: %w", err)
	}
	started = true

	done := make(chan struct{})
	fwd := make(chan struct{})
	go func() {
		defer close(fwd)
		n := 0
		for {
			select {
			case <-sigc:
				if n++; n == 2 {
					close(hurry)
					return
				}
			case <-done:
				return
			}
		}
	}()
	defer func() {
		close(done)
		<-fwd
	}()

	a.log.Info("agent ready", zap.String("socket", sock), zap.String("stateDir", *stateDir), zap.String("initiator", ag.Initiator().Name()))
	// One line on stdout says the socket is up, for whoever waits for it.
	fmt.Fprintf(a.stdout, "iscsictl agent: API v1 on %s, node records in %s\n", sock, *stateDir)
	<-ctx.Done()
	a.log.Info("shutting down: logging out of every target")
	res := ag.Shutdown(hurry)
	total, ok := 0, 0
	for _, l := range res.Logouts {
		total += len(l.Sessions)
		ok += l.LoggedOut
		a.log.Info("logout at shutdown", zap.String("target", l.Target), zap.String("outcome", l.Outcome), zap.String("hresult", l.HRESULT))
	}
	fmt.Fprintf(a.stdout, "iscsictl agent: stopped; %d of %d sessions logged out\n", ok, total)
	switch {
	case res.AllLoggedOut:
		return nil
	case ok == 0:
		return &exitErr{code: exitFailed, msg: fmt.Sprintf("shutdown: none of %d sessions logged out", total)}
	}
	return &exitErr{code: exitIncomplete, msg: fmt.Sprintf("shutdown: %d of %d sessions did not log out", total-ok, total)}
}

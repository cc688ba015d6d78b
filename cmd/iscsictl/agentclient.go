package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// envSocket names the agent's socket for every command.
const envSocket = "ISCSICTL_SOCKET"

// defaultSocket is where the agent listens unless told otherwise:
// $XDG_RUNTIME_DIR/iscsictl.sock, else /run/iscsictl.sock.
func defaultSocket() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "iscsictl.sock")
	}
	return "/run/iscsictl.sock"
}

// defaultStateDir is where the agent keeps its node records:
// $XDG_STATE_HOME/iscsictl, else /var/lib/iscsictl.
func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "iscsictl")
	}
	return "/var/lib/iscsictl"
}

// agentFlags are the flags that choose between the agent and an
// in-process run.
type agentFlags struct {
	socket  string
	noAgent bool
}

// agentFlags adds --socket and --no-agent to a command that can go through
// the agent.
func (a *app) agentFlags(fs *pflag.FlagSet) *agentFlags {
	af := &agentFlags{}
	fs.StringVar(&af.socket, "socket", "", "the agent's Unix `socket` (default $"+envSocket+", else "+defaultSocket()+"); without a reachable agent the command runs in-process")
	fs.BoolVar(&af.noAgent, "no-agent", false, "run in this process even if an agent is reachable")
	return af
}

// agentClient talks to the agent's API on its Unix socket.
type agentClient struct {
	socket string
	http   *http.Client
	info   api.VersionInfo
}

// client returns the agent's client, or nil to run in-process: with
// --no-agent, or when no agent answers at $ISCSICTL_SOCKET or the default
// socket. An agent named by --socket must answer.
func (af *agentFlags) client(ctx context.Context, a *app) (*agentClient, error) {
	if af == nil || af.noAgent {
		return nil, nil
	}
	sock, explicit := af.socket, af.socket != ""
	if sock == "" {
		sock = os.Getenv(envSocket)
	}
	if sock == "" {
		sock = defaultSocket()
	}
	c := newAgentClient(sock)
	err := c.get(ctx, "/v1/version", &c.info)
	if err == nil {
		a.log.Debug("using the agent", zap.String("socket", sock), zap.Int("pid", c.info.PID))
		return c, nil
	}
	if explicit {
		return nil, &exitErr{code: exitError, msg: fmt.Sprintf("no agent at --socket %s: %v", sock, unwrapDial(err))}
	}
	a.log.Debug("no agent reachable: running in-process", zap.String("socket", sock), zap.Error(err))
	return nil, nil
}

// clientFor is client for logout: --session needs the agent.
func (af *agentFlags) clientFor(ctx context.Context, a *app, tsih string) (*agentClient, error) {
	if tsih != "" {
		return af.mustClient(ctx, a)
	}
	return af.client(ctx, a)
}

// agentOr returns err if the agent could not be used, else f's error.
func agentOr(err error, f func() error) error {
	if err != nil {
		return err
	}
	return f()
}

// mustClient returns the agent's client for a command that needs one.
func (af *agentFlags) mustClient(ctx context.Context, a *app) (*agentClient, error) {
	c, err := af.client(ctx, a)
	if err != nil || c != nil {
		return c, err
	}
	sock := af.socket
	if sock == "" {
		sock = os.Getenv(envSocket)
	}
	if sock == "" {
		sock = defaultSocket()
	}
	if af.noAgent {
		return nil, invalidArgf("this command needs the agent: leave out --no-agent")
	}
	return nil, &exitErr{code: exitError, msg: fmt.Sprintf("no agent reachable at %s: start one with `iscsictl serve`, or name its socket with --socket or $%s", sock, envSocket)}
}

// unwrapDial shortens the error of a socket nobody listens on.
func unwrapDial(err error) string {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return "no such socket"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused (a stale socket?)"
	case errors.Is(err, syscall.EACCES):
		return "permission denied (the socket is the agent's user's, mode 0600)"
	}
	return err.Error()
}

func newAgentClient(sock string) *agentClient {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}
	return &agentClient{socket: sock, http: &http.Client{Transport: tr}}
}

// errResponse is any answer of the API: an error, a logout result, or
// both.
type errResponse struct {
	Error  *api.Error  `json:"error"`
	Logout *api.Logout `json:"logout"`
}

// agentError is an error answer of the agent.
type agentError struct {
	status int
	e      api.Error
}

func (e *agentError) Error() string { return e.e.Message }

// do sends a request and decodes a 2xx answer into out. An error answer
// is an *agentError, unless it carries a logout result, which goes into
// out (a logout's outcome is decided from the result).
func (c *agentClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://iscsictl"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading the agent's answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		var er errResponse
		if err := json.Unmarshal(b, &er); err != nil || er.Error == nil {
			return fmt.Errorf("the agent answered %s: %.200q", resp.Status, b)
		}
		if er.Logout == nil {
			return &agentError{status: resp.StatusCode, e: *er.Error}
		}
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the agent's answer to %s %s: %w", method, path, err)
	}
	return nil
}

func (c *agentClient) get(ctx context.Context, path string, out any) error {
	// Finding the agent must not hang on a socket that accepts but never
	// answers.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.do(ctx, http.MethodGet, path, nil, out)
}

// cliError turns an agent's error answer into the error the command would
// have returned in-process, so that the message and exit status are the
// same: a refused login gets its target's status, a malformed argument
// exit status 5.
func cliError(err error, tf *targetFlags, chap bool) error {
	var ae *agentError
	if !errors.As(err, &ae) {
		return fmt.Errorf("talking to the agent: %w", err)
	}
	e := ae.e
	step := &stepError{step: e.Step, chap: chap}
	if tf != nil {
		step.portal, step.target = tf.portal, tf.target
	}
	switch {
	case e.ExitCode == exitInvalidArg:
		return invalidArgf("%s", e.Message)
	case e.LoginStatus != nil:
		step.err = &session.LoginError{Status: pdu.LoginStatus(*e.LoginStatus)}
		return step
	case e.NegotiationReason != "":
		step.err = &session.NegotiationError{Key: e.NegotiationKey, Reason: e.NegotiationReason}
		return step
	}
	code := e.ExitCode
	if code == 0 {
		code = exitError
	}
	msg := e.Message
	if e.Step != "" {
		msg = e.Step + atPortal(step) + ": " + msg
	}
	return &exitErr{code: code, msg: msg}
}

// agentLogin logs in through the agent: the sessions stay with it. It
// prints what login prints in-process, without the logout.
func (a *app) agentLogin(ctx context.Context, c *agentClient, fs *pflag.FlagSet, tf *targetFlags, n, m int, hold time.Duration) error {
	if hold > 0 || a.pcapPath != "" {
		return invalidArgf("--hold and --pcap are for a login in this process; the agent at %s keeps its sessions until a logout: add --no-agent", c.socket)
	}
	if err := tf.check(targetAuto); err != nil {
		return err
	}
	if fs.Changed("initiator-name") {
		if name, err := initiator.NormalizeName(tf.initiatorName); err == nil && name != c.info.InitiatorName {
			return invalidArgf("--initiator-name %s: the agent at %s logs in as %s", tf.initiatorName, c.socket, c.info.InitiatorName)
		}
	}
	chap, err := tf.chap()
	if err != nil {
		return err
	}
	req := api.LoginRequest{Portal: tf.portal, Target: tf.target, Sessions: n, Connections: m,
		HeaderDigest: tf.headerDigest != digestNone, DataDigest: tf.dataDigest != digestNone, LoginTimeoutMs: tf.loginTimeout.Milliseconds(),
		ErrorRecoveryLevel: &tf.erl, Time2Retain: tf.time2retain}
	if chap != nil {
		// The secrets go to the agent on its 0600 socket; the user name
		// defaults to the agent's initiator name, not this command's.
		req.Auth = &api.Auth{User: tf.chapUser, Secret: chap.Secret, TargetUser: chap.TargetUser, TargetSecret: chap.TargetSecret,
			Algorithms: chap.Algorithms, AllowShortSecret: chap.AllowShortSecrets}
	}
	var resp api.LoginResponse
	if err := c.do(ctx, http.MethodPost, "/v1/sessions", req, &resp); err != nil {
		return cliError(err, tf, chap != nil)
	}
	for _, s := range resp.Sessions {
		if err := tf.requiredDigests(s.Params["HeaderDigest"] == "CRC32C", s.Params["DataDigest"] == "CRC32C"); err != nil {
			// The agent keeps what it logged in to: it goes, as an
			// in-process login's session would.
			var out api.LogoutResponse
			q := url.Values{"target": {resp.Target}}
			if lerr := c.do(ctx, http.MethodDelete, "/v1/sessions/"+strconv.Itoa(int(s.TSIH))+"?"+q.Encode(), nil, &out); lerr != nil {
				a.log.Warn("logging out of a session without the required digests", zap.Error(lerr))
			}
			return err
		}
	}
	infos := make([]sessionInfo, len(resp.Sessions))
	conns := 0
	for i, s := range resp.Sessions {
		infos[i] = sessionInfo{TSIH: hexTSIH(s.TSIH), ISID: isidFrom12(s.ISID), Portal: s.Portal, Connections: cidList(s.Connections), Params: s.Params}
		conns += len(s.Connections)
	}
	if a.json {
		a.printJSON(map[string]any{"command": "login", "target": resp.Target, "portal": resp.Portal, "sessions": infos, "agent": c.socket})
		return nil
	}
	a.printf("Logged in to %s at %s: %d session(s), %d connection(s), held by the agent at %s\n\n",
		safe(resp.Target), safe(resp.Portal), len(infos), conns, c.socket)
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tTSIH\tISID\tPORTAL\tCIDS")
	for i, s := range infos {
		fmt.Fprintf(tw, "%d\t0x%04x\t%s\t%s\t%v\n", i+1, s.TSIH, s.ISID, safe(s.Portal), s.Connections)
	}
	tw.Flush()
	if len(infos) > 0 {
		printParams(a, infos[0].Params)
	}
	a.printf("\nThe sessions stay until `iscsictl logout --target %s`.\n", safe(resp.Target))
	return nil
}

// printParams prints negotiated parameters in login's order.
func printParams(a *app, params map[string]any) {
	a.printf("\nNegotiated parameters:\n")
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	for _, k := range paramOrder {
		if v, ok := params[k]; ok {
			fmt.Fprintf(tw, "  %s\t%s\n", k, safe(fmt.Sprint(v)))
		}
	}
	tw.Flush()
}

// agentLogout logs out through the agent: of one session (tsih not empty)
// or of every session of the target (LogoutFromTarget). The result is
// printed as an in-process logout prints it, with the same exit status.
func (a *app) agentLogout(ctx context.Context, c *agentClient, fs *pflag.FlagSet, tf *targetFlags, lo *logoutOptions, tsih string) error {
	for _, name := range []string{"portal", "sessions", "conns", "io", "io-write", "io-lun", "io-size", "io-depth", "pcap"} {
		if fs.Changed(name) {
			return invalidArgf("--%s opens sessions in this process to log out of; the agent at %s logs out of its own: add --no-agent", name, c.socket)
		}
	}
	opts, err := lo.options()
	if err != nil {
		return err
	}
	req := api.LogoutRequest{Strategy: opts.Strategy.String(), DrainMs: opts.DrainTimeout.Milliseconds(),
		TimeoutMs: opts.Timeout.Milliseconds(), Force: opts.Force}
	if tf.target != "" {
		if _, err := initiator.NormalizeName(tf.target); err != nil {
			return err
		}
	}
	var resp api.LogoutResponse
	if tsih != "" {
		v, err := api.ParseTSIH(tsih)
		if err != nil {
			return invalidArgf("--session %q: want a TSIH from 1 to 65535 (decimal, or hex with 0x)", tsih)
		}
		q := url.Values{"strategy": {req.Strategy}, "drainMs": {strconv.FormatInt(req.DrainMs, 10)},
			"timeoutMs": {strconv.FormatInt(req.TimeoutMs, 10)}, "force": {strconv.FormatBool(req.Force)}}
		if tf.target != "" {
			q.Set("target", tf.target)
		}
		err = c.do(ctx, http.MethodDelete, "/v1/sessions/"+strconv.Itoa(int(v))+"?"+q.Encode(), nil, &resp)
		if err != nil {
			return cliError(err, tf, false)
		}
	} else {
		if tf.target == "" {
			return invalidArgf("--target or --session is required")
		}
		err := c.do(ctx, http.MethodPost, "/v1/targets/"+url.PathEscape(tf.target)+"/logout", req, &resp)
		if err != nil {
			return cliError(err, tf, false)
		}
	}
	res, strategy, err := resp.Logout.Result()
	if err != nil {
		return fmt.Errorf("the agent's answer: %w", err)
	}
	return a.reportLogout(res, strategy, nil)
}

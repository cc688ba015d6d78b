// Package agent is the long-lived process behind `iscsictl serve`: one
// initiator.Initiator whose sessions outlive the commands that asked for
// them, node records (package nodes) it logs in to at start, a versioned
// JSON-over-HTTP control API (docs/API.md) and Prometheus metrics.
//
// The life of an Agent: New opens the node store and the initiator, Start
// logs in to the automatic nodes, Serve answers the API on listeners, and
// Shutdown logs out of every target at once and closes everything.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/agent/metrics"
	"github.com/goiscsi/iscsi/agent/nodes"
	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/session"
	"go.uber.org/zap"
)

// Config configures an Agent.
type Config struct {
	// InitiatorName is the iSCSI name the agent logs in with; required.
	InitiatorName string
	// StateDir holds the node store; required.
	StateDir string
	// Logger gets the agent's log lines; nil logs nothing.
	Logger *zap.Logger
	// ShutdownLogout are the options of the logouts at Shutdown; a zero
	// Timeout means 15 s.
	ShutdownLogout logout.Options
	// LockWait is how long New waits for another process to release the
	// node store; 0 means 1 s.
	LockWait time.Duration
}

// Agent holds sessions for other processes.
type Agent struct {
	cfg     Config
	log     *zap.Logger
	in      *initiator.Initiator
	store   *nodes.Store
	metrics *metrics.Metrics
	started time.Time

	// loginCtx ends when Shutdown begins: logins in progress stop.
	loginCtx    context.Context
	cancelLogin context.CancelFunc
	// hurryCtx ends when Shutdown is cut short: logouts in progress are
	// canceled.
	hurryCtx    context.Context
	cancelHurry context.CancelFunc

	mu      sync.Mutex // guards the fields below
	closing bool
	tracked map[*session.Session]*tracked
	servers []*http.Server
	// wg counts the work Shutdown waits for before its own logouts: the
	// automatic logins and the API requests that log in or out.
	wg sync.WaitGroup
	// srvWG counts the servers' Serve goroutines.
	srvWG sync.WaitGroup
}

// tracked is what the agent knows of a session beyond the session itself.
type tracked struct {
	node       string
	loggedInAt time.Time
	conns      *connSet
}

// New opens the node store in cfg.StateDir and returns an Agent with no
// session. It fails with an error wrapping nodes.ErrLocked when another
// agent runs on the same state directory.
func New(cfg Config) (*Agent, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("agent: no state directory")
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.LockWait == 0 {
		cfg.LockWait = time.Second
	}
	if cfg.ShutdownLogout.Timeout == 0 {
		cfg.ShutdownLogout.Timeout = 15 * time.Second
	}
	a := &Agent{cfg: cfg, log: log, started: time.Now(), tracked: map[*session.Session]*tracked{}}
	in, err := initiator.New(initiator.Config{Name: cfg.InitiatorName, Logger: log, Dial: dialTracked})
	if err != nil {
		return nil, err
	}
	store, err := nodes.Open(cfg.StateDir, cfg.LockWait)
	if err != nil {
		in.Close()
		return nil, err
	}
	a.in, a.store = in, store
	a.metrics = metrics.New(a.snapshot)
	a.loginCtx, a.cancelLogin = context.WithCancel(context.Background())
	a.hurryCtx, a.cancelHurry = context.WithCancel(context.Background())
	return a, nil
}

// Initiator returns the agent's initiator.
func (a *Agent) Initiator() *initiator.Initiator { return a.in }

// Metrics returns the agent's metrics.
func (a *Agent) Metrics() *metrics.Metrics { return a.metrics }

// Store returns the node store.
func (a *Agent) Store() *nodes.Store { return a.store }

// begin registers work Shutdown waits for; false once Shutdown has begun.
func (a *Agent) begin() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing {
		return false
	}
	a.wg.Add(1)
	return true
}

// Start logs in to every node whose startup is automatic, in the
// background, and returns a channel closed when those logins have ended
// (each logged in or failed; failures are logged and counted).
func (a *Agent) Start() (<-chan struct{}, error) {
	ns, err := a.store.List()
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	if !a.begin() {
		close(done)
		return done, nil
	}
	go func() {
		defer a.wg.Done()
		defer close(done)
		var wg sync.WaitGroup
		for _, n := range ns {
			if n.Startup != nodes.Automatic {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := a.loginNode(a.loginCtx, n); err != nil {
					a.log.Warn("automatic login failed", zap.String("target", n.Target), zap.String("error", api.TrimPrefixes(err.Error())))
				} else {
					a.log.Info("automatic login", zap.String("target", n.Target))
				}
			}()
		}
		wg.Wait()
	}()
	return done, nil
}

// loginNode logs in to a node at the first of its portals that takes the
// login.
func (a *Agent) loginNode(ctx context.Context, n nodes.Node) ([]*session.Session, error) {
	req := api.LoginRequest{Target: n.Target, Sessions: n.Options.Sessions, Connections: n.Options.Connections,
		HeaderDigest: n.Options.HeaderDigest, DataDigest: n.Options.DataDigest, LoginTimeoutMs: n.Options.LoginTimeoutMs,
		ErrorRecoveryLevel: n.Options.ErrorRecoveryLevel, Time2Retain: n.Options.Time2Retain}
	if au := n.Auth; au != nil {
		req.Auth = &api.Auth{User: au.User, SecretFile: au.SecretFile, SecretEnv: au.SecretEnv, TargetUser: au.TargetUser,
			TargetSecretFile: au.TargetSecretFile, TargetSecretEnv: au.TargetSecretEnv, Algorithms: au.Algorithms,
			AllowShortSecret: au.AllowShortSecret}
	}
	var errs []error
	for _, p := range n.Portals {
		req.Portal = p
		ss, err := a.login(ctx, req, n.Target)
		if err == nil {
			return ss, nil
		}
		errs = append(errs, fmt.Errorf("portal %s: %w", p, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// stepError says what the agent was doing when err happened.
type stepError struct {
	step, portal, target string
	err                  error
}

func (e *stepError) Error() string {
	return fmt.Sprintf("%s (portal %s, target %s): %v", e.step, e.portal, e.target, e.err)
}
func (e *stepError) Unwrap() error { return e.err }

// login opens req.Sessions sessions of req.Connections connections in
// parallel. If one fails, those that did log in are logged out again (only
// them: other sessions to the target are someone else's) and the first
// error is returned.
func (a *Agent) login(ctx context.Context, req api.LoginRequest, node string) ([]*session.Session, error) {
	n, m := max(req.Sessions, 1), max(req.Connections, 1)
	if req.Sessions < 0 || req.Connections < 0 || req.LoginTimeoutMs < 0 || n > 64 || m > 64 {
		return nil, fmt.Errorf("%w: sessions and connections from 1 to 64, loginTimeoutMs not negative", api.ErrInvalid)
	}
	if err := nodes.CheckRecovery(req.ErrorRecoveryLevel, req.Time2Retain); err != nil {
		return nil, fmt.Errorf("%w: %w", api.ErrInvalid, err)
	}
	portal, err := nodes.NormalizePortal(req.Portal)
	if err != nil {
		return nil, err
	}
	chap, err := resolveAuth(req.Auth, a.in.Name())
	if err != nil {
		return nil, err
	}
	timeout := time.Duration(req.LoginTimeoutMs) * time.Millisecond
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	params := session.DefaultParams()
	params.HeaderDigest, params.DataDigest = req.HeaderDigest, req.DataDigest
	params.MaxConnections = max(params.MaxConnections, m)
	if req.ErrorRecoveryLevel != nil {
		params.ErrorRecoveryLevel = *req.ErrorRecoveryLevel
	}
	params.DefaultTime2Retain = req.Time2Retain
	target := req.Target
	if target == "" {
		dctx, cancel := context.WithTimeout(ctx, timeout)
		ts, err := a.in.Discover(dctx, portal, chap)
		cancel()
		if err != nil {
			return nil, &stepError{"discovering targets", portal, "", err}
		}
		if len(ts) != 1 {
			names := make([]string, len(ts))
			for i, t := range ts {
				names[i] = t.Name
			}
			return nil, fmt.Errorf("%w: portal %s offers %d targets %v; choose one", api.ErrInvalid, portal, len(ts), names)
		}
		target = ts[0].Name
	}
	if _, err := initiator.NormalizeName(target); err != nil {
		return nil, err
	}
	out := make([]*session.Session, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			set := &connSet{}
			lctx, cancel := context.WithTimeout(withConnSet(ctx, set), timeout*time.Duration(m))
			defer cancel()
			start := time.Now()
			s, err := a.in.Login(lctx, portal, target, initiator.LoginOptions{Connections: m, CHAP: chap, Params: &params})
			a.metrics.Login(err == nil, time.Since(start))
			if err != nil {
				errs[i] = &stepError{"logging in", portal, target, err}
				return
			}
			a.mu.Lock()
			a.tracked[s] = &tracked{node: node, loggedInAt: time.Now().UTC(), conns: set}
			a.mu.Unlock()
			out[i] = s
		}()
	}
	wg.Wait()
	var first error
	var opened []*session.Session
	for i := range n {
		if errs[i] != nil && first == nil {
			first = errs[i]
		}
		if out[i] != nil {
			opened = append(opened, out[i])
		}
	}
	if first == nil {
		return out, nil
	}
	for _, s := range opened {
		op := logout.Start(target, []logout.Session{logout.Adapt(s)}, logout.Options{Timeout: 5 * time.Second, Force: true, Logger: a.log})
		<-op.Done() // bounded by the Timeout above
	}
	return nil, first
}

// resolveAuth returns the CHAP configuration of au, reading the secrets it
// refers to; nil for no authentication. Errors never quote a secret.
func resolveAuth(au *api.Auth, initiatorName string) (*session.CHAP, error) {
	if au == nil {
		return nil, nil
	}
	secret, err := secretOf(au.Secret, au.SecretFile, au.SecretEnv, "secret")
	if err != nil {
		return nil, err
	}
	tsecret, err := secretOf(au.TargetSecret, au.TargetSecretFile, au.TargetSecretEnv, "target secret")
	if err != nil {
		return nil, err
	}
	switch {
	case secret == "" && (au.User != "" || tsecret != "" || au.TargetUser != ""):
		return nil, fmt.Errorf("%w: CHAP without a secret", api.ErrInvalid)
	case secret == "":
		return nil, nil
	case au.TargetUser != "" && tsecret == "":
		return nil, fmt.Errorf("%w: mutual CHAP without a target secret", api.ErrInvalid)
	}
	user := au.User
	if user == "" {
		user = initiatorName
	}
	return &session.CHAP{User: user, Secret: secret, TargetUser: au.TargetUser, TargetSecret: tsecret,
		AllowShortSecrets: au.AllowShortSecret, Algorithms: au.Algorithms}, nil
}

// secretOf returns the secret given inline, in a file or in an environment
// variable of the agent (at most one).
func secretOf(inline, file, env, what string) (string, error) {
	given := 0
	for _, s := range []string{inline, file, env} {
		if s != "" {
			given++
		}
	}
	if given > 1 {
		return "", fmt.Errorf("%w: the CHAP %s comes from one of inline, file or environment, not several", api.ErrInvalid, what)
	}
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%w: reading the CHAP %s file: %v", api.ErrInvalid, what, err)
		}
		s := trimNewline(string(b))
		if s == "" {
			return "", fmt.Errorf("%w: the CHAP %s file %s is empty", api.ErrInvalid, what, file)
		}
		return s, nil
	case env != "":
		s := os.Getenv(env)
		if s == "" {
			return "", fmt.Errorf("%w: the CHAP %s variable $%s is empty or unset in the agent's environment", api.ErrInvalid, what, env)
		}
		return s, nil
	}
	return inline, nil
}

func trimNewline(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	return s
}

// sessions returns the sessions the agent holds, by target, and forgets
// what it tracked of sessions that left the initiator's table.
func (a *Agent) sessions() []api.Session {
	out := []api.Session{}
	live := map[*session.Session]bool{}
	for _, t := range sortedTargets(a.in.Targets()) {
		for _, s := range a.in.Sessions(t) {
			live[s] = true
			out = append(out, a.describe(t, s))
		}
	}
	a.mu.Lock()
	for s := range a.tracked {
		if !live[s] {
			delete(a.tracked, s)
		}
	}
	a.mu.Unlock()
	return out
}

// describe returns the API's view of a session.
func (a *Agent) describe(target string, s *session.Session) api.Session {
	isid := s.ISID()
	out := api.Session{Target: target, Portal: s.Portal(), TSIH: s.TSIH(), ISID: fmt.Sprintf("%012x", isid[:]),
		Connections: []uint16{}, Params: api.Params(s.Params())}
	conns := s.Conns()
	active := 0
	for _, c := range conns {
		out.Connections = append(out.Connections, c.CID())
		if c.Active() {
			active++
		}
	}
	switch st := s.State(); {
	case st == session.SessionRecovering || st == session.SessionFailed || st == session.SessionLost:
		out.State = st.String() // "recovering", "failed", "lost"
	case len(conns) == 0:
		out.State = "ended"
	case active == len(conns):
		out.State = "logged in"
	default:
		out.State = "logging out"
	}
	a.mu.Lock()
	t := a.tracked[s]
	a.mu.Unlock()
	if t != nil {
		out.Node = t.node
		out.LoggedInAt = t.loggedInAt.Format(time.RFC3339Nano)
		out.Counters = t.conns.counters()
	}
	out.Recovery = api.NewRecovery(s)
	return out
}

// snapshot is what the metrics export at a scrape.
func (a *Agent) snapshot() metrics.Snapshot {
	snap := metrics.Snapshot{SessionsByState: map[string]int{}, Measured: tcpInfoSupported}
	for _, s := range a.sessions() {
		snap.SessionsByState[s.State]++
		snap.BytesSent += s.Counters.BytesSent
		snap.BytesReceived += s.Counters.BytesReceived
	}
	return snap
}

// findSession returns the session of TSIH tsih, of target when not empty.
// More than one match is an error naming the targets.
func (a *Agent) findSession(tsih uint16, target string) (string, *session.Session, error) {
	if target != "" {
		key, err := initiator.NormalizeName(target)
		if err != nil {
			return "", nil, err
		}
		target = key
	}
	var foundT string
	var found *session.Session
	var targets []string
	for _, t := range sortedTargets(a.in.Targets()) {
		if target != "" && t != target {
			continue
		}
		for _, s := range a.in.Sessions(t) {
			if s.TSIH() == tsih {
				foundT, found = t, s
				targets = append(targets, t)
			}
		}
	}
	if len(targets) > 1 {
		return "", nil, fmt.Errorf("%w: TSIH 0x%04x is a session of %d targets %v: name the target", errAmbiguous, tsih, len(targets), targets)
	}
	return foundT, found, nil
}

var errAmbiguous = errors.New("ambiguous")

// logoutSession logs one session out through the logout engine. The
// initiator has no per-session logout: the engine's result is the same
// shape as a target's, and the initiator drops the session from its table
// once its connections are gone.
func (a *Agent) logoutSession(ctx context.Context, target string, s *session.Session, opts logout.Options) logout.Result {
	if opts.Logger == nil {
		opts.Logger = a.log
	}
	op := logout.Start(target, []logout.Session{logout.Adapt(s)}, opts)
	return a.waitOp(ctx, op, "session", opts)
}

// logoutTarget runs LogoutFromTarget on target.
func (a *Agent) logoutTarget(ctx context.Context, target string, opts logout.Options, scope string) (logout.Result, error) {
	op, err := a.in.LogoutFromTargetWith(target, opts)
	if err != nil {
		return logout.Result{}, err
	}
	return a.waitOp(ctx, op, scope, opts), nil
}

// waitOp waits for op; ctx ending or Shutdown being cut short cancels it
// (connections still waiting are then reported canceled). The wait ends
// because op always completes once canceled.
func (a *Agent) waitOp(ctx context.Context, op *logout.Operation, scope string, opts logout.Options) logout.Result {
	select {
	case <-op.Done():
	case <-ctx.Done():
		op.Cancel()
	case <-a.hurryCtx.Done():
		op.Cancel()
	}
	res, _ := op.Wait(context.Background())
	a.metrics.Logout(scope, res.Outcome.String(), api.HRESULT(res.HRESULT()), res.Duration)
	a.log.Info("logout", zap.String("scope", scope), zap.String("target", res.Target), zap.Stringer("outcome", res.Outcome),
		zap.Int("sessions", len(res.Sessions)), zap.Int("loggedOut", res.LoggedOut()))
	return res
}

// ShutdownResult is what Shutdown did.
type ShutdownResult struct {
	// Logouts are the results of the logouts of each target.
	Logouts []api.Logout
	// AllLoggedOut is true when every session logged out (or there was
	// none).
	AllLoggedOut bool
}

// Shutdown stops the API (requests running get a moment to finish; a login
// in progress is stopped), logs out of every target concurrently with
// LogoutFromTarget, then closes the initiator and the node store. Closing
// hurry cuts the logouts short: they are canceled and the sessions closed
// locally. Nothing the agent started runs once it returns.
func (a *Agent) Shutdown(hurry <-chan struct{}) ShutdownResult {
	a.mu.Lock()
	a.closing = true
	servers := a.servers
	a.mu.Unlock()
	a.cancelLogin()
	stopHurry := make(chan struct{})
	var hw sync.WaitGroup
	hw.Add(1)
	go func() {
		defer hw.Done()
		select {
		case <-hurry:
			a.log.Warn("shutdown cut short: canceling the logouts")
			a.cancelHurry()
		case <-stopHurry:
		}
	}()
	defer func() {
		close(stopHurry)
		hw.Wait()
		a.cancelHurry()
	}()

	// Requests get 2 s to answer; then their connections are closed, which
	// cancels a logout they wait for.
	var sw sync.WaitGroup
	for _, srv := range servers {
		sw.Add(1)
		go func() {
			defer sw.Done()
			ctx, cancel := context.WithTimeout(a.hurryCtx, 2*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				srv.Close()
			}
		}()
	}
	sw.Wait()
	a.srvWG.Wait()
	a.wg.Wait()

	targets := sortedTargets(a.in.Targets())
	results := make([]logout.Result, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := a.logoutTarget(context.Background(), t, a.cfg.ShutdownLogout, "shutdown")
			if err != nil {
				res = logout.Result{Target: t, Outcome: logout.Failed}
			}
			results[i] = res
		}()
	}
	wg.Wait()
	out := ShutdownResult{Logouts: []api.Logout{}, AllLoggedOut: true}
	for i := range results {
		out.Logouts = append(out.Logouts, api.NewLogout(&results[i], a.cfg.ShutdownLogout.Strategy))
		if results[i].Outcome != logout.Success && results[i].Outcome != logout.SessionNotFound {
			out.AllLoggedOut = false
		}
	}
	a.in.Close()
	if err := a.store.Close(); err != nil {
		a.log.Warn("closing the node store", zap.Error(err))
	}
	return out
}

// version returns the agent's build and identity.
func (a *Agent) version() api.VersionInfo {
	v := api.VersionInfo{APIVersion: api.Version, Module: "github.com/goiscsi/iscsi", ModuleVersion: "(devel)",
		InitiatorName: a.in.Name(), StateDir: a.cfg.StateDir, PID: os.Getpid(), StartedAt: a.started.UTC().Format(time.RFC3339)}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v.GoVersion = bi.GoVersion
		if bi.Main.Path != "" {
			v.Module = bi.Main.Path
			v.ModuleVersion = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v.Revision = s.Value
			}
		}
	}
	return v
}

// Serve answers the API on ln until Shutdown. On a listener other than the
// Unix socket (remote), token must be non-empty: every request then needs
// "Authorization: Bearer TOKEN", and secrets inline in a request are
// refused.
func (a *Agent) Serve(ln net.Listener, remote bool, token string) error {
	if remote && token == "" {
		return errors.New("agent: a TCP listener needs a token")
	}
	return a.serve(ln, a.handler(remote, token), "API server")
}

// ServeMetrics serves the Prometheus metrics on ln (GET /metrics) until
// Shutdown.
func (a *Agent) ServeMetrics(ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.metrics.Handler())
	return a.serve(ln, mux, "metrics server")
}

// serve runs an HTTP server of h on ln until Shutdown, which closes it and
// waits for it (srvWG); none starts once Shutdown has begun.
func (a *Agent) serve(ln net.Listener, h http.Handler, what string) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: zap.NewStdLog(a.log)}
	a.mu.Lock()
	if a.closing {
		a.mu.Unlock()
		return errors.New("agent: shutting down")
	}
	a.servers = append(a.servers, srv)
	a.srvWG.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.srvWG.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Warn(what, zap.Error(err))
		}
	}()
	return nil
}

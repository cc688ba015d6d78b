// Package initiator is the one API a user of this library starts from: it
// logs in to targets, keeps every session in a table per target, and logs
// out of all sessions to a target at once.
//
// Sessions and connections come from package session; the logout of a whole
// target is an operation of package logout.
package initiator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
	"go.uber.org/zap"
)

// Config configures an Initiator.
type Config struct {
	// Name is the initiator's iSCSI name; required.
	Name  string
	Alias string
	// Logger gets the initiator's log lines; nil logs nothing.
	Logger *zap.Logger
	// Params are the operational parameters offered by default; nil means
	// session.DefaultParams().
	Params *session.Params
	// Logout are the default options of LogoutFromTarget.
	Logout logout.Options
	// Dial and WrapConn, when set, open and wrap every connection (tests,
	// packet capture).
	Dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	WrapConn func(net.Conn) net.Conn
	// NOPInterval and NOPTimeout set the keepalive; see session.Config.
	NOPInterval, NOPTimeout time.Duration
	// OnAsync receives every asynchronous message of every session. A
	// target's logout request (event 1) is then handled by the initiator:
	// the session is logged out through the logout engine and leaves the
	// table.
	OnAsync func(s *session.Session, ev session.AsyncEvent)
	// MaxAsyncLogoutWait clamps the time a target gives to log out (async
	// event 1, Parameter3 seconds, up to 18 hours); 0 means
	// session.MaxAsyncLogoutWait (60 s). Commands running get half of the
	// clamped time to finish, then the Logout Request goes out and waits
	// for its response at most Logout.Timeout (15 s when 0): see
	// logout.AsyncOptions.
	MaxAsyncLogoutWait time.Duration
	// OnTargetLogout, if set, gets the result of each logout a target asked
	// for (async event 1), with the same detail as a caller's logout
	// (Result.Requested is true, Result.Parameter3 what the target gave),
	// once the session has left the table. It runs on the logout's
	// goroutine.
	OnTargetLogout func(*logout.Result)
	// Recovery: see recovery.go (ReplacementTimeout, NoRecovery,
	// NoRetryWrites, OnState).
	RecoveryConfig
}

// LoginOptions are per-login settings.
type LoginOptions struct {
	// Connections is how many connections the session gets (MC/S);
	// 0 means 1.
	Connections int
	CHAP        *session.CHAP
	// Params override Config.Params for this session.
	Params *session.Params
	// ISID, when non-zero, is the session's ISID.
	ISID [6]byte
	// LoginTimeout, when positive, bounds the login of each connection
	// (the leading one, then each one added), within ctx's own deadline.
	LoginTimeout time.Duration
	// OnFewerConnections, when set, is told when the target allows fewer
	// connections per session (its MaxConnections) than Connections asks:
	// the session then has allowed connections, not an error. Without it
	// a warning is logged.
	OnFewerConnections func(allowed, asked int)
}

// Initiator logs in to targets and keeps their sessions.
type Initiator struct {
	cfg  Config
	name string
	log  *zap.Logger

	mu       sync.Mutex
	sessions map[string][]*session.Session // by normalized target name
	ops      map[string]*logout.Operation  // logouts running, by target
	closed   bool
	wg       sync.WaitGroup
}

// New returns an Initiator; the name must be a valid iSCSI name. The
// initiator goes by the name's normal form (NormalizeName).
func New(cfg Config) (*Initiator, error) {
	name, err := NormalizeName(cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("initiator name: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Initiator{cfg: cfg, name: name, log: log,
		sessions: map[string][]*session.Session{}, ops: map[string]*logout.Operation{}}, nil
}

// Name returns the initiator's iSCSI name, in its normal form.
func (in *Initiator) Name() string { return in.name }

func (in *Initiator) sessionConfig(portal, target string, o LoginOptions) session.Config {
	params := in.cfg.Params
	if o.Params != nil {
		params = o.Params
	}
	return session.Config{
		InitiatorName: in.name, InitiatorAlias: in.cfg.Alias, TargetName: target, Portal: portal,
		ISID: o.ISID, CHAP: o.CHAP, Params: params, Dial: in.cfg.Dial, WrapConn: in.cfg.WrapConn,
		NOPInterval: in.cfg.NOPInterval, NOPTimeout: in.cfg.NOPTimeout, Logger: in.log,
		OnAsync: in.onAsync, Recovery: in.recovery(), OnState: in.onState,
	}
}

// Login opens a session to target at portal (host:port, or host alone
// for port 3260) with o.Connections connections and adds it to the table. The target's name
// goes on the wire in its normal form (NormalizeName).
func (in *Initiator) Login(ctx context.Context, portal, target string, o LoginOptions) (*session.Session, error) {
	key, err := NormalizeName(target)
	if err != nil {
		return nil, err
	}
	if portal == "" {
		return nil, fmt.Errorf("%w: empty portal", ErrInvalidArg)
	}
	in.mu.Lock()
	closed := in.closed
	in.mu.Unlock()
	if closed {
		return nil, errors.New("iscsi: initiator closed")
	}
	portal = withDefaultPort(portal)
	s, err := withLoginTimeout(ctx, o.LoginTimeout, func(ctx context.Context) (*session.Session, error) {
		return session.Login(ctx, in.sessionConfig(portal, key, o))
	})
	if err != nil {
		return nil, invalidArg(err)
	}
	conns := fewerConnections(o.Connections, s.Params().MaxConnections)
	if conns < o.Connections {
		if o.OnFewerConnections != nil {
			o.OnFewerConnections(conns, o.Connections)
		} else {
			in.log.Warn("the target allows fewer connections per session than asked: logged in with what it allows",
				zap.String("target", key), zap.Int("allowed", conns), zap.Int("asked", o.Connections))
		}
	}
	for i := 1; i < conns; i++ {
		if _, err := withLoginTimeout(ctx, o.LoginTimeout, s.AddConnection); err != nil {
			s.Logout(ctx, session.LogoutOptions{Timeout: 5 * time.Second})
			return nil, fmt.Errorf("iscsi: adding connection %d of %d: %w", i+1, conns, err)
		}
	}
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		s.Close()
		return nil, errors.New("iscsi: initiator closed")
	}
	in.sessions[key] = append(in.sessions[key], s)
	in.mu.Unlock()
	return s, nil
}

// Discover asks the target portal (host:port, or host alone for port
// 3260) for its targets (SendTargets=All).
func (in *Initiator) Discover(ctx context.Context, portal string, chap *session.CHAP) ([]session.DiscoveredTarget, error) {
	if portal == "" {
		return nil, fmt.Errorf("%w: empty portal", ErrInvalidArg)
	}
	targets, err := session.Discover(ctx, in.sessionConfig(withDefaultPort(portal), "", LoginOptions{CHAP: chap}))
	return targets, invalidArg(err)
}

// invalidArg makes a session's refusal of its configuration (parameters
// it does not implement) an ErrInvalidArg too.
func invalidArg(err error) error {
	if errors.Is(err, session.ErrInvalidConfig) {
		return fmt.Errorf("%w: %w", ErrInvalidArg, err)
	}
	return err
}

// Sessions returns the sessions to target in the table: up, recovering,
// failed or lost (Session.State says which). A session leaves the table only
// when a logout logged it out, Force or Close closed it, or its user closed
// it (Session.Close).
func (in *Initiator) Sessions(target string) []*session.Session {
	key, err := NormalizeName(target)
	if err != nil {
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.liveLocked(key)
}

// liveLocked drops sessions that were logged out or closed and returns the
// rest: a session that lost its connections (recovering, failed, lost)
// stays until a logout or the user removes it. A dropped session's
// goroutines end by themselves, as its connections have; it is closed
// outside the lock, which a reader goroutine may be waiting for.
func (in *Initiator) liveLocked(key string) []*session.Session {
	var live []*session.Session
	for _, s := range in.sessions[key] {
		if st := s.State(); st != session.SessionLoggedOut && st != session.SessionClosed {
			live = append(live, s)
		} else {
			in.wg.Add(1)
			go func() {
				defer in.wg.Done()
				s.Close()
			}()
		}
	}
	if len(live) == 0 {
		delete(in.sessions, key)
	} else {
		in.sessions[key] = live
	}
	return append([]*session.Session(nil), live...)
}

// Targets returns the names of the targets with sessions in the table.
func (in *Initiator) Targets() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []string
	for k := range in.sessions {
		if len(in.liveLocked(k)) > 0 {
			out = append(out, k)
		}
	}
	return out
}

// LogoutFromTarget logs out of every session to target, on every
// connection at once, with the Config's logout options. See
// LogoutFromTargetWith.
func (in *Initiator) LogoutFromTarget(target string) (*logout.Operation, error) {
	return in.LogoutFromTargetWith(target, in.cfg.Logout)
}

// LogoutFromTargetWith logs out of every session to target and returns at
// once with the operation. A malformed name returns an error wrapping
// ErrInvalidArg and starts nothing; with no session the operation is
// complete with logout.SessionNotFound. A call while a logout of the same
// target runs shares that operation (logout.Operation.Join): it gets that
// operation itself, or, if opts bound the wait more tightly (Timeout,
// DrainTimeout), one that follows it and completes at the caller's bound
// with the sessions still logging out reported as not logged out (never
// success for them). Sessions that logged out (or that Force closed) leave
// the table when the operation completes.
//
// A session whose logout the target asked for (async event 1) is logged out
// by an operation of its own; a call meanwhile takes that session in its
// operation too, and waits for its logout at most opts' bound
// (logout.Options.ConnBound), reporting it ConnTimeout if it has not ended.
func (in *Initiator) LogoutFromTargetWith(target string, opts logout.Options) (*logout.Operation, error) {
	key, err := NormalizeName(target)
	if err != nil {
		return nil, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if op, ok := in.ops[key]; ok {
		select {
		case <-op.Done():
			// Finished: its table entry is about to go; start afresh.
		default:
			if opts.Logger == nil {
				opts.Logger = in.log
			}
			v := op.Join(opts)
			if v != op {
				in.wg.Add(1)
				go func() {
					defer in.wg.Done()
					<-v.Done() // at the latest when op ends: Close cancels op
				}()
			}
			return v, nil
		}
	}
	return in.startLocked(key, in.liveLocked(key), opts), nil
}

// startLocked starts a logout of sessions to key and keeps it in ops until
// it completes.
func (in *Initiator) startLocked(key string, sessions []*session.Session, opts logout.Options) *logout.Operation {
	if opts.Logger == nil {
		opts.Logger = in.log
	}
	es := make([]logout.Session, len(sessions))
	for i, s := range sessions {
		es[i] = logout.Adapt(s)
	}
	user := opts.OnComplete
	opts.OnComplete = func(r *logout.Result) {
		in.mu.Lock()
		gone := map[*session.Session]bool{}
		for i := range r.Sessions {
			if r.Sessions[i].LoggedOut || r.Sessions[i].Forced {
				gone[sessions[i]] = true
			}
		}
		var keep []*session.Session
		for _, s := range in.sessions[key] {
			if !gone[s] {
				keep = append(keep, s)
			}
		}
		if len(keep) == 0 {
			delete(in.sessions, key)
		} else {
			in.sessions[key] = keep
		}
		in.mu.Unlock()
		if user != nil {
			user(r)
		}
	}
	op := logout.Start(key, es, opts)
	if len(sessions) == 0 {
		return op
	}
	in.ops[key] = op
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		<-op.Done()
		in.mu.Lock()
		if in.ops[key] == op {
			delete(in.ops, key)
		}
		in.mu.Unlock()
	}()
	return op
}

// onAsync routes a session's asynchronous messages: a target's logout
// request goes through the logout engine, so the session leaves the table.
func (in *Initiator) onAsync(c *session.Conn, ev session.AsyncEvent) bool {
	s := c.Session()
	if in.cfg.OnAsync != nil {
		in.cfg.OnAsync(s, ev)
	}
	if ev.Event != pdu.AsyncLogoutRequest {
		return false
	}
	key, err := NormalizeName(s.TargetName())
	if err != nil {
		return false
	}
	// The target wants the logout within Parameter3 seconds: commands
	// running get half of it, clamped, to finish.
	opts := logout.AsyncOptions(in.cfg.Logout, ev.Parameter3, in.cfg.MaxAsyncLogoutWait)
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return false
	}
	found := false
	for _, x := range in.sessions[key] {
		found = found || x == s
	}
	if !found {
		return false
	}
	opts.OnComplete = in.cfg.OnTargetLogout
	in.startSingle(key, s, opts)
	return true
}

// LogoutSession logs out of the one session to target whose TSIH is tsih,
// with opts, and returns at once with the operation: the same Operation and
// Result as LogoutFromTargetWith, with one session. No such session in the
// table: the operation is complete with logout.SessionNotFound. A malformed
// name returns an error wrapping ErrInvalidArg.
func (in *Initiator) LogoutSession(target string, tsih uint16, opts logout.Options) (*logout.Operation, error) {
	key, s, err := in.findSession(target, tsih)
	if err != nil {
		return nil, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if s == nil {
		return logout.Start(key, nil, opts), nil
	}
	return in.startSingle(key, s, opts), nil
}

// LogoutConnection logs out of one connection, the one with CID cid of the
// session to target whose TSIH is tsih: reason 1 (close the connection),
// or reason 0 if it is the session's last. The result has that session with
// that connection (logout.StartConnection); the session stays in the table
// while it has a connection up. No such session or connection: the
// operation is complete with logout.SessionNotFound.
func (in *Initiator) LogoutConnection(target string, tsih, cid uint16, opts logout.Options) (*logout.Operation, error) {
	key, s, err := in.findSession(target, tsih)
	if err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = in.log
	}
	if s == nil {
		return logout.Start(key, nil, opts), nil
	}
	user := opts.OnComplete
	opts.OnComplete = func(r *logout.Result) {
		in.mu.Lock()
		in.liveLocked(key) // drops the session if that was its last connection
		in.mu.Unlock()
		if user != nil {
			user(r)
		}
	}
	op := logout.StartConnection(key, connOnly{logout.Adapt(s), cid}, cid, opts)
	in.mu.Lock()
	defer in.mu.Unlock()
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		<-op.Done()
	}()
	return op, nil
}

// connOnly is a session whose Close (Force) closes one connection only.
type connOnly struct {
	logout.Session
	cid uint16
}

func (c connOnly) Close() error {
	for _, x := range c.Conns() {
		if x.CID() == c.cid {
			return x.Close()
		}
	}
	return nil
}

// findSession returns the normalized name of target and its session with
// TSIH tsih that has a connection up, nil if there is none.
func (in *Initiator) findSession(target string, tsih uint16) (string, *session.Session, error) {
	key, err := NormalizeName(target)
	if err != nil {
		return "", nil, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, s := range in.liveLocked(key) {
		if s.TSIH() == tsih {
			return key, s, nil
		}
	}
	return key, nil, nil
}

// startSingle logs one session out through the engine, tracked by wg; the
// session leaves the table when it logged out (or Force closed it). Called
// with in.mu held.
func (in *Initiator) startSingle(key string, s *session.Session, opts logout.Options) *logout.Operation {
	if opts.Logger == nil {
		opts.Logger = in.log
	}
	user := opts.OnComplete
	opts.OnComplete = func(r *logout.Result) {
		in.mu.Lock()
		var keep []*session.Session
		for _, x := range in.sessions[key] {
			if x != s || !(r.Sessions[0].LoggedOut || r.Sessions[0].Forced) {
				keep = append(keep, x)
			}
		}
		if len(keep) == 0 {
			delete(in.sessions, key)
		} else {
			in.sessions[key] = keep
		}
		in.mu.Unlock()
		if user != nil {
			user(r)
		}
	}
	op := logout.Start(key, []logout.Session{logout.Adapt(s)}, opts)
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		<-op.Done()
	}()
	return op
}

// Close closes every session locally, without logging out (use
// LogoutFromTarget first for a clean end), and waits for every goroutine the
// initiator started.
func (in *Initiator) Close() error {
	in.mu.Lock()
	in.closed = true
	var all []*session.Session
	for _, ss := range in.sessions {
		all = append(all, ss...)
	}
	in.sessions = map[string][]*session.Session{}
	ops := make([]*logout.Operation, 0, len(in.ops))
	for _, op := range in.ops {
		ops = append(ops, op)
	}
	in.mu.Unlock()
	for _, op := range ops {
		op.Cancel()
	}
	for _, s := range all {
		s.Close()
	}
	in.wg.Wait()
	return nil
}

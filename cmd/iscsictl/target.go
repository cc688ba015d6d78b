package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/session"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// Environment variables holding CHAP secrets.
const (
	envCHAPSecret       = "ISCSI_CHAP_SECRET"
	envCHAPTargetSecret = "ISCSI_CHAP_TARGET_SECRET"
)

// targetFlags are the flags of the commands that talk to a real target.
type targetFlags struct {
	portal        string
	target        string
	initiatorName string
	loginTimeout  time.Duration
	headerDigest  digestMode
	dataDigest    digestMode
	// conns is the most connections a session of the command has; the
	// initiator offers at least that MaxConnections.
	conns int
	// erl and time2retain are the ErrorRecoveryLevel and the
	// DefaultTime2Retain offered (--erl, --time2retain).
	erl, time2retain int

	chapUser             string
	chapSecretFile       string
	chapTargetUser       string
	chapTargetSecretFile string
	chapAllowShort       bool
	chapAlgorithms       string
	allowSecretInURL     bool
	// urlSecret is the CHAP secret of an iscsi:// URL (with
	// --allow-secret-in-url only).
	urlSecret string
	// urlLUN is the LUN of an iscsi:// URL, -1 without one.
	urlLUN int

	fs *pflag.FlagSet
	// replacementTimeout is --replacement-timeout (recovery.go), on the
	// commands that have the flag (hasRecoveryFlag); the others keep the
	// initiator's default.
	replacementTimeout time.Duration
	hasRecoveryFlag    bool
}

func (t *targetFlags) register(fs *pflag.FlagSet, a *app) {
	t.fs, t.urlLUN = fs, -1
	fs.StringVarP(&t.portal, "portal", "p", "", "target portal, `host[:port]` (port 3260 by default), or an iscsi:// URL")
	fs.StringVarP(&t.target, "target", "t", "", "target `name` (iqn., eui. or naa.)")
	fs.StringVar(&t.initiatorName, "initiator-name", "", "the initiator's iSCSI `name` (default: InitiatorName= of "+etcInitiatorName+", else one derived once from /etc/machine-id and kept in the state directory)")
	fs.DurationVar(&t.loginTimeout, "login-timeout", 15*time.Second, "bound on each login")
	digestFlag(fs, &t.headerDigest, "header-digest", "header")
	digestFlag(fs, &t.dataDigest, "data-digest", "data")
	fs.IntVar(&t.erl, "erl", defaultERL, "highest ErrorRecoveryLevel to offer, `0-2` (the target's answer decides)")
	fs.IntVar(&t.time2retain, "time2retain", session.DefaultParams().DefaultTime2Retain, "DefaultTime2Retain to offer, in `seconds` (0-3600); above 0, at ErrorRecoveryLevel 2 a lost connection's commands move to another connection of the session")
	fs.BoolVar(&t.allowSecretInURL, "allow-secret-in-url", false, "accept a CHAP secret in an iscsi://USER%SECRET@... URL (it shows in the process list and the shell's history; prefer --chap-secret-file)")
	fs.StringVar(&t.chapUser, "chap-user", "", "CHAP user `name` (default: the initiator name, when a secret is given)")
	fs.StringVar(&t.chapSecretFile, "chap-secret-file", "", "read the CHAP secret from this `file` (else $"+envCHAPSecret+")")
	fs.StringVar(&t.chapTargetUser, "chap-target-user", "", "mutual CHAP: the `name` the target must give")
	fs.StringVar(&t.chapTargetSecretFile, "chap-target-secret-file", "", "mutual CHAP: read the target's secret from this `file` (else $"+envCHAPTargetSecret+")")
	fs.BoolVar(&t.chapAllowShort, "chap-allow-short-secret", false, "accept CHAP secrets shorter than 12 bytes")
	fs.StringVar(&t.chapAlgorithms, "chap-algorithms", "", "CHAP algorithms to offer, in order: `list` of sha3-256, sha256, sha1, md5 (default all, strongest first)")
	a.pcapFlag(fs)
}

// defaultERL is the ErrorRecoveryLevel offered without --erl: the highest
// the library implements.
var defaultERL = session.DefaultParams().ErrorRecoveryLevel

// targetWant says what a command needs of --target.
type targetWant int

const (
	targetNone     targetWant = iota // discovery: no target
	targetRequired                   // --target must be given
	targetAuto                       // without --target, the portal's only target
)

// check validates the portal and the target name.
func (t *targetFlags) check(want targetWant) error {
	p, err := normalizePortal(t.portal)
	if err != nil {
		return err
	}
	t.portal = p
	if err := t.resolveInitiatorName(); err != nil {
		return err
	}
	if _, err := initiator.NormalizeName(t.initiatorName); err != nil {
		return fmt.Errorf("--initiator-name: %w", err)
	}
	if t.target != "" {
		if _, err := initiator.NormalizeName(t.target); err != nil {
			return fmt.Errorf("--target: %w", err)
		}
	} else if want == targetRequired {
		return invalidArgf("--target is required")
	}
	if t.loginTimeout <= 0 {
		return invalidArgf("--login-timeout must be positive")
	}
	if t.erl < 0 || t.erl > 2 {
		return invalidArgf("--erl %d: ErrorRecoveryLevel is 0, 1 or 2", t.erl)
	}
	if t.time2retain < 0 || t.time2retain > 3600 {
		return invalidArgf("--time2retain %d: DefaultTime2Retain is 0 to 3600 seconds", t.time2retain)
	}
	return nil
}

// resolveInitiatorName sets the host's initiator name when
// --initiator-name is not given.
func (t *targetFlags) resolveInitiatorName() error {
	if t.initiatorName != "" {
		return nil
	}
	name, err := hostInitiatorName(defaultStateDir())
	t.initiatorName = name
	return err
}

// chap returns the CHAP configuration of the flags and the environment, or
// nil for no authentication. Secrets come only from files and the
// environment: an argument would show in the process list and the shell's
// history.
func (t *targetFlags) chap() (*session.CHAP, error) {
	secret, err := readSecret(t.chapSecretFile, envCHAPSecret)
	if err != nil {
		return nil, err
	}
	if t.urlSecret != "" {
		if secret != "" && (t.chapSecretFile != "" || os.Getenv(envCHAPSecret) != "") {
			return nil, invalidArgf("two CHAP secrets: one in the URL, one from --chap-secret-file or $%s", envCHAPSecret)
		}
		secret = t.urlSecret
	}
	tsecret, err := readSecret(t.chapTargetSecretFile, envCHAPTargetSecret)
	if err != nil {
		return nil, err
	}
	switch {
	case secret == "" && (t.chapUser != "" || tsecret != "" || t.chapTargetUser != ""):
		return nil, invalidArgf("CHAP: no secret; put it in a file named by --chap-secret-file or in $%s", envCHAPSecret)
	case secret == "":
		return nil, nil
	case t.chapTargetUser != "" && tsecret == "":
		return nil, invalidArgf("mutual CHAP: no target secret; put it in a file named by --chap-target-secret-file or in $%s", envCHAPTargetSecret)
	}
	algs, err := chapAlgorithms(t.chapAlgorithms)
	if err != nil {
		return nil, err
	}
	user := t.chapUser
	if user == "" {
		user = t.initiatorName
	}
	return &session.CHAP{User: user, Secret: secret, TargetUser: t.chapTargetUser, TargetSecret: tsecret,
		AllowShortSecrets: t.chapAllowShort, Algorithms: algs}, nil
}

// chapAlgorithms parses --chap-algorithms; empty means the library's
// default.
func chapAlgorithms(list string) ([]int, error) {
	if list == "" {
		return nil, nil
	}
	names := map[string]int{"md5": session.CHAPMD5, "sha1": session.CHAPSHA1, "sha-1": session.CHAPSHA1,
		"sha256": session.CHAPSHA256, "sha-256": session.CHAPSHA256, "sha3-256": session.CHAPSHA3256}
	var out []int
	for _, f := range strings.Split(list, ",") {
		a, ok := names[strings.ToLower(strings.TrimSpace(f))]
		if !ok {
			return nil, invalidArgf("--chap-algorithms: unknown algorithm %q (want md5, sha1, sha256, sha3-256)", f)
		}
		out = append(out, a)
	}
	return out, nil
}

// readSecret reads a secret from path, else from the environment variable
// env. A file's trailing newline is not part of the secret.
func readSecret(path, env string) (string, error) {
	if path == "" {
		return os.Getenv(env), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", invalidArgf("reading the CHAP secret: %v", err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", invalidArgf("the CHAP secret file %s is empty", path)
	}
	return s, nil
}

// params returns the operational parameters to offer.
func (t *targetFlags) params() *session.Params {
	p := session.DefaultParams()
	p.HeaderDigest, p.DataDigest = t.headerDigest != digestNone, t.dataDigest != digestNone
	p.MaxConnections = max(p.MaxConnections, t.conns)
	p.ErrorRecoveryLevel, p.DefaultTime2Retain = t.erl, t.time2retain
	return &p
}

// connect is a connection to one target: the initiator and the CHAP
// configuration, with the target resolved.
type connect struct {
	a    *app
	tf   *targetFlags
	in   *initiator.Initiator
	chap *session.CHAP
	// allowed is the connections per session the target allows when
	// fewer than asked (its MaxConnections), else 0.
	allowed atomic.Int32
	// fewerOnce says so once.
	fewerOnce sync.Once
}

// dial checks the flags and returns an initiator for them. With targetAuto
// and no --target, the portal must offer exactly one target, which is then
// used.
func (a *app) dial(ctx context.Context, tf *targetFlags, want targetWant) (*connect, error) {
	if err := tf.check(want); err != nil {
		return nil, err
	}
	chap, err := tf.chap()
	if err != nil {
		return nil, err
	}
	cfg := a.initiatorConfig(tf.initiatorName)
	cfg.Params = tf.params()
	tf.applyRecovery(&cfg)
	in, err := a.newInitiator(cfg)
	if err != nil {
		return nil, err
	}
	c := &connect{a: a, tf: tf, in: in, chap: chap}
	if tf.target == "" && want == targetAuto {
		ts, err := c.discover(ctx)
		if err != nil {
			return nil, err
		}
		switch len(ts) {
		case 0:
			return nil, fmt.Errorf("portal %s offers no target", tf.portal)
		case 1:
			// The name is the target's, not the user's: a malformed one is
			// the target's fault (status 1), not an invalid argument.
			if _, err := initiator.NormalizeName(ts[0].Name); err != nil {
				why := strings.TrimPrefix(err.Error(), initiator.ErrInvalidArg.Error()+": iSCSI name "+strconv.Quote(ts[0].Name)+": ")
				return nil, &exitErr{code: exitError, msg: fmt.Sprintf("the target at portal %s offered an invalid name %q: %s",
					tf.portal, ts[0].Name, why)}
			}
			tf.target = ts[0].Name
			a.log.Info("using the portal's only target", zap.String("target", tf.target))
		default:
			names := make([]string, len(ts))
			for i, t := range ts {
				names[i] = t.Name
			}
			return nil, invalidArgf("portal %s offers %d targets; choose one with --target: %s", tf.portal, len(ts), strings.Join(names, ", "))
		}
	}
	return c, nil
}

// discover runs SendTargets on the portal.
func (c *connect) discover(ctx context.Context) ([]session.DiscoveredTarget, error) {
	lctx, cancel := context.WithTimeout(ctx, c.tf.loginTimeout)
	defer cancel()
	ts, err := c.in.Discover(lctx, c.tf.portal, c.chap)
	if err != nil {
		return nil, &stepError{step: "discovering targets", portal: c.tf.portal, timeout: c.tf.loginTimeout, chap: c.chap != nil, err: err}
	}
	return ts, nil
}

// login opens n sessions of m connections each, in parallel. On an error
// the sessions that did log in stay in the initiator's table, for the
// caller's logout.
func (c *connect) login(ctx context.Context, n, m int, isid func(i int) [6]byte) ([]*session.Session, error) {
	out := make([]*session.Session, n)
	errs := make([]error, n)
	// A bar for a login of many sessions, on a terminal.
	var bar *progress
	if n > 1 {
		bar = c.a.newProgress(int64(n), "logging in", false)
		defer bar.finish()
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lctx, cancel := context.WithTimeout(ctx, c.tf.loginTimeout*time.Duration(m))
			defer cancel()
			o := initiator.LoginOptions{Connections: m, CHAP: c.chap, LoginTimeout: c.tf.loginTimeout,
				OnFewerConnections: func(allowed, asked int) {
					c.allowed.Store(int32(allowed))
					c.fewerOnce.Do(func() {
						fmt.Fprintf(c.a.stderr, "iscsictl %s: the target allows %d connection(s) per session (MaxConnections=%d): each session has %d of the %d asked\n",
							c.a.name, allowed, allowed, allowed, asked)
					})
				}}
			if isid != nil {
				o.ISID = isid(i)
			}
			s, err := c.in.Login(lctx, c.tf.portal, c.tf.target, o)
			if err != nil {
				errs[i] = &stepError{step: "logging in", portal: c.tf.portal, target: c.tf.target, timeout: c.tf.loginTimeout,
					chap: c.chap != nil, initiatorName: c.tf.initiatorName, err: err}
				if c.chap != nil {
					errs[i].(*stepError).chapUser = c.chap.User
				}
				return
			}
			out[i] = s
			bar.add(1)
			if err := c.tf.requiredDigests(s.Params().HeaderDigest, s.Params().DataDigest); err != nil {
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			return out, e
		}
	}
	return out, nil
}

// requiredDigests checks what a session negotiated against
// --header-digest=required and --data-digest=required.
func (t *targetFlags) requiredDigests(header, data bool) error {
	switch {
	case t.headerDigest == digestRequired && !header:
		return &exitErr{code: exitError, msg: fmt.Sprintf("the target at %s would not use CRC32C header digests, which --header-digest=required asks for (HeaderDigest=None was negotiated)", t.portal)}
	case t.dataDigest == digestRequired && !data:
		return &exitErr{code: exitError, msg: fmt.Sprintf("the target at %s would not use CRC32C data digests, which --data-digest=required asks for (DataDigest=None was negotiated)", t.portal)}
	}
	return nil
}

// quietLogout logs out of the target at the end of a command that is not
// about logout: its result only goes to the log.
func (c *connect) quietLogout(ctx context.Context) {
	op, err := c.in.LogoutFromTargetWith(c.tf.target, logout.Options{Timeout: 5 * time.Second, Force: true})
	if err != nil {
		return
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	res, err := op.Wait(wctx)
	if err != nil {
		op.Cancel()
		op.Wait(context.Background())
		return
	}
	if res.Outcome != logout.Success && res.Outcome != logout.SessionNotFound {
		c.a.log.Warn("logout at the end of the command", zap.String("outcome", res.Outcome.String()))
	}
}

// withSession logs in one session of conns connections, runs f, and logs
// out.
func (a *app) withSession(ctx context.Context, tf *targetFlags, conns int, f func(s *session.Session) error) error {
	c, err := a.dial(ctx, tf, targetAuto)
	if err != nil {
		return err
	}
	ss, err := c.login(ctx, 1, conns, nil)
	if err != nil {
		c.quietLogout(ctx)
		return err
	}
	err = f(ss[0])
	c.quietLogout(ctx)
	return err
}

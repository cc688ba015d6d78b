package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/session"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// runLogout opens --sessions sessions of --conns connections to the target,
// optionally starts I/O on them, and logs out of the target with the chosen
// strategy. A process has no sessions of an earlier run, so --sessions 0
// logs out of nothing: the outcome is SessionNotFound (exit status 2), as
// for a second logout of the same target; --gone-ok makes that exit 0.
// With --session N (the N-th session opened) or --tsih TSIH only that
// session logs out, and with --cid only that connection of it; the sessions
// left are then logged out quietly, after the result is printed.
func defLogout(a *app, fs *pflag.FlagSet) runFunc {
	var tf targetFlags
	var lo logoutOptions
	var lf ioLoadFlags
	tf.register(fs, a)
	lo.register(fs, 15*time.Second)
	lf.register(fs)
	n := fs.IntP("sessions", "n", 1, "sessions to open before logging out; 0 opens none (the outcome is then \"session not found\")")
	m := fs.IntP("conns", "c", 1, "connections per session (MC/S)")
	af := a.agentFlags(fs)
	sessionFlag := fs.String("session", "", "log out of the session with this `TSIH` only (decimal, or hex with 0x): the agent's, or without one, of the sessions this command opens (with --target)")
	one := fs.Int("session-index", 0, "log out of the N-th session this command opens only (1 to --sessions; the table prints its TSIH)")
	cid := fs.Int("cid", -1, "with --session or --session-index: log out of this connection only (reason 1; reason 0 if it is the session's last)")
	goneOK := fs.Bool("gone-ok", false, "exit 0 when there is no session to log out of (the outcome printed stays \"session not found\")")
	return func(ctx context.Context, pos []string) error {
		if err := tf.fromURL(a, pos, targetRequired); err != nil {
			return err
		}
		return runLogout(ctx, a, fs, &tf, &lo, &lf, af, logoutArgs{n: *n, m: *m, session: *sessionFlag, index: *one, cid: *cid, goneOK: *goneOK})
	}
}

// logoutArgs are logout's flags that are not in a struct of their own.
type logoutArgs struct {
	n, m, index, cid int
	session          string
	goneOK           bool
}

func runLogout(ctx context.Context, a *app, fs *pflag.FlagSet, tf *targetFlags, lo *logoutOptions, lf *ioLoadFlags, af *agentFlags, la logoutArgs) error {
	n, m, sessionFlag, one, cid, goneOK := &la.n, &la.m, &la.session, &la.index, &la.cid, &la.goneOK
	// --session without --target names a session of the agent's.
	agentSession := *sessionFlag
	if fs.Changed("target") || tf.target != "" {
		agentSession = ""
	}
	if ac, err := af.clientFor(ctx, a, agentSession); ac != nil || err != nil {
		return agentOr(err, func() error { return a.agentLogout(ctx, ac, fs, tf, lo, *sessionFlag) })
	}
	tsihFlag := -1
	if *sessionFlag != "" {
		v, err := api.ParseTSIH(*sessionFlag)
		if err != nil {
			return invalidArgf("--session %s: want a TSIH from 1 to 65535 (decimal, or hex with 0x)", *sessionFlag)
		}
		tsihFlag = int(v)
	}
	if *n < 0 || *m < 1 {
		return invalidArgf("--sessions must be 0 or more and --conns at least 1")
	}
	switch {
	case *one != 0 && tsihFlag >= 0:
		return invalidArgf("--session and --session-index both choose a session: give one")
	case *one < 0 || *one > max(*n, 0) && *n > 0:
		return invalidArgf("--session-index %d: want 1 to --sessions (%d)", *one, *n)
	case *cid > 0xffff:
		return invalidArgf("--cid %d: a CID is 16 bits", *cid)
	case *cid >= 0 && *one == 0 && tsihFlag < 0:
		return invalidArgf("--cid needs --session or --session-index")
	}
	tf.conns = *m
	opts, err := lo.options()
	if err != nil {
		return err
	}
	if tf.target == "" {
		return invalidArgf("--target is required")
	}
	if _, err := initiator.NormalizeName(tf.target); err != nil {
		return err
	}
	var in *initiator.Initiator
	var c *connect
	var ss []*session.Session
	var load *ioLoad
	conns := 0
	if *n == 0 {
		// Nothing to open, so no portal is needed.
		if err := tf.resolveInitiatorName(); err != nil {
			return err
		}
		if in, err = a.newInitiator(a.initiatorConfig(tf.initiatorName)); err != nil {
			return err
		}
	} else {
		if c, err = a.dial(ctx, tf, targetRequired); err != nil {
			return err
		}
		in = c.in
		ss, err = c.login(ctx, *n, *m, nil)
		if err != nil {
			c.quietLogout(ctx)
			return err
		}
		conns = *n * *m
		a.printf("Logged in to %s at %s: %d session(s) x %d connection(s)\n", safe(tf.target), safe(tf.portal), *n, *m)
		if lf.enabled {
			if load, err = startIOLoad(ctx, a, ss, *lf); err != nil {
				c.quietLogout(ctx)
				return err
			}
			defer load.stop()
			load.waitStarted(ctx, time.Second)
			a.printf("I/O running: %s, %d commands in flight per session\n", lf.describe(), lf.depth)
		}
	}
	var op *logout.Operation
	tsih := tsihFlag
	if *one > 0 && *one <= len(ss) {
		tsih = int(ss[*one-1].TSIH())
	} else if *one > 0 {
		tsih = -2 // --session-index with no session opened: none to find
	}
	switch {
	case tsih == -1:
		op, err = in.LogoutFromTargetWith(tf.target, opts)
	case tsih < 0:
		op = logout.Start(tf.target, nil, opts)
	case *cid >= 0:
		op, err = in.LogoutConnection(tf.target, uint16(tsih), uint16(*cid), opts)
		conns = min(conns, 1)
	default:
		op, err = in.LogoutSession(tf.target, uint16(tsih), opts)
		conns = min(conns, *m)
	}
	if err != nil {
		return err
	}
	res := a.waitLogout(ctx, op, conns)
	if c != nil && tsih != -1 {
		// The sessions the command opened and did not log out of.
		defer c.quietLogout(ctx)
	}
	var extra map[string]any
	if load != nil {
		r := load.stop()
		if !a.json {
			r.print(a)
		}
		extra = map[string]any{"io": r}
	}
	err = a.reportLogout(&res, opts.Strategy, extra)
	if *goneOK {
		err = goneIsDone(err, &res)
	}
	return err
}

// ioLoadFlags configure I/O that runs while a logout happens.
type ioLoadFlags struct {
	enabled bool
	write   bool
	lun     int
	bs      int
	depth   int
}

func (f *ioLoadFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&f.enabled, "io", false, "run I/O on every session while logging out (reads unless --io-write)")
	fs.BoolVar(&f.write, "io-write", false, "with --io: write (random data) instead of reading")
	fs.IntVar(&f.lun, "io-lun", -1, "with --io: logical unit; -1 means the first disk the target reports")
	fs.IntVar(&f.bs, "io-size", 64<<10, "with --io: bytes per command (a multiple of the block size)")
	fs.IntVar(&f.depth, "io-depth", 4, "with --io: commands in flight per session")
}

func (f *ioLoadFlags) describe() string {
	rw := "reads"
	if f.write {
		rw = "writes"
	}
	return rw + " of " + humanBytes(uint64(f.bs))
}

// ioLoad is I/O running on sessions until stopped: it shows what a logout
// does to commands in flight (drained with --drain, else failed with an
// error saying their outcome is unknown).
type ioLoad struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started chan struct{}
	once    sync.Once
	done    atomic.Int64
	refused atomic.Int64

	mu      sync.Mutex
	errs    map[string]int // by message
	stopped *ioLoadResult
}

// ioLoadResult is what the I/O came to.
type ioLoadResult struct {
	Completed int64 `json:"completed"`
	// Refused counts commands not sent because the logout had begun.
	Refused int64 `json:"refused"`
	// Failed is the sum of Errors' counts.
	Failed int `json:"failed"`
	// Errors group the failed commands by message, most frequent first.
	Errors []errorCount `json:"errors"`
	// Total is Completed + Failed + Refused: every command the load
	// tried.
	Total int64 `json:"total"`
}

// errorCount is how many commands failed with one message: the message
// is a value, never a JSON key.
type errorCount struct {
	Message string `json:"message"`
	Count   int    `json:"count"`
}

func (r *ioLoadResult) print(a *app) {
	a.printf("I/O during the logout: %d commands completed, %d failed, %d not sent (logout begun)\n", r.Completed, r.Failed, r.Refused)
	for _, e := range r.Errors {
		a.printf("  %4d x %s\n", e.Count, safe(e.Message))
	}
}

// startIOLoad starts depth workers per session.
func startIOLoad(ctx context.Context, a *app, ss []*session.Session, f ioLoadFlags) (*ioLoad, error) {
	if f.depth < 1 || f.bs < 1 {
		return nil, invalidArgf("--io-depth and --io-size must be positive")
	}
	lun, err := diskLUN(ctx, ss[0], f.lun)
	if err != nil {
		return nil, err
	}
	c, err := ss[0].ReadCapacity(ctx, lun)
	if err != nil {
		return nil, &stepError{step: "READ CAPACITY", err: err}
	}
	bs := int(c.BlockSize)
	if f.bs%bs != 0 {
		return nil, invalidArgf("--io-size %d is not a multiple of the block size %d", f.bs, bs)
	}
	span := c.Blocks / uint64(f.bs/bs)
	if span == 0 {
		return nil, invalidArgf("--io-size %d is larger than LUN %d", f.bs, lun)
	}
	// A session's first command may meet a UNIT ATTENTION (power on, reset);
	// READ CAPACITY takes it (the helpers retry), so the load does not.
	for _, s := range ss[1:] {
		if _, err := s.ReadCapacity(ctx, lun); err != nil {
			return nil, &stepError{step: "READ CAPACITY", err: err}
		}
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &ioLoad{cancel: cancel, started: make(chan struct{}), errs: map[string]int{}}
	for _, s := range ss {
		for range f.depth {
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				buf := make([]byte, f.bs)
				if f.write {
					for i := range buf {
						buf[i] = byte(rand.Uint32())
					}
				}
				for lctx.Err() == nil {
					lba := rand.Uint64N(span) * uint64(f.bs/bs)
					var err error
					if f.write {
						err = s.Write(lctx, lun, lba, bs, buf)
					} else {
						err = s.Read(lctx, lun, lba, bs, buf)
					}
					if err != nil && session.IsUnitAttention(err) {
						continue
					}
					if errors.Is(err, session.ErrNotSent) || err == session.ErrClosed {
						// Not sent: the connections take no new command
						// once the logout has begun.
						l.refused.Add(1)
						return
					}
					if err != nil {
						if lctx.Err() == nil {
							l.fail(err)
						}
						if errors.Is(err, session.ErrLoggedOut) || errors.Is(err, session.ErrClosed) || errors.Is(err, session.ErrConnReset) {
							return
						}
						// Another error: do not spin on it.
						select {
						case <-lctx.Done():
						case <-time.After(10 * time.Millisecond):
						}
						continue
					}
					l.done.Add(1)
					l.once.Do(func() { close(l.started) })
				}
			}()
		}
	}
	a.log.Debug("I/O started", zap.Int("workers", len(ss)*f.depth))
	return l, nil
}

func (l *ioLoad) fail(err error) {
	msg := trimPrefixes(err.Error())
	// Group by the message, without the parts that vary per connection.
	if i := strings.Index(msg, " (read tcp"); i >= 0 {
		msg = msg[:i]
	}
	l.mu.Lock()
	l.errs[msg]++
	l.mu.Unlock()
}

// waitStarted waits until a command completed, at most d.
func (l *ioLoad) waitStarted(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-l.started:
	case <-t.C:
	case <-ctx.Done():
	}
}

// stop stops the workers and returns what they did.
func (l *ioLoad) stop() *ioLoadResult {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped == nil {
		r := &ioLoadResult{Completed: l.done.Load(), Refused: l.refused.Load(), Errors: []errorCount{}}
		for m, n := range l.errs {
			r.Errors = append(r.Errors, errorCount{Message: m, Count: n})
			r.Failed += n
		}
		r.Total = r.Completed + int64(r.Failed) + r.Refused
		sort.Slice(r.Errors, func(i, j int) bool {
			if r.Errors[i].Count != r.Errors[j].Count {
				return r.Errors[i].Count > r.Errors[j].Count
			}
			return r.Errors[i].Message < r.Errors[j].Message
		})
		l.stopped = r
	}
	return l.stopped
}

package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
	"github.com/spf13/pflag"
)

// printLogout writes the logout result as a table: one line per connection,
// grouped by session, then the outcome with its HRESULT.
func printLogout(w io.Writer, r *logout.Result, strategy logout.Strategy) {
	fmt.Fprintf(w, "\nLogout from %s (strategy %s)\n", safe(r.Target), strategy)
	if len(r.Sessions) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SESSION\tTSIH\tISID\tCID\tREASON\tRESULT\tTIME\tDETAIL")
		for i, s := range r.Sessions {
			state := "logged out"
			switch {
			case s.Forced:
				state = "NOT logged out (closed locally: --force)"
			case !s.LoggedOut && s.InUse != nil:
				state = "NOT logged out (in use)"
			case !s.LoggedOut:
				state = "NOT logged out"
			}
			detail := ""
			if s.InUse != nil {
				detail = "in use: " + trimPrefixes(s.InUse.Error())
			}
			if n := s.Commands; n.Total() > 0 {
				detail = strings.TrimPrefix(detail+"; "+commandsDetail(n), "; ")
			}
			fmt.Fprintf(tw, "%d\t0x%04x\t%012x\t\t\t%s\t\t%s\n", i+1, s.TSIH, s.ISID[:], state, safe(detail))
			for _, c := range s.Conns {
				// The detail may quote the target's text in an error.
				fmt.Fprintf(tw, "\t\t\t%d\t%s\t%s\t%s\t%s\n", c.CID, reasonName(c.Reason), c.State,
					roundDuration(c.Duration), safe(connDetail(&c)))
				if len(c.Steps) > 1 || (len(c.Steps) == 1 && c.Steps[0].Waited > 0) {
					// The ladder: one line per step, under its connection.
					for k, st := range c.Steps {
						fmt.Fprintf(tw, "\t\t\t\t  %d. %s\t%s\t%s\t%s\n", k+1, stepName(&st), st.State,
							roundDuration(st.Duration), safe(stepDetail(&st)))
					}
				}
			}
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\nOutcome: %s (HRESULT 0x%08X): %d of %d sessions logged out in %s (deadline %s)\n",
		r.Outcome, r.HRESULT(), r.LoggedOut(), len(r.Sessions), roundDuration(r.Duration), r.Deadline)
	if n := r.Commands; n.Total() > 0 {
		fmt.Fprintf(w, "Commands in flight: %s\n", commandsDetail(n))
	}
}

// commandsDetail says how the commands in flight ended.
func commandsDetail(n logout.Commands) string {
	return fmt.Sprintf("%d completed, %d aborted, %d outcome unknown", n.Completed, n.Aborted, n.Unknown)
}

// stepName names a step of the ladder: its reason, or the close.
func stepName(st *logout.Step) string {
	if st.Kind == logout.StepClose {
		return "TCP close"
	}
	return reasonName(st.Reason)
}

// stepDetail says what a step's state does not, briefly: the connection's
// line has the details of its Logout Request.
func stepDetail(st *logout.Step) string {
	var parts []string
	if st.Waited > 0 {
		parts = append(parts, fmt.Sprintf("after waiting Time2Wait %s", st.Waited))
	}
	switch {
	case st.Kind == logout.StepClose && st.Err != nil:
		parts = append(parts, trimPrefixes(st.Err.Error()))
	case st.Responded:
		parts = append(parts, fmt.Sprintf("response %d, Time2Wait %d s, Time2Retain %d s", st.Response, st.Time2Wait, st.Time2Retain))
	}
	parts = append(parts, fmt.Sprintf("at %s", roundDuration(st.At)))
	return strings.Join(parts, "; ")
}

// connDetail says what the table's RESULT column does not.
func connDetail(c *logout.ConnResult) string {
	var parts []string
	switch c.State {
	case logout.ConnLoggedOut, logout.ConnClosedWithSession:
		if c.Responded && (c.Time2Wait != 0 || c.Time2Retain != 0) {
			parts = append(parts, fmt.Sprintf("Time2Wait %d s, Time2Retain %d s", c.Time2Wait, c.Time2Retain))
		}
	case logout.ConnRefused:
		parts = append(parts, fmt.Sprintf("%s (response %d, Time2Wait %d s, Time2Retain %d s)",
			c.Response.String(), c.Response, c.Time2Wait, c.Time2Retain))
	case logout.ConnReset:
		// The cause is in the message only: ErrConnReset wraps it with %v.
		if c.Err != nil && strings.Contains(c.Err.Error(), "reset by peer") {
			parts = append(parts, "reset by the target (RST), no Logout Response")
		} else {
			parts = append(parts, "closed by the target (FIN), no Logout Response")
		}
	case logout.ConnCanceled:
		parts = append(parts, "canceled before a Logout Response came")
	case logout.ConnClosed:
		parts = append(parts, "no Logout Request: closed (TCP)")
		if c.Err != nil {
			parts = append(parts, trimPrefixes(c.Err.Error()))
		}
	default:
		if c.Err != nil {
			parts = append(parts, trimPrefixes(c.Err.Error()))
		}
	}
	if c.Commands.Total() > 0 {
		parts = append(parts, "commands in flight: "+commandsDetail(c.Commands))
	} else if c.FailedCommands > 0 {
		parts = append(parts, fmt.Sprintf("%d commands failed", c.FailedCommands))
	}
	return strings.Join(parts, "; ")
}

func reasonName(r pdu.LogoutReason) string {
	switch r {
	case pdu.LogoutCloseSession:
		return "close session"
	case pdu.LogoutCloseConnection:
		return "close connection"
	case pdu.LogoutRemoveForRecovery:
		return "remove for recovery"
	}
	return fmt.Sprintf("reason %d", uint8(r))
}

func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// waitLogout waits for op, with a progress line on a terminal. An interrupt
// (ctx done) cancels the operation, which then completes with the
// connections still waiting reported canceled.
func (a *app) waitLogout(ctx context.Context, op *logout.Operation, conns int) logout.Result {
	progress := a.terminal && !a.json
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	shown, last := false, 0
	done := ctx.Done()
	for {
		select {
		case <-op.Done():
			if shown {
				fmt.Fprint(a.stdout, "\r\033[K")
			}
			res, _ := op.Wait(context.Background())
			return res
		case <-done:
			a.log.Warn("interrupted: canceling the logout")
			op.Cancel()
			done = nil
		case <-tick.C:
			if _, pct := op.Status(); progress && (pct != last || !shown) {
				fmt.Fprintf(a.stdout, "\rlogging out of %s: %3d%% of %d connections", op.Target(), pct, conns)
				shown, last = true, pct
			}
		}
	}
}

// logoutOptions are the flags of a target-wide logout.
type logoutOptions struct {
	strategy     string
	drain        time.Duration
	timeout      time.Duration
	deadline     time.Duration
	inFlight     string
	abortTimeout time.Duration
	force        bool
	// timeoutName is the name of the timeout flag.
	timeoutName string
}

func (o *logoutOptions) register(fs *pflag.FlagSet, defaultTimeout time.Duration) {
	o.registerNamed(fs, "timeout", defaultTimeout)
}

// registerNamed registers the flags with the timeout flag called name.
func (o *logoutOptions) registerNamed(fs *pflag.FlagSet, name string, defaultTimeout time.Duration) {
	o.timeoutName = name
	fs.StringVar(&o.strategy, "strategy", "per-connection", "logout strategy: per-connection (a Logout Request on every connection at once) or per-session (reason 0 on one connection per session)")
	fs.DurationVar(&o.drain, "drain", 0, "let running commands finish for this long before the Logout Requests go out")
	fs.DurationVar(&o.timeout, name, defaultTimeout, "wait this long for each Logout Response")
	fs.DurationVar(&o.deadline, "deadline", 0, "bound the whole logout (every drain, request, Time2Wait and retry); 0: 15 s, or less when the timeout bounds every step more tightly")
	fs.StringVar(&o.inFlight, "in-flight", "drain", "commands still running when the logout begins: drain (let them finish within --drain), abort (ABORT TASK SET, then log out) or fail (at once, outcome unknown)")
	fs.DurationVar(&o.abortTimeout, "abort-timeout", 0, "with --in-flight abort: bound of the ABORT TASK SET exchanges; 0: the response timeout")
	fs.BoolVar(&o.force, "force", false, "close sessions that did not log out locally anyway")
}

func (o *logoutOptions) options() (logout.Options, error) {
	var s logout.Strategy
	switch o.strategy {
	case "per-connection", "connection":
		s = logout.PerConnection
	case "per-session", "session":
		s = logout.PerSession
	default:
		return logout.Options{}, invalidArgf("--strategy %q: want per-connection or per-session", o.strategy)
	}
	if o.timeout <= 0 || o.drain < 0 || o.deadline < 0 || o.abortTimeout < 0 {
		return logout.Options{}, invalidArgf("--%s must be positive and --drain, --deadline, --abort-timeout not negative", o.timeoutName)
	}
	var p session.InFlightPolicy
	switch o.inFlight {
	case "drain", "":
		p = session.InFlightDrain
	case "abort":
		p = session.InFlightAbort
	case "fail":
		p = session.InFlightFail
	default:
		return logout.Options{}, invalidArgf("--in-flight %q: want drain, abort or fail", o.inFlight)
	}
	return logout.Options{Strategy: s, DrainTimeout: o.drain, Timeout: o.timeout, Deadline: o.deadline, InFlight: p,
		AbortTimeout: o.abortTimeout, Force: o.force}, nil
}

// reportLogout prints a logout result (JSON or table) and returns the
// error for its outcome. The JSON is the agent API's encoding (api.Logout):
// one schema whether the logout ran here or in the agent.
func (a *app) reportLogout(res *logout.Result, strategy logout.Strategy, extra map[string]any) error {
	if a.json {
		v := map[string]any{"command": a.name, "logout": api.NewLogout(res, strategy)}
		for k, x := range extra {
			v[k] = x
		}
		a.printJSON(v)
	} else {
		printLogout(a.stdout, res, strategy)
	}
	if res.Outcome != logout.Success {
		return &outcomeError{outcome: res.Outcome}
	}
	return nil
}

// goneIsDone makes "session not found" a success for --gone-ok: the
// outcome printed stays SessionNotFound.
func goneIsDone(err error, res *logout.Result) error {
	if res.LoggedOutOrGone() {
		return nil
	}
	return err
}

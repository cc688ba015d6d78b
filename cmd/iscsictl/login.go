package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/session"
	"github.com/spf13/pflag"
)

func defDiscover(a *app, fs *pflag.FlagSet) runFunc {
	var tf targetFlags
	tf.register(fs, a)
	return func(ctx context.Context, pos []string) error { return runDiscover(ctx, a, &tf, pos) }
}

func runDiscover(ctx context.Context, a *app, tf *targetFlags, pos []string) error {
	if err := tf.fromURL(a, pos, targetNone); err != nil {
		return err
	}
	c, err := a.dial(ctx, tf, targetNone)
	if err != nil {
		return err
	}
	ts, err := c.discover(ctx)
	if err != nil {
		return err
	}
	if a.json {
		type targetJSON struct {
			Name    string   `json:"name"`
			Portals []string `json:"portals"`
		}
		out := []targetJSON{}
		for _, t := range ts {
			out = append(out, targetJSON{Name: t.Name, Portals: append([]string{}, t.Portals...)})
		}
		a.printJSON(map[string]any{"command": "discover", "portal": tf.portal, "targets": out})
		return nil
	}
	if len(ts) == 0 {
		a.printf("portal %s offers no target\n", tf.portal)
	}
	// Names and addresses are the target's text, printed escaped.
	for _, t := range ts {
		a.printf("%s\n", safe(t.Name))
		for _, p := range t.Portals {
			a.printf("    %s\n", safe(p))
		}
	}
	return nil
}

// sessionInfo is a logged-in session as login prints it.
type sessionInfo struct {
	TSIH        hexTSIH        `json:"tsih"`
	ISID        string         `json:"isid"`
	Portal      string         `json:"portal"`
	Connections []hexCID       `json:"connections"`
	Params      map[string]any `json:"params"`
}

func describeSession(s *session.Session) sessionInfo {
	isid := s.ISID()
	info := sessionInfo{TSIH: hexTSIH(s.TSIH()), ISID: isidHex(isid), Portal: s.Portal(), Connections: []hexCID{},
		Params: api.Params(s.Params())}
	for _, c := range s.Conns() {
		info.Connections = append(info.Connections, hexCID(c.CID()))
	}
	return info
}

// paramOrder is the order login prints parameters in.
var paramOrder = []string{"HeaderDigest", "DataDigest", "MaxConnections", "InitialR2T", "ImmediateData",
	"MaxRecvDataSegmentLength", "TargetMaxRecvDataSegmentLength", "MaxBurstLength", "FirstBurstLength",
	"DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder",
	"ErrorRecoveryLevel", "TargetPortalGroupTag", "TargetAlias"}

// runLogin logs in, prints the sessions (from the initiator's table) and
// what was negotiated, and logs out: a process keeps no session once it
// exits, so login is a check that a login works and what it negotiates.
func defLogin(a *app, fs *pflag.FlagSet) runFunc {
	var tf targetFlags
	var lo logoutOptions
	tf.register(fs, a)
	lo.register(fs, 15*time.Second)
	n := fs.IntP("sessions", "n", 1, "how many sessions to open")
	m := fs.IntP("conns", "c", 1, "connections per session (MC/S)")
	hold := fs.Duration("hold", 0, "keep the sessions open this long before logging out (Ctrl-C logs out at once; a second Ctrl-C cuts the logout short)")
	af := a.agentFlags(fs)
	return func(ctx context.Context, pos []string) error {
		if err := tf.fromURL(a, pos, targetAuto); err != nil {
			return err
		}
		return runLogin(ctx, a, fs, &tf, &lo, af, *n, *m, *hold)
	}
}

func runLogin(ctx context.Context, a *app, fs *pflag.FlagSet, tf *targetFlags, lo *logoutOptions, af *agentFlags, nv, mv int, holdv time.Duration) error {
	n, m, hold := &nv, &mv, &holdv
	if ac, err := af.client(ctx, a); ac != nil || err != nil {
		return agentOr(err, func() error { return a.agentLogin(ctx, ac, fs, tf, *n, *m, *hold) })
	}
	if *n < 1 || *m < 1 {
		return invalidArgf("--sessions and --conns must be at least 1")
	}
	tf.conns = *m
	opts, err := lo.options()
	if err != nil {
		return err
	}
	c, err := a.dial(ctx, tf, targetAuto)
	if err != nil {
		return err
	}
	if _, err := c.login(ctx, *n, *m, nil); err != nil {
		c.quietLogout(ctx)
		return err
	}
	// The table, as the initiator keeps it.
	live := c.in.Sessions(tf.target)
	infos := make([]sessionInfo, len(live))
	conns := 0
	for i, s := range live {
		infos[i] = describeSession(s)
		conns += len(infos[i].Connections)
	}
	if !a.json {
		a.printf("Logged in to %s at %s: %d session(s), %d connection(s)\n\n", safe(tf.target), safe(tf.portal), len(live), conns)
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SESSION\tTSIH\tISID\tPORTAL\tCIDS")
		for i, s := range infos {
			// A redirected session's portal is the target's text.
			fmt.Fprintf(tw, "%d\t0x%04x\t%s\t%s\t%v\n", i+1, s.TSIH, s.ISID, safe(s.Portal), s.Connections)
		}
		tw.Flush()
		if len(infos) > 0 {
			a.printf("\nNegotiated parameters:\n")
			tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			for _, k := range paramOrder {
				if v, ok := infos[0].Params[k]; ok {
					// TargetAlias is the target's text.
					fmt.Fprintf(tw, "  %s\t%s\n", k, safe(fmt.Sprint(v)))
				}
			}
			tw.Flush()
		}
	}
	if *hold > 0 {
		a.printf("\nHolding the sessions for %s (Ctrl-C logs out now)\n", *hold)
		t := time.NewTimer(*hold)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			a.printf("\nInterrupted: logging out (interrupt again to cut the logout short)\n")
		}
	}
	op, err := c.in.LogoutFromTargetWith(tf.target, opts)
	if err != nil {
		return err
	}
	// The interrupt that ended the hold asked for this logout: only a
	// second one cancels it.
	lctx, stop := nextInterrupt(ctx)
	defer stop()
	res := a.waitLogout(lctx, op, conns)
	extra := map[string]any{"target": tf.target, "portal": tf.portal, "sessions": infos}
	if n := c.allowed.Load(); n > 0 {
		extra["connectionsAllowed"] = n
	}
	return a.reportLogout(&res, opts.Strategy, extra)
}

// nextInterrupt returns ctx while it is not done; once it is (the first
// SIGINT or SIGTERM came), a context that the next one ends. main's
// signal.NotifyContext keeps catching the signals after the first, so a
// second one does not kill the process: it is seen here.
func nextInterrupt(ctx context.Context) (context.Context, func()) {
	if ctx.Err() == nil {
		return ctx, func() {}
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	nctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-sigc:
			cancel()
		case <-nctx.Done():
		}
	}()
	return nctx, func() {
		signal.Stop(sigc)
		cancel()
		<-done
	}
}
